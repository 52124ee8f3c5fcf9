"""Generation metrics: InstructCell's reference metrics and gene-space checks (RESEARCH.md section 1).

Reference metrics, in a 2-D UMAP fit on the real cells: normalize each cell to 1e4, log1p,
TruncatedSVD to 50 components (fit on real cells), UMAP with 40 neighbours fit on the real cells;
generated cells are placed with the fitted SVD and UMAP's ``transform``.

- MMD: biased estimate, sum of RBF kernels at gamma0/2, gamma0, 2*gamma0, where
  gamma0 = 1 / median(distances of each real cell to its 25 nearest real neighbours)^2.
- sKNN(K): mean fraction of a cell's K nearest neighbours (within its own set) sharing its label;
  deltaSKNN = |sKNN(generated) - sKNN(real)|.
- pKNN(K): accuracy of a K-NN classifier fit on the real cells, applied to the generated cells,
  scored against the labels they were generated for.

Gene-space checks (on log1p(CP10k)): correlation of per-label mean expression, the top-3 marker
genes of each label (Welch t-test, label vs rest, on real cells) compared by fraction expressing
and mean, a classifier two-sample test (logistic regression on 30 PCs of the real cells, 5-fold
AUC of real vs generated, PCA refit inside each fold) and the correlation of each gene's fraction
of non-zero cells. Pure numpy/scikit-learn/umap-learn; every random step is seeded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy import stats
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

KS: tuple[int, ...] = (5, 10, 25, 50)
TARGET_SUM = 1e4


def log_normalize(counts: Any, target_sum: float = TARGET_SUM) -> sp.csr_matrix:
    """Counts (cells x genes) -> log1p of counts scaled to `target_sum` per cell (CSR float64)."""
    X = sp.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(X.sum(1)).ravel()
    X = sp.csr_matrix(sp.diags(target_sum / np.maximum(totals, 1e-12)) @ X)
    X.data = np.log1p(X.data)
    return X


def umap_embedding(real_log: sp.csr_matrix, gen_log: sp.csr_matrix, seed: int = 0, n_svd: int = 50,
                   n_neighbors: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """2-D UMAP coordinates of real cells (fit) and generated cells (transform).

    Parameters
    ----------
    real_log, gen_log
        log1p(CP10k) matrices over the same genes.
    seed
        Seed of the SVD and UMAP.
    n_svd, n_neighbors
        50 and 40 in the reference protocol (lowered automatically for tiny inputs).

    Returns
    -------
    (np.ndarray, np.ndarray)
        (n_real, 2) and (n_gen, 2).
    """
    import umap  # slow import (numba); only needed here

    n_comp = max(1, min(n_svd, real_log.shape[1] - 1, real_log.shape[0] - 1))
    svd = TruncatedSVD(n_components=n_comp, random_state=seed).fit(real_log)
    reducer = umap.UMAP(n_neighbors=min(n_neighbors, real_log.shape[0] - 1), n_components=2, random_state=seed)
    with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": intended, we want seeds
        warnings.filterwarnings("ignore", message=".*overridden to 1 by setting random_state.*")
        real_2d = reducer.fit_transform(svd.transform(real_log))
        gen_2d = reducer.transform(svd.transform(gen_log))
    return np.asarray(real_2d), np.asarray(gen_2d)


def rbf_gamma(real: np.ndarray, n_neighbors: int = 25) -> float:
    """gamma0 = 1 / median(distance of each real cell to its `n_neighbors` nearest others)^2."""
    k = min(n_neighbors, len(real) - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(real).kneighbors(real)
    median = float(np.median(dist[:, 1:]))
    return 1.0 / max(median, 1e-12) ** 2


def mmd(real: np.ndarray, gen: np.ndarray, gamma0: float | None = None) -> float:
    """Biased MMD^2 with the sum of RBF kernels at gamma0/2, gamma0 and 2*gamma0.

    Parameters
    ----------
    real, gen
        Points (n, d); gamma0 is estimated on `real` when None.
    gamma0
        Base bandwidth.

    Returns
    -------
    float
        0 for identical sets, larger for more different ones (clipped at 0 against round-off).
    """
    gamma0 = rbf_gamma(real) if gamma0 is None else gamma0

    def mean_kernel(a: np.ndarray, b: np.ndarray) -> float:
        sq = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)
        return float(sum(np.exp(-g * sq).mean() for g in (gamma0 / 2, gamma0, 2 * gamma0)))

    real, gen = np.asarray(real, dtype=np.float64), np.asarray(gen, dtype=np.float64)
    return max(mean_kernel(real, real) + mean_kernel(gen, gen) - 2.0 * mean_kernel(real, gen), 0.0)


def sknn(points: np.ndarray, labels: Sequence[str], k: int) -> float:
    """Mean fraction of each point's `k` nearest neighbours (itself excluded) sharing its label."""
    labels = np.asarray(labels)
    k = min(k, len(points) - 1)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points, return_distance=False)[:, 1:]
    return float((labels[idx] == labels[:, None]).mean())


