"""Reference generators for the benchmark: a per-label Gaussian in PCA space, and real cells.

Both return integer counts over the same genes as their training cells, so every method goes
through the same metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA

from .metrics import log_normalize


def gaussian_pca_cells(train_counts: sp.csr_matrix, train_labels: Sequence[str], want_labels: Sequence[str],
                       seed: int = 0, n_pcs: int = 50) -> np.ndarray:
    """Per-label multivariate Gaussian in the PCA space of log1p(CP10k) training cells.

    A sample is mapped back with the PCA's inverse, clipped at 0, turned into expected counts at
    a library size drawn from that label's training cells, and Poisson-sampled.

    Parameters
    ----------
    train_counts
        Training counts (cells x genes).
    train_labels
        Label of each training cell.
    want_labels
        The label of each cell to generate.
    seed
        Sampling seed.
    n_pcs
        PCA components.

    Returns
    -------
    np.ndarray
        Integer counts (len(want_labels), n_genes).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(train_labels)
    X = log_normalize(train_counts).toarray()
    pca = PCA(n_components=min(n_pcs, X.shape[0] - 1, X.shape[1]), random_state=seed).fit(X)
    Z = pca.transform(X)
    libs = np.asarray(train_counts.sum(1)).ravel()
    want = np.asarray(want_labels)
    out = np.zeros((len(want), X.shape[1]), dtype=np.int64)
    for label in np.unique(want):
        rows, inside = np.flatnonzero(want == label), labels == label
        if not inside.any():
            raise ValueError(f"no training cells of label {label!r}")
        zs = Z[inside]
        cov = np.cov(zs, rowvar=False) if inside.sum() > 1 else np.zeros((Z.shape[1], Z.shape[1]))
        draw = rng.multivariate_normal(zs.mean(0), np.atleast_2d(cov), size=len(rows), method="eigh")
        expr = np.clip(np.expm1(pca.inverse_transform(draw)), 0.0, None)
        expr /= np.maximum(expr.sum(1, keepdims=True), 1e-12)
        lib = rng.choice(libs[inside], size=len(rows))
        out[rows] = rng.poisson(expr * lib[:, None])
    return out


def real_cells_like(train_counts: sp.csr_matrix, train_labels: Sequence[str], want_labels: Sequence[str],
                    seed: int = 0) -> sp.csr_matrix:
    """Training cells drawn (without replacement where possible) to match each wanted label: the
    real-vs-real ceiling, with the same label mix as the generated sets."""
    rng = np.random.default_rng(seed)
    labels, want = np.asarray(train_labels), np.asarray(want_labels)
    rows = np.zeros(len(want), dtype=np.int64)
    for label in np.unique(want):
        slots, pool = np.flatnonzero(want == label), np.flatnonzero(labels == label)
        if pool.size == 0:
            raise ValueError(f"no training cells of label {label!r}")
        rows[slots] = rng.choice(pool, size=len(slots), replace=len(slots) > pool.size)
    return sp.csr_matrix(train_counts[rows])

