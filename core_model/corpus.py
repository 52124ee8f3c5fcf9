"""Labelled cells aligned to the model's vocabulary, ready for training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .alignment import AlignmentReport, align_to_vocab
from .datasets import DatasetSpec, prompt_fields, split_names, subset_by_names
from .io import get_labels, read_h5ad


@dataclass
class SplitData:
    """One split of one dataset on the vocabulary: count-scale matrix, labels, prompt fields."""

    spec: DatasetSpec
    X: sp.csr_matrix
    labels: np.ndarray
    fields: list[dict[str, str]]
    obs_names: list[str]
    report: AlignmentReport

    @property
    def n_cells(self) -> int:
        return int(self.X.shape[0])


def load_split(spec: DatasetSpec, vocab: list[str], split: str, split_path: Path | None = None) -> SplitData:
    """Read `spec`'s file, keep the cells of `split`, align them to `vocab`.

    `split` is one split name, several joined by '+' ("train+valid": their cells in that order),
    or "all" (every cell in the file).
    """
    adata = read_h5ad(spec.path)
    path = split_path or spec.split_path
    if path is not None and split != "all":
        adata = subset_by_names(adata, split_names(path, split), split)
    aligned = align_to_vocab(adata, vocab)
    labels = get_labels(adata, spec.label_key)
    return SplitData(spec, aligned.X, labels, prompt_fields(adata, spec), list(adata.obs_names), aligned.report)


def dense_rows(X: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    return np.asarray(X[rows].toarray(), dtype=np.float32)