def pknn(real: np.ndarray, real_labels: Sequence[str], gen: np.ndarray, gen_labels: Sequence[str], k: int) -> float:
    """Accuracy of a `k`-NN classifier fit on real points, applied to generated points."""
    clf = KNeighborsClassifier(n_neighbors=min(k, len(real))).fit(real, np.asarray(real_labels))
    return float((clf.predict(gen) == np.asarray(gen_labels)).mean())


def reference_metrics(real_2d: np.ndarray, gen_2d: np.ndarray, real_labels: Sequence[str],
                      gen_labels: Sequence[str], ks: Sequence[int] = KS) -> dict[str, Any]:
    """MMD, sKNN of both sets, deltaSKNN and pKNN at each K, from 2-D coordinates."""
    out: dict[str, Any] = {"gamma0": rbf_gamma(real_2d), "mmd": 0.0}
    out["mmd"] = mmd(real_2d, gen_2d, out["gamma0"])
    for k in ks:
        s_real, s_gen = sknn(real_2d, real_labels, k), sknn(gen_2d, gen_labels, k)
        out[f"sknn_real@{k}"], out[f"sknn_gen@{k}"] = s_real, s_gen
        out[f"delta_sknn@{k}"] = abs(s_gen - s_real)
        out[f"pknn@{k}"] = pknn(real_2d, real_labels, gen_2d, gen_labels, k)
    return out


