"""Cells as a shallower run of the same library would give them: counts recovered and thinned.

`instructcell calibrate --depths` fits the confidence temperature's depth term on held-out cells
thinned this way (core_model/temperature_depth.py); the depth benchmarks thin test cells alike.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import scipy.sparse as sp

from .datasets import DatasetSpec, read_split, subset_by_names
from .io import read_h5ad, write_h5ad_atomic
from .reference import pseudo_counts, thin
from .values import detect_value_type, to_count_scale


def umi_counts(X: Any) -> sp.csr_matrix:
    """Integer counts of a matrix holding UMI counts, or UMI counts normalised (and logged) per cell.

    A normalised cell's non-zero values are integer multiples of the value one count became (its
    smallest, as `detect_value_type` checks), so dividing by that value gives its counts back
    (`pseudo_counts`). Raises ValueError where that does not hold (reads of full-length
    protocols, TPM): such a matrix has no counts to thin.
    """
    report = detect_value_type(X)
    linear = to_count_scale(X, report)
    if report.kind != "raw_counts" and "integer multiples" not in report.note:
        raise ValueError(f"values are {report.kind} ({report.note}): no counts to recover")
    return sp.csr_matrix(linear if report.kind == "raw_counts" else pseudo_counts(linear), dtype=np.int64)


def thinned_split(spec: DatasetSpec, split: str, fraction: float, seed: int, out_dir: Path) -> DatasetSpec:
    """`spec` with its `split` cells thinned to `fraction` of their counts (seeded), written to
    `out_dir` under the file's own name (a checkpoint knows a label set by it) and read with the
    same split file. ValueError where the values hold no counts (`umi_counts`)."""
    adata = read_h5ad(spec.path)
    cells = subset_by_names(adata, read_split(spec.split_path)[split], split)
    counts = thin(umi_counts(cells.X), fraction, np.random.default_rng(seed))
    out = anndata.AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=cells.obs.copy(), var=cells.var.copy())
    path = Path(out_dir) / Path(spec.path).name
    write_h5ad_atomic(out, path)
    return dataclasses.replace(spec, path=path)
