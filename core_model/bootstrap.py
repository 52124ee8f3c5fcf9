"""Paired bootstrap of a macro-F1 difference: is one classifier's lead on a test split real?

Test splits here hold 18 to 400 cells, and macro-F1 weighs a type of five cells as much as one
of fifty, so a few cells move it by several points. Resampling the test cells (with replacement)
and scoring both classifiers on the same resample gives an interval for the difference that
accounts for that noise and for the two classifiers' errors falling on the same cells.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class PairedBootstrap:
    """macro-F1(a) - macro-F1(b) on the cells given, and over `n_boot` resamples of them."""

    delta: float
    low: float  # 2.5th percentile of the resampled differences
    high: float  # 97.5th percentile
    share_a_ahead: float  # share of resamples where a scores strictly higher
    n_cells: int
    n_boot: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _one_hot(values: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    return (values[:, None] == np.asarray(labels, dtype=object)[None, :]).astype(np.float64)


def macro_f1_weighted(truth: np.ndarray, predicted: np.ndarray, labels: Sequence[str],
                      weights: np.ndarray) -> np.ndarray:
    """Macro-F1 under each row of `weights` (resamples x cells: how often each cell is drawn).

    Over the full label set; a label with no true and no predicted cell scores 0, as sklearn's
    ``f1_score(labels=..., average="macro", zero_division=0)`` does, and an answer outside
    `labels` (an invalid one) is simply wrong.
    """
    t, p = _one_hot(np.asarray(truth, dtype=object), labels), _one_hot(np.asarray(predicted, dtype=object), labels)
    tp = weights @ (t * p)
    fp = weights @ p - tp
    fn = weights @ t - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1.mean(1)


def f1_difference_draws(truth: Sequence[str], a: Sequence[str], b: Sequence[str], labels: Sequence[str],
                        n_boot: int = 2000, seed: int = 0) -> tuple[float, np.ndarray]:
    """macro-F1(a) - macro-F1(b) on the cells given, and on each of `n_boot` resamples of them.

    Draws from independent sets can be added resample by resample to give the distribution of
    a difference summed (or averaged) over sets.
    """
    truth, a, b = (np.asarray(v, dtype=object) for v in (truth, a, b))
    n = len(truth)
    if not n or len(a) != n or len(b) != n:
        raise ValueError(f"need the same non-zero number of truths and predictions, got {n}, {len(a)}, {len(b)}")
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    full = np.ones((1, n))
    delta = float(macro_f1_weighted(truth, a, labels, full)[0] - macro_f1_weighted(truth, b, labels, full)[0])
    return delta, macro_f1_weighted(truth, a, labels, weights) - macro_f1_weighted(truth, b, labels, weights)


def summarize(delta: float, draws: np.ndarray, n_cells: int) -> PairedBootstrap:
    """Percentile interval and share of draws above 0."""
    low, high = np.percentile(draws, [2.5, 97.5])
    return PairedBootstrap(delta, float(low), float(high), float(np.mean(draws > 0)), n_cells, len(draws))


def paired_f1_bootstrap(truth: Sequence[str], a: Sequence[str], b: Sequence[str], labels: Sequence[str],
                        n_boot: int = 2000, seed: int = 0) -> PairedBootstrap:
    """Percentile interval of macro-F1(a) - macro-F1(b), resampling cells with replacement."""
    delta, draws = f1_difference_draws(truth, a, b, labels, n_boot, seed)
    return summarize(delta, draws, len(truth))