def _group_means(X: sp.csr_matrix, labels: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    return np.vstack([np.asarray(X[labels == g].mean(0)).ravel() for g in groups])


def mean_expression_correlation(real_log: sp.csr_matrix, gen_log: sp.csr_matrix, real_labels: Sequence[str],
                                gen_labels: Sequence[str]) -> dict[str, Any]:
    """Pearson correlation (over genes) of each label's mean log expression, real vs generated."""
    real_labels, gen_labels = np.asarray(real_labels), np.asarray(gen_labels)
    groups = [g for g in np.unique(real_labels) if (gen_labels == g).any()]
    real_m, gen_m = _group_means(real_log, real_labels, groups), _group_means(gen_log, gen_labels, groups)
    per = {g: float(np.corrcoef(r, q)[0, 1]) for g, r, q in zip(groups, real_m, gen_m)}
    return {"mean_expression_corr": float(np.mean(list(per.values()))) if per else float("nan"),
            "mean_expression_corr_per_label": per}


def marker_checks(real_log: sp.csr_matrix, gen_log: sp.csr_matrix, real_labels: Sequence[str],
                  gen_labels: Sequence[str], gene_names: Sequence[str], n_markers: int = 3) -> dict[str, Any]:
    """Top `n_markers` genes of each label (Welch t-test on real cells, label vs rest), compared
    in real vs generated cells of that label by fraction expressing and mean log expression."""
    real_labels, gen_labels = np.asarray(real_labels), np.asarray(gen_labels)
    dense = real_log.toarray()
    rows, frac_diff, mean_diff = {}, [], []
    for g in np.unique(real_labels):
        inside = real_labels == g
        if inside.sum() < 2 or (~inside).sum() < 2 or not (gen_labels == g).any():
            continue
        t, _ = stats.ttest_ind(dense[inside], dense[~inside], axis=0, equal_var=False)
        top = np.argsort(-np.nan_to_num(t, nan=-np.inf))[:n_markers]
        real_g, gen_g = real_log[inside][:, top], gen_log[gen_labels == g][:, top]
        entry = {"genes": [str(gene_names[i]) for i in top],
                 "frac_expressing_real": (real_g > 0).mean(0).A1.tolist(),
                 "frac_expressing_gen": (gen_g > 0).mean(0).A1.tolist(),
                 "mean_real": np.asarray(real_g.mean(0)).ravel().tolist(),
                 "mean_gen": np.asarray(gen_g.mean(0)).ravel().tolist()}
        frac_diff += list(np.abs(np.subtract(entry["frac_expressing_real"], entry["frac_expressing_gen"])))
        mean_diff += list(np.abs(np.subtract(entry["mean_real"], entry["mean_gen"])))
        rows[str(g)] = entry
    return {"marker_frac_expressing_abs_diff": float(np.mean(frac_diff)) if frac_diff else float("nan"),
            "marker_mean_abs_diff": float(np.mean(mean_diff)) if mean_diff else float("nan"),
            "markers": rows}


def classifier_auc(real_log: sp.csr_matrix, gen_log: sp.csr_matrix, seed: int = 0, n_pcs: int = 30,
                   folds: int = 5) -> float:
    """Classifier two-sample test: cross-validated AUC of real vs generated (0.5 = indistinguishable).

    Stratified `folds`-fold CV; in each fold a PCA (`n_pcs` components) is fit on the training
    fold's real cells and a logistic regression on those components. Fitting the PCA on all real
    cells instead leaks: the held-out real cells then sit on components fitted to their own noise,
    and two sets of real cells score an AUC near 0.36 (measured on kang2018 / zheng2017).
    """
    X = sp.vstack([real_log, gen_log]).tocsr()
    y = np.r_[np.zeros(real_log.shape[0]), np.ones(gen_log.shape[0])]
    n_splits = int(min(folds, real_log.shape[0], gen_log.shape[0]))
    scores = np.zeros(len(y))
    for train, test in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        real_train = train[y[train] == 0]
        n_comp = max(1, min(n_pcs, len(real_train) - 1, X.shape[1]))
        pca = PCA(n_components=n_comp, random_state=seed).fit(X[real_train].toarray())
        clf = LogisticRegression(max_iter=2000).fit(pca.transform(X[train].toarray()), y[train])
        scores[test] = clf.predict_proba(pca.transform(X[test].toarray()))[:, 1]
    return float(roc_auc_score(y, scores))


def nonzero_fraction_correlation(real_counts: Any, gen_counts: Any) -> float:
    """Pearson correlation (over genes) of the fraction of cells in which each gene is non-zero."""
    real = np.asarray((sp.csr_matrix(real_counts) > 0).mean(0)).ravel()
    gen = np.asarray((sp.csr_matrix(gen_counts) > 0).mean(0)).ravel()
    return float(np.corrcoef(real, gen)[0, 1])


def generation_metrics(real_counts: Any, gen_counts: Any, real_labels: Sequence[str], gen_labels: Sequence[str], *,
                       gene_names: Sequence[str] | None = None, gene_mask: np.ndarray | None = None, seed: int = 0,
                       ks: Sequence[int] = KS) -> dict[str, Any]:
    """Every generation metric for one real and one generated set.

    Parameters
    ----------
    real_counts, gen_counts
        Counts (cells x genes) over the same genes.
    real_labels, gen_labels
        Each real cell's label and the label each generated cell was generated for.
    gene_names
        Names of the genes (for the marker report).
    gene_mask
        Genes to use; default: genes detected in at least one real cell, since genes the real
        data never measured cannot be compared.
    seed
        Seed of every random step.
    ks
        Neighbourhood sizes of sKNN / pKNN.

    Returns
    -------
    dict
        ``mmd``, ``delta_sknn@K``, ``pknn@K``, ``mean_expression_corr``, marker checks,
        ``classifier_auc``, ``nonzero_fraction_corr``, and the sizes used.
    """
    real, gen = sp.csr_matrix(real_counts, dtype=np.float64), sp.csr_matrix(gen_counts, dtype=np.float64)
    if gene_mask is None:
        gene_mask = np.asarray((real > 0).sum(0)).ravel() > 0
    idx = np.flatnonzero(gene_mask)
    names = np.asarray(gene_names if gene_names is not None else [str(i) for i in range(real.shape[1])])[idx]
    real, gen = real[:, idx], gen[:, idx]
    real_log, gen_log = log_normalize(real), log_normalize(gen)
    real_2d, gen_2d = umap_embedding(real_log, gen_log, seed)
    out: dict[str, Any] = {"n_real": int(real.shape[0]), "n_generated": int(gen.shape[0]), "n_genes": int(len(idx))}
    out.update(reference_metrics(real_2d, gen_2d, real_labels, gen_labels, ks))
    out.update(mean_expression_correlation(real_log, gen_log, real_labels, gen_labels))
    out.update(marker_checks(real_log, gen_log, real_labels, gen_labels, names))
    out["classifier_auc"] = classifier_auc(real_log, gen_log, seed)
    out["nonzero_fraction_corr"] = nonzero_fraction_correlation(real, gen)
    return out
