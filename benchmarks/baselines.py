"""Reference classifiers for the annotation benchmark: CellTypist, PCA-kNN and HVG logistic regression.

Each baseline is trained on the train+valid cells of a canonical split and predicts the test cells,
all on log1p(CP10k) of the dataset's own genes (the input CellTypist expects). Only the predict step
is timed, so the cells-per-second figure compares like with like against our model's inference.

Needs the `bench` extra: ``pip install -e ".[bench]"`` (CellTypist 1.7.1 needs scikit-learn < 1.6).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import anndata as ad
import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neighbors import KNeighborsClassifier

from instructcell_agent.core_model.values import ValueReport, detect_value_type, to_count_scale

logger = logging.getLogger(__name__)

TARGET_SUM = 1e4
N_PCS = 50
N_NEIGHBORS = 15
N_HVG = 2000
BASELINES: tuple[str, ...] = ("celltypist", "logreg", "knn")


@dataclass
class BaselineResult:
    """Scores and timings of one baseline on one test split."""

    name: str
    accuracy: float
    macro_f1: float
    n_test: int
    fit_seconds: float
    predict_seconds: float
    cells_per_second: float
    detail: str = ""
    # CellTypist only: predict throughput without its gene-name matching (see _celltypist_core).
    core_cells_per_second: float | None = None
    # One label per test cell, for paired comparisons; left out of the JSON report.
    predicted: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "predicted"}


def log_cp10k(X: Any, report: ValueReport | None = None) -> sp.csr_matrix:
    """log1p of counts normalised to 1e4 per cell, whatever scale `X` holds.

    Detection runs on the whole matrix passed in (callers pass the full dataset, so train and test
    are brought back to the same linear scale by one decision).
    """
    report = report or detect_value_type(X)
    linear = to_count_scale(X, report).astype(np.float64)
    totals = np.asarray(linear.sum(axis=1)).ravel()
    # An empty cell stays all-zero instead of dividing by zero.
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    out = sp.csr_matrix(sp.diags(scale) @ linear)
    out.data = np.log1p(out.data)
    return out.astype(np.float32)


def prepared_adata(adata: ad.AnnData) -> ad.AnnData:
    """A copy of `adata` whose .X is log1p(CP10k) of its own genes (obs kept, layers dropped)."""
    report = detect_value_type(adata.X)
    logger.info("values: %s (%s)", report.kind, report.note)
    out = ad.AnnData(X=log_cp10k(adata.X, report), obs=adata.obs.copy(), var=adata.var[[]].copy())
    out.uns["value_report"] = report.to_dict()
    return out


def score(truth: np.ndarray, predicted: np.ndarray, labels: Sequence[str]) -> tuple[float, float]:
    """Accuracy and macro-F1 over the dataset's full label set (as our model is scored)."""
    acc = float(accuracy_score(truth, predicted))
    f1 = float(f1_score(truth, predicted, labels=list(labels), average="macro", zero_division=0))
    return acc, f1


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _result(name: str, truth: np.ndarray, predicted: Any, labels: Sequence[str],
            fit_s: float, predict_s: float, detail: str) -> BaselineResult:
    predicted = np.asarray(predicted).astype(str)
    acc, f1 = score(truth, predicted, labels)
    return BaselineResult(name, acc, f1, len(truth), fit_s, predict_s,
                          len(truth) / max(predict_s, 1e-9), detail, predicted=predicted)


def run_celltypist(train: ad.AnnData, test: ad.AnnData, label_key: str, labels: Sequence[str],
                   n_jobs: int = 2) -> BaselineResult:
    """CellTypist 1.7.1 with its defaults, all genes (no feature selection), no majority voting."""
    import celltypist  # imported here: only the benchmark extra provides it

    truth = test.obs[label_key].astype(str).to_numpy()
    model, fit_s = _timed(lambda: celltypist.train(
        train, labels=train.obs[label_key].astype(str).to_numpy(), n_jobs=n_jobs,
        feature_selection=False, check_expression=False))
    # annotate() builds its own classifier around the model: that setup is part of predicting.
    out, predict_s = _timed(lambda: celltypist.annotate(test, model=model, majority_voting=False))
    predicted = out.predicted_labels["predicted_labels"].to_numpy()
    result = _result("celltypist", truth, predicted, labels, fit_s, predict_s, "all genes, best match")
    core_s, agree = _celltypist_core(model, test, predicted)
    if agree < 1.0:
        logger.warning("CellTypist scale+predict agrees with annotate() on only %.1f%% of cells", 100 * agree)
    result.core_cells_per_second = len(truth) / max(core_s, 1e-9)
    result.detail += f"; annotate {predict_s:.2f}s, of which scale+predict {core_s:.3f}s (agreement {agree:.3f})"
    return result


