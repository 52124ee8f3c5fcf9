"""Copies of a catalog set's file holding fewer genes, to see how answers hold up on such files.

A user's file often holds fewer genes than the training files: cut to its most variable genes in
a scanpy workflow (the full matrix left in adata.raw, or dropped), or measured with a targeted
panel. Each copy keeps the original's file name, so `evaluate` still finds the set's prompt fields
(tissue, species) by it; put the copies in a directory of their own.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import scipy.sparse as sp

from instructcell_agent.core_model.cell_encoder import log_normalize_csr
from instructcell_agent.core_model.io import read_h5ad, write_h5ad_atomic
from instructcell_agent.core_model.reference import thin
from instructcell_agent.core_model.values import detect_value_type, to_count_scale

logger = logging.getLogger("file_copies")


def with_panel(spec: Any, share: float, seed: int, out_dir: Path) -> Any:
    """`spec` pointing at a copy of its file that keeps a random `share` of its genes."""
    adata = read_h5ad(spec.path)
    keep = np.random.default_rng([seed, len(spec.name)]).random(adata.n_vars) < share
    logger.info("%s: evaluated on %d of its %d genes", spec.name, int(keep.sum()), adata.n_vars)
    return _copy(spec, adata, keep, out_dir)


def with_hvg(spec: Any, n_top: int, out_dir: Path) -> Any:
    """`spec` pointing at a copy of its file holding only its `n_top` most variable genes, chosen
    on the whole file as a user subsetting their file to HVGs would (log1p(CP10k), seurat flavor)."""
    import scanpy as sc

    adata = read_h5ad(spec.path)
    counts = to_count_scale(adata.X, detect_value_type(adata.X))
    logged = anndata.AnnData(log_normalize_csr(counts, 1e4), var=adata.var[[]].copy())
    sc.pp.highly_variable_genes(logged, n_top_genes=n_top, flavor="seurat")
    keep = logged.var["highly_variable"].to_numpy()
    logger.info("%s: evaluated on its %d most variable of %d genes", spec.name, int(keep.sum()), adata.n_vars)
    return _copy(spec, adata, keep, out_dir)


def _copy(spec: Any, adata: anndata.AnnData, keep: np.ndarray, out_dir: Path) -> Any:
    path = out_dir / Path(spec.path).name
    write_h5ad_atomic(adata[:, keep].copy(), path)
    return dataclasses.replace(spec, path=path)


def thinned(counts: sp.csr_matrix, fraction: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Each count kept with probability `fraction` (`reference.thin`): the same cells sequenced
    `fraction` as deeply, as far as sampling goes."""
    return thin(counts, fraction, rng) if fraction < 1.0 else counts.copy()
