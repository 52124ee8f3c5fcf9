"""Gene panels a user's file may hold: its most variable genes, as a scanpy workflow cuts it.

Shared by training (`train --hvg-panel`) and the read-out fit (`train-readout --hvg-copies`), so
both show the model the same kind of cut. Files cut to their 2,000 most variable genes were
answered worse than whole files on the valid splits (benchmarks/EXPERIMENTS.md, "files cut to
their most variable genes").
"""

from __future__ import annotations

import anndata
import numpy as np
import scipy.sparse as sp

from .cell_encoder import log_normalize_csr

N_TOP_RANGE = (500, 3000)  # how many variable genes a cut keeps, drawn uniformly (inclusive)


def variable_gene_order(counts: sp.csr_matrix, target_sum: float) -> np.ndarray:
    """Column positions of the genes a cell holds in any cell, most variable first, ranked as
    scanpy's `highly_variable_genes(flavor="seurat")` ranks them (normalized dispersion of
    log1p(CP10k)), the usual way a user's file is cut to HVGs."""
    import scanpy as sc

    present = np.flatnonzero(np.asarray(counts.sum(0)).ravel() > 0)
    logged = anndata.AnnData(log_normalize_csr(counts, target_sum)[:, present])
    sc.pp.highly_variable_genes(logged, flavor="seurat", n_top_genes=min(3000, present.size))
    score = np.nan_to_num(logged.var["dispersions_norm"].to_numpy(dtype=float), nan=-np.inf)
    return present[np.argsort(-score, kind="stable")]


def hvg_cut(counts: sp.spmatrix, order: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
    """Each cell keeping only the first N genes of `order` (its set's most variable), N drawn per
    cell from N_TOP_RANGE: cells as files cut to that many HVGs hold them (normalize afterwards)."""
    rank = np.full(counts.shape[1], np.iinfo(np.int64).max)
    rank[order] = np.arange(order.size)
    cut = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    n_top = rng.integers(N_TOP_RANGE[0], N_TOP_RANGE[1] + 1, cut.shape[0])
    cut.data = cut.data * (rank[cut.indices] < np.repeat(n_top, np.diff(cut.indptr)))
    cut.eliminate_zeros()
    return cut