def _celltypist_core(model: Any, test: ad.AnnData, expected: np.ndarray) -> tuple[float, float]:
    """Seconds of what annotate() does after matching gene names: scale, clip at 10, predict.

    annotate() matches names with np.isin on object arrays, which numpy 2.x runs in O(genes^2):
    seconds per call on 20k genes whatever the cell count. Our model's gene alignment is outside its
    timed step, so this is the like-for-like CellTypist figure. Also returns the share of cells on
    which it agrees with annotate() (1.0 expected: same steps, same model).
    """
    order = test.var_names.get_indexer(model.classifier.features)
    if (order < 0).any():  # cannot happen: train and test share the dataset's genes
        raise ValueError("CellTypist model has genes the test cells lack")
    X, scaler = test.X[:, order], model.scaler
    mean = scaler.mean_ if scaler.with_mean else 0.0

    def core() -> np.ndarray:
        Z = (_dense(X) - mean) / scaler.scale_
        Z[Z > 10] = 10
        return model.predict_labels_and_prob(Z, mode="best match")[2]

    labels, seconds = _timed(core)
    return seconds, float(np.mean(np.asarray(labels).astype(str) == expected.astype(str)))


def run_knn(train: ad.AnnData, test: ad.AnnData, label_key: str, labels: Sequence[str]) -> BaselineResult:
    """15-NN on the first 50 PCs (fewer when genes or cells are fewer) of log1p(CP10k)."""
    n_pcs = min(N_PCS, train.n_vars, train.n_obs - 1)
    y = train.obs[label_key].astype(str).to_numpy()
    k = min(N_NEIGHBORS, train.n_obs)
    # Dense is fine at these sizes (< 4k cells) and gives exact centred PCA.
    pca = PCA(n_components=n_pcs, random_state=0)
    knn = KNeighborsClassifier(n_neighbors=k)
    _, fit_s = _timed(lambda: knn.fit(pca.fit_transform(_dense(train.X)), y))
    predicted, predict_s = _timed(lambda: knn.predict(pca.transform(_dense(test.X))))
    truth = test.obs[label_key].astype(str).to_numpy()
    return _result("knn", truth, predicted, labels, fit_s, predict_s, f"{n_pcs} PCs, {k}-NN")


def hvg_mask(train: ad.AnnData, n_top: int = N_HVG) -> np.ndarray:
    """Seurat-flavour HVGs of the train cells; all genes when the set has no more than `n_top`."""
    import scanpy as sc

    if train.n_vars <= n_top:
        return np.ones(train.n_vars, dtype=bool)
    # flavor="seurat" expects log data, which .X holds; inplace=False leaves `train` untouched.
    table = sc.pp.highly_variable_genes(train, n_top_genes=n_top, flavor="seurat", inplace=False)
    return table["highly_variable"].to_numpy(dtype=bool)


def run_logreg(train: ad.AnnData, test: ad.AnnData, label_key: str, labels: Sequence[str]) -> BaselineResult:
    """sklearn LogisticRegression(max_iter=1000) on the train cells' 2,000 HVGs."""
    mask = hvg_mask(train)
    y = train.obs[label_key].astype(str).to_numpy()
    clf = LogisticRegression(max_iter=1000)
    _, fit_s = _timed(lambda: clf.fit(train.X[:, mask], y))
    predicted, predict_s = _timed(lambda: clf.predict(test.X[:, mask]))
    truth = test.obs[label_key].astype(str).to_numpy()
    return _result("logreg", truth, predicted, labels, fit_s, predict_s, f"{int(mask.sum())} HVGs")


def _dense(X: Any) -> np.ndarray:
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)


def run_baselines(train: ad.AnnData, test: ad.AnnData, label_key: str, labels: Sequence[str],
                  names: Sequence[str] = BASELINES, n_jobs: int = 2) -> dict[str, BaselineResult]:
    """Every requested baseline on prepared (log1p CP10k) train and test AnnData."""
    runners: dict[str, Callable[[], BaselineResult]] = {
        "celltypist": lambda: run_celltypist(train, test, label_key, labels, n_jobs),
        "logreg": lambda: run_logreg(train, test, label_key, labels),
        "knn": lambda: run_knn(train, test, label_key, labels),
    }
    results: dict[str, BaselineResult] = {}
    for name in names:
        results[name] = runners[name]()
        r = results[name]
        logger.info("%s: acc %.3f macro-F1 %.3f (fit %.1fs, predict %.2fs)",
                    name, r.accuracy, r.macro_f1, r.fit_seconds, r.predict_seconds)
    return results
