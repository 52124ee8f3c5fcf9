"""How much the read-out counts beside the language model, as a function of a file's gene coverage.

The answer score of a label is the language model's log-likelihood plus w times the read-out's
log-probability (core_model/readout.py). w = 1 was a guess. Here w is chosen by the log loss of
the true label, softmax((LM + w * RO) / T) over the candidates, on valid cells the read-out was
not fitted on: a proper scoring rule, smooth in w where macro-F1 on a few hundred cells is not
(benchmarks/EXPERIMENTS.md). T is fitted beside w only so that the loss compares weights at their
best sharpness; the confidences users see get their own temperature (core_model/temperature.py).

The read-out is linear in genes fitted on whole files, so it degrades on files holding few of
them (a panel, HVGs only, a shallow file), faster than the language model does. So w is fitted per
coverage bin (coverage: the share of a label set's mean training cell the file's genes carry) and
made non-decreasing in coverage (pool-adjacent-violators, weighted by cells): `Readout.weight_at`
interpolates the resulting points.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

WEIGHT_GRID = np.exp(np.linspace(np.log(0.05), np.log(64.0), 73))
T_GRID = np.exp(np.linspace(np.log(0.1), np.log(100.0), 61))

Group = tuple[np.ndarray, np.ndarray, np.ndarray]  # LM scores, read-out log-probs (cells x labels), truth column


def label_nll(groups: Sequence[Group], weight: float, temperature: float) -> np.ndarray:
    """Each cell's -log p(true label) under softmax((LM + weight * RO) / temperature)."""
    out = []
    for lm, ro, truth in groups:
        s = (lm + weight * ro) / temperature
        s = s - s.max(1, keepdims=True)
        out.append(np.log(np.exp(s).sum(1)) - s[np.arange(len(truth)), truth])
    return np.concatenate(out) if out else np.zeros(0)


def fit_weight(groups: Sequence[Group], prior: Sequence[Group] = (), prior_rows: float = 0.0
               ) -> tuple[float, float, float]:
    """(weight, temperature, mean log loss) minimising the mean label log loss over the grids.

    Each group holds cells scored over one label list (rows of one width); truth columns index it.
    With `prior` groups, their mean loss counts as `prior_rows` more rows: a fit on a few rows of
    one label set shrinks toward the fit on every set's rows (the loss reported is the blend's).
    """
    groups = _checked(groups)
    if not groups:
        raise ValueError("no scored cells to fit a read-out weight on")
    surface = loss_surface(groups)
    if prior_rows > 0 and _checked(prior):
        surface = shrunk(surface, sum(len(g[2]) for g in groups), loss_surface(prior), prior_rows)
    return best_on(surface)


def loss_surface(groups: Sequence[Group]) -> np.ndarray:
    """(WEIGHT_GRID, T_GRID) the mean label log loss of `groups` at every grid point."""
    groups = _checked(groups)
    return np.array([[label_nll(groups, w, t).mean() for t in T_GRID] for w in WEIGHT_GRID])


def shrunk(surface: np.ndarray, n_rows: int, prior: np.ndarray, prior_rows: float) -> np.ndarray:
    """The loss of `n_rows` rows blended with a prior loss counted as `prior_rows` rows."""
    if np.isinf(prior_rows):
        return prior
    share = prior_rows / (n_rows + prior_rows)
    return (1 - share) * surface + share * prior


def best_on(surface: np.ndarray) -> tuple[float, float, float]:
    """(weight, temperature, loss) at the surface's minimum."""
    i, j = np.unravel_index(int(np.argmin(surface)), surface.shape)
    return float(WEIGHT_GRID[i]), float(T_GRID[j]), float(surface[i, j])


def _checked(groups: Sequence[Group]) -> list[Group]:
    """The groups holding rows, each refused unless its scores are finite and of one shape."""
    groups = [g for g in groups if len(g[2])]
    for lm, ro, truth in groups:
        if lm.shape != ro.shape or lm.shape[0] != len(truth) or not np.isfinite(lm).all() or not np.isfinite(ro).all():
            raise ValueError("each group needs finite LM and read-out scores of one shape and one truth per row")
    return groups


def monotone_curve(points: Sequence[tuple[float, float, int]]) -> list[tuple[float, float]]:
    """(coverage, weight) points, coverage ascending, with the weights made non-decreasing by
    pool-adjacent-violators (each point weighted by its cell count; pooled weights are averaged
    in log scale, as the grid is)."""
    pts = sorted(points)
    blocks: list[list[float]] = []  # [sum of n * log w, sum of n, first index, last index]
    for i, (_, w, n) in enumerate(pts):
        blocks.append([n * np.log(w), float(n), i, i])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            last = blocks.pop()
            blocks[-1] = [blocks[-1][0] + last[0], blocks[-1][1] + last[1], blocks[-1][2], last[3]]
    weights = [0.0] * len(pts)
    for total, n, first, last in blocks:
        for i in range(int(first), int(last) + 1):
            weights[i] = float(np.exp(total / n))
    return [(float(c), w) for (c, _, _), w in zip(pts, weights)]
