"""A confidence temperature that grows as a cell's detected genes fall.

Why: one temperature fitted on whole cells (core_model/temperature.py) leaves shallow cells
overconfident. With each test cell thinned binomially (benchmarks/sequencing_depth.py; its
results file of 2026-12-07 06:09) the expected calibration error of `annotate`'s confidences rose
from 0.025 at full depth to 0.100 at a twentieth of kang2018's counts, 0.027 to 0.091 on pbmc3k,
0.053 to 0.131 on aissa2021: fewer counts make the answer less often right, and the scores say so
too weakly.

So a cell with g detected vocabulary genes divides its scores by

    T(g) = T0 * (genes_ref / g) ** slope   where g < genes_ref, else T0,

with (T0, slope, genes_ref) fitted together by `instructcell calibrate --depths ...` on held-out
cells thinned to several depths, minimising the same confidence log loss. Answers never move:
each cell's scores are divided by one positive number. Without a fitted depth term (slope 0, or a
temperature.json from before it) every cell gets T0, as before.

For the shipped checkpoint the fit found almost no depth term (slope 0.05 below 100 genes) and,
on thinned test cells, no lower calibration error than its single temperature, so it ships
without one; the term is an option (benchmarks/EXPERIMENTS.md, 2026-12-07, 10:58 onwards).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .temperature import LOG_T_GRID, DepthTerm, confidence_log_loss, score_gaps

SLOPE_GRID = np.round(np.arange(-0.5, 1.51, 0.05), 2)  # a negative slope: shallow cells read too unsure
GENES_REF_GRID = (50, 100, 200, 400, 800, 1600)


def detected_genes(X) -> np.ndarray:
    """Per row of an (aligned) count matrix, how many genes hold counts."""
    return np.asarray((X > 0).sum(1)).ravel()


def _loss(gaps: np.ndarray, correct: np.ndarray, per_cell_t: np.ndarray) -> float:
    conf = 1.0 / np.exp(-gaps / per_cell_t[:, None]).sum(1)
    return confidence_log_loss(conf, correct)


def fit_depth_temperature(rows: Sequence[np.ndarray], correct: Sequence[bool],
                          genes: Sequence[float]) -> tuple[float, DepthTerm]:
    """(T0, DepthTerm) minimising the confidence log loss of the rows' answers: for every
    (slope, genes_ref) on the grids, T0 on a coarse log grid refined around its best point."""
    correct = np.asarray(correct, dtype=bool)
    genes = np.asarray(genes, dtype=np.float64)
    if not (len(rows) == len(correct) == len(genes)) or len(rows) == 0:
        raise ValueError(f"need one correctness flag and one gene count per score row, got {len(rows)} rows, "
                         f"{len(correct)} flags and {len(genes)} gene counts")
    gaps = score_gaps(rows)
    coarse = LOG_T_GRID[::20]
    best = (np.inf, 0.0, DepthTerm(0.0, GENES_REF_GRID[0]))
    for ref in GENES_REF_GRID:
        for slope in SLOPE_GRID:
            term = DepthTerm(float(slope), float(ref))
            factors = term.factors(genes)
            losses = [_loss(gaps, correct, np.exp(log_t) * factors) for log_t in coarse]
            i = int(np.argmin(losses))
            if losses[i] < best[0]:
                best = (losses[i], float(coarse[i]), term)
    _, log_t, term = best
    factors = term.factors(genes)
    fine = LOG_T_GRID[np.abs(LOG_T_GRID - log_t) <= (coarse[1] - coarse[0])]
    losses = [_loss(gaps, correct, np.exp(t) * factors) for t in fine]
    return float(np.exp(fine[int(np.argmin(losses))])), term
