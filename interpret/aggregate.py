"""From per-cell attributions to per-label gene rankings (scanpy ``rank_genes_groups`` layout).

For every label, the mean over its cells of each gene's per-cell score, counting a gene only
where the cell expresses it (unexpressed genes score 0; gradient x input and zero-baseline
Integrated Gradients give 0 there anyway, the plain gradient does not), or, for attributions
against a non-zero reference such as the mean cell, where it expresses it above the reference.

``normalize="minmax"`` (our default, after the InstructCell paper): per cell, only attributions
that support the label are kept (negative ones set to 0, as the paper kept the gradients that
lower the loss) and scaled by the cell's largest, so each cell's scores lie in [0, 1] with its top
gene at 1. ``normalize="none"``: raw attributions, in log-probability units and signed.

Why per-cell scaling by default: the gradient of log p carries a factor of about 1 - p, so raw
means weigh a label's few unsure cells far above the cells the model is sure of, and one odd
cell can set a label's whole ranking. On the valid splits of the three marker-benchmark sets,
against the mean training cell, minmax ranked more PanglaoDB markers in the top 10 than raw
means (zheng2017 0.40 vs 0.30, xin2016 0.60 vs 0.55, bastidasponce2019 0.15 vs 0.09;
benchmarks/results/saliency_variants_readout.md). The price, seen on the planted test model:
a confident cell's direction is the noisiest, and scaling gives it full weight (there minmax
from zero expression once put a beta marker first for alpha; raw means did not).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

NORMALIZATIONS = ("none", "minmax")
DEFAULT_NORMALIZE = "minmax"
_EPS = 1e-12


def cell_scores(values: np.ndarray, inputs: np.ndarray, normalize: str = DEFAULT_NORMALIZE) -> np.ndarray:
    """Per-cell scores as aggregated: unexpressed genes set to 0; with ``"minmax"`` the positive
    part scaled to [0, 1] per cell.

    Parameters
    ----------
    values
        cells x genes attributions.
    inputs
        cells x genes model input (log1p(CP10k)), or the input minus the attribution's reference
        (`Attributions.above_reference`); a gene counts where it is > 0.
    normalize
        ``"none"`` or ``"minmax"``.

    Returns
    -------
    numpy.ndarray
        cells x genes float32.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    expressed = inputs > 0
    out = np.where(expressed, values, 0.0).astype(np.float32)
    if normalize == "minmax":
        positive = np.clip(out, 0.0, None)
        top = positive.max(1, keepdims=True)
        # A cell with no supporting gene contributes zeros rather than dividing by zero.
        out = np.divide(positive, top, out=np.zeros_like(positive), where=top > _EPS)
    return out


def label_means(scores: np.ndarray, groups: Sequence[str], genes: Sequence[str],
                order: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean per-cell score of every gene for every label (labels x genes).

    `order` fixes the row order (labels without cells are left out); default sorted labels.
    """
    groups = np.asarray(groups, dtype=str)
    present = set(groups.tolist())
    labels = [str(l) for l in (order if order is not None else sorted(present)) if str(l) in present]
    means = np.stack([scores[groups == label].mean(0) for label in labels]) if labels else np.zeros((0, len(genes)))
    return pd.DataFrame(means, index=pd.Index(labels, name="label"), columns=pd.Index(list(genes), name="gene"))


def rankings(means: pd.DataFrame, n: int, positive_only: bool = False) -> dict[str, tuple[list[str], np.ndarray]]:
    """Top `n` genes per label by mean score, best first: ``{label: (genes, scores)}``.

    With `positive_only`, genes whose mean score is not above 0 are left out (a label whose
    answer few genes push up gets a shorter list rather than zero-score filler).
    """
    out = {}
    genes = means.columns.to_numpy()
    for label, row in means.iterrows():
        values = row.to_numpy()
        top = np.argsort(-values, kind="stable")[:n]
        if positive_only:
            top = top[values[top] > 0]
        out[str(label)] = ([str(g) for g in genes[top]], values[top].astype(np.float32))
    return out


def _log_fold_changes(log_expr: sp.spmatrix | np.ndarray, groups: np.ndarray, label: str,
                      gene_idx: np.ndarray) -> np.ndarray:
    """scanpy's log2 fold change of mean expression, group vs rest, from log1p data."""
    in_group = groups == label
    cols = log_expr[:, gene_idx]
    cols = cols.toarray() if sp.issparse(cols) else np.asarray(cols)
    mean_in = np.expm1(cols[in_group].mean(0))
    if (~in_group).sum() == 0:
        return np.full(len(gene_idx), np.nan, dtype=np.float32)
    mean_rest = np.expm1(cols[~in_group].mean(0))
    return np.log2((mean_in + 1e-9) / (mean_rest + 1e-9)).astype(np.float32)


def rank_genes_groups_layout(means: pd.DataFrame, n_genes: int, groupby: str, method: str,
                             log_expr: sp.spmatrix | np.ndarray, groups: Sequence[str],
                             extra_params: dict | None = None) -> dict:
    """A ``uns`` entry shaped like ``sc.tl.rank_genes_groups`` output.

    ``names``/``scores``/``logfoldchanges``/``pvals``/``pvals_adj`` are record arrays with one
    field per label (``n_genes`` rows), so ``sc.get.rank_genes_groups_df`` and the
    ``sc.pl.rank_genes_groups_*`` plots read it unchanged. ``scores`` are mean attributions;
    ``logfoldchanges`` are computed from the expression as scanpy does; there is no test behind
    a saliency ranking, so ``pvals``/``pvals_adj`` are NaN.
    """
    groups = np.asarray(groups, dtype=str)
    ranked = rankings(means, n_genes)
    col_index = {g: i for i, g in enumerate(means.columns)}
    keys = ("names", "scores", "logfoldchanges", "pvals", "pvals_adj")
    tables: dict[str, dict[str, np.ndarray]] = {k: {} for k in keys}
    for label, (names, scores) in ranked.items():
        idx = np.array([col_index[g] for g in names], dtype=np.int64)
        tables["names"][label] = np.asarray(names, dtype=object)
        tables["scores"][label] = scores.astype(np.float32)
        tables["logfoldchanges"][label] = _log_fold_changes(log_expr, groups, label, idx)
        tables["pvals"][label] = np.full(len(names), np.nan)
        tables["pvals_adj"][label] = np.full(len(names), np.nan)
    params = {"groupby": groupby, "reference": "rest", "method": method, "use_raw": False,
              "corr_method": "none", **(extra_params or {})}
    out: dict = {"params": params}
    for key, columns in tables.items():
        frame = pd.DataFrame(columns, columns=list(ranked))
        dtype = "O" if key == "names" else ("float32" if key in ("scores", "logfoldchanges") else "float64")
        out[key] = frame.to_records(index=False, column_dtypes=dtype)
    return out


def per_cell_top(scores: np.ndarray, inputs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's `k` highest-scoring counted genes (`inputs` > 0, as in `cell_scores`):
    (gene indices, scores), cells x k.

    Cells expressing fewer than `k` genes get index -1 and score NaN in the spare places.
    """
    masked = np.where(inputs > 0, scores, -np.inf)
    k = min(k, scores.shape[1])
    part = np.argpartition(-masked, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(
        np.arange(scores.shape[1]), (scores.shape[0], 1))
    vals = np.take_along_axis(masked, part, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx, vals = np.take_along_axis(part, order, 1), np.take_along_axis(vals, order, 1)
    missing = ~np.isfinite(vals)
    return np.where(missing, -1, idx), np.where(missing, np.nan, vals).astype(np.float32)
