"""Deletion test: does removing a cell's most salient genes hurt its label more than random genes?

For every cell, the `k` genes with the highest attribution among those it expresses are set to 0
in the model's input space (log1p(CP10k); the other genes keep their values, no renormalisation),
and the drop in the explained label's probability is compared with the drop after zeroing `k`
expressed genes drawn at random (averaged over `n_random` draws). Faithful attributions give a
ratio of mean drops well above 1.

The same drops are also measured in log-odds, log(p / (1 - p)). A model that is sure of a cell
(p = 0.9998) can lose a lot of evidence while its probability barely moves, and random deletions
then often *raise* p by a hair, which leaves the probability ratio undefined; log-odds drops
stay on a scale where both are measurable.

For a contrast (attributions of log p(A) - log p(B), `Attributions.versus`), the probability is
A's within the pair, p(A) / (p(A) + p(B)), so the log-odds drop is the drop of the contrast
itself.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from instructcell_agent.core_model.model import CellLanguageModel

from .aggregate import per_cell_top
from .attribution import Attributions, label_probability

log = logging.getLogger(__name__)


@dataclass
class DeletionResult:
    """Mean drops of the explained label's probability and log-odds; each `ratio` = top / random
    (NaN if the random drop is not positive); `flipped_top` / `flipped_random`: of the cells whose
    probability was at least 0.5, the share below 0.5 after the deletion (for a contrast: the cells
    that then prefer B to A; for random genes, averaged over the draws)."""

    k: int
    n_cells: int
    n_random: int
    mean_drop_top: float
    mean_drop_random: float
    ratio: float
    mean_probability: float
    mean_logodds_drop_top: float
    mean_logodds_drop_random: float
    logodds_ratio: float
    flipped_top: float = float("nan")
    flipped_random: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


def deletion_test(model: CellLanguageModel, attributions: Attributions, k: int = 10, n_random: int = 3,
                  seed: int = 0, batch_size: int = 16) -> DeletionResult:
    """Zero each cell's top-`k` salient expressed genes vs `k` random expressed genes.

    Parameters
    ----------
    model
        The model that produced `attributions` (same prompts are re-used).
    attributions
        Output of :func:`~instructcell_agent.interpret.attribution.attribute`.
    k, n_random, seed
        Genes removed per cell, random draws per cell, and the generator seed.
    batch_size
        Cells per forward pass.

    Returns
    -------
    DeletionResult
    """
    a = attributions
    rows = a.rows if a.rows is not None else np.zeros(len(a.target), dtype=np.int64)
    base = a.probabilities[np.arange(len(a.target)), a.target]
    if a.versus is not None:  # A's probability within the pair (A, B)
        base = base / (base + a.probabilities[np.arange(len(a.versus)), a.versus])
    top_idx, _ = per_cell_top(a.values, a.inputs, k)
    after_top = _probability_without(model, a, rows, top_idx, batch_size)
    rng = np.random.default_rng(seed)
    after_random = [_probability_without(model, a, rows, _random_expressed(a.inputs, k, rng), batch_size)
                    for _ in range(n_random)]
    mean_top, mean_rand = float(np.mean(base - after_top)), float(np.mean([base - r for r in after_random]))
    lo_top = float(np.mean(_logodds(base) - _logodds(after_top)))
    lo_rand = float(np.mean([_logodds(base) - _logodds(r) for r in after_random]))
    held = base >= 0.5
    flipped = lambda after: float(np.mean(after[held] < 0.5)) if held.any() else float("nan")  # noqa: E731
    return DeletionResult(k, len(base), n_random, mean_top, mean_rand, _ratio(mean_top, mean_rand),
                          float(base.mean()), lo_top, lo_rand, _ratio(lo_top, lo_rand), flipped(after_top),
                          float(np.mean([flipped(r) for r in after_random])))


def _ratio(top: float, rand: float) -> float:
    return top / rand if rand > 0 else float("nan")


def _logodds(p: np.ndarray) -> np.ndarray:
    # Clipped so a probability rounded to exactly 0 or 1 in float32 stays finite.
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def _probability_without(model: CellLanguageModel, a: Attributions, rows: np.ndarray, gene_idx: np.ndarray,
                         batch_size: int) -> np.ndarray:
    """The target probability once the genes `gene_idx` (cells x k, -1 = none) are zeroed."""
    expr = a.inputs.copy()
    cells = np.repeat(np.arange(expr.shape[0]), gene_idx.shape[1])
    genes = gene_idx.ravel()
    keep = genes >= 0
    expr[cells[keep], genes[keep]] = 0.0
    return label_probability(model, expr, a.candidates, a.prefixes, rows, a.target, batch_size, a.route, a.decisive,
                             a.readout, [g for _, g in a.broader], a.versus)


def _random_expressed(inputs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    out = np.full((inputs.shape[0], k), -1, dtype=np.int64)
    for i, row in enumerate(inputs):
        expressed = np.flatnonzero(row > 0)
        pick = rng.choice(expressed, size=min(k, expressed.size), replace=False) if expressed.size else []
        out[i, : len(pick)] = pick
    return out
