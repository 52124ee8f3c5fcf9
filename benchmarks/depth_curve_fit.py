"""Depth curves fitted from split score rows: pooled over every label set, and one per set.

A row is one valid cell answered among its set's labels at some thinning depth, split into the
language model's scores (`lm`) and the read-out's log-probabilities (`ro`), with its true label's
column, its cell's detected vocabulary genes, its set and its cell (readout_depth_curve.py makes
them). Rows are binned by detected genes (`EDGES`); per bin the read-out weight minimising the true
label's log loss is fitted (core_model/readout_weight.py), and the bins' weights, placed at their
median genes, made non-decreasing and capped, form a curve.

A set's own curve fits each bin on the set's rows with the pooled bin's loss counted as `prior_rows`
more rows: a set with few rows in a bin follows the pooled weight, one with many its own. How many
is chosen on held-out cells (`held_out`): each set's cells are split in two halves, curves are
fitted on one half and scored on the other (log loss, accuracy and calibration at the confidence
temperature the checkpoint uses), and the halves swap.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from instructcell_agent.core_model.readout import depth_caps
from instructcell_agent.core_model.readout_weight import best_on, loss_surface, monotone_curve, shrunk
from instructcell_agent.core_model.temperature import calibration_error

EDGES = (0, 25, 50, 100, 200, 400, 800, 1600)  # detected vocabulary genes per cell, bin lower edges
PRIOR_ROWS = (0.0, 10.0, 30.0, 100.0, 300.0, 1000.0, math.inf)  # inf: every set on the pooled curve

Row = dict[str, Any]
Curve = list[tuple[float, float]]


def groups_of(rows: Sequence[Row]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows as readout_weight's groups: one per label-list width."""
    by_width: dict[int, list[Row]] = {}
    for r in rows:
        by_width.setdefault(len(r["lm"]), []).append(r)
    return [(np.stack([r["lm"] for r in rs]), np.stack([r["ro"] for r in rs]), np.array([r["truth"] for r in rs]))
            for rs in by_width.values()]


def bins_of(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Rows by their cell's detected genes, keyed "lo-hi" ("lo+" for the last bin); empty bins left out."""
    out: dict[str, list[Row]] = {}
    for lo, hi in zip(EDGES, (*EDGES[1:], None)):
        inside = [r for r in rows if r["genes"] >= lo and (hi is None or r["genes"] < hi)]
        if inside:
            out[f"{lo}+" if hi is None else f"{lo}-{hi - 1}"] = inside
    return out


def curve_of(points: Sequence[tuple[float, float, int]], max_weight: float) -> Curve:
    """(genes, weight) from (median genes, weight, rows) points: non-decreasing, capped, genes from 1."""
    return [(max(g, 1.0), min(w, max_weight)) for g, w in monotone_curve(points)]


def median_genes(rows: Sequence[Row]) -> float:
    return float(np.median([r["genes"] for r in rows]))


class Surfaces:
    """Each bin's loss surface over the weight and temperature grids, pooled and per set, computed
    once so that curves for any prior size are cheap (`curves`)."""

    def __init__(self, rows: Sequence[Row], min_rows: int):
        # pooled bins of at least `min_rows` rows place the pooled curve's points and a set's bins
        self.pooled = {name: (median_genes(inside), len(inside), loss_surface(groups_of(inside)))
                       for name, inside in bins_of(rows).items() if len(inside) >= min_rows}
        self.by_set = {name: {b: (median_genes(inside), len(inside), loss_surface(groups_of(inside)))
                              for b, inside in bins_of([r for r in rows if r["set"] == name]).items()
                              if b in self.pooled}
                       for name in sorted({r["set"] for r in rows})}

    def curves(self, prior_rows: float, max_weight: float) -> tuple[Curve, dict[str, Curve]]:
        """The pooled curve and each set's, its bins shrunk toward the pooled ones by `prior_rows`
        (inf: the pooled curve itself). A bin the set has no rows in takes the pooled bin's weight
        (what shrinkage gives zero rows), so a set seen only deep is not held at full weight in
        shallow cells. Points count as their rows plus the prior's in making the curve monotone."""
        at = {b: (g, best_on(surface)[0], n) for b, (g, n, surface) in self.pooled.items()}
        pooled = curve_of(list(at.values()), max_weight)
        by_set: dict[str, Curve] = {}
        for name, bins in self.by_set.items():
            if math.isinf(prior_rows) or not bins:
                by_set[name] = pooled
                continue
            points = [(g, best_on(shrunk(surface, n, self.pooled[b][2], prior_rows))[0], n + prior_rows)
                      for b, (g, n, surface) in bins.items()]
            if prior_rows > 0:
                points += [(g, w, prior_rows) for b, (g, w, _) in at.items() if b not in bins]
            by_set[name] = curve_of(points, max_weight)
        return pooled, by_set


def scored(rows: Sequence[Row], curves: dict[str, Curve], max_weight: float, temperature: float
           ) -> dict[str, np.ndarray]:
    """Each row answered as the checkpoint would with these curves: its set's cap at its genes
    (at most `max_weight`), the scores divided by `temperature`; the true label's log loss, whether
    the answer is right and its confidence."""
    nll, right, conf = [], [], []
    for r in rows:
        w = min(float(depth_caps(curves[r["set"]], np.array([r["genes"]]))[0]), max_weight)
        s = (np.asarray(r["lm"]) + w * np.asarray(r["ro"])) / temperature
        p = np.exp(s - s.max())
        p /= p.sum()
        nll.append(-np.log(max(p[r["truth"]], 1e-300)))
        right.append(int(np.argmax(s)) == r["truth"])
        conf.append(p.max())
    return {"nll": np.array(nll), "right": np.array(right, dtype=bool), "conf": np.array(conf)}


def halves(rows: Sequence[Row], seed: int) -> np.ndarray:
    """Bool per row: whether its cell is in the first half of its set's cells (all of a cell's
    depths fall in one half, so a curve is never scored on a cell it was fitted on)."""
    rng = np.random.default_rng(seed)
    first: set[tuple[str, int]] = set()
    for name in sorted({r["set"] for r in rows}):
        cells = sorted({r["cell"] for r in rows if r["set"] == name})
        first |= {(name, c) for c in rng.permutation(cells)[: len(cells) // 2].tolist()}
    return np.array([(r["set"], r["cell"]) in first for r in rows], dtype=bool)


def held_out(rows: Sequence[Row], grid: Sequence[float], min_rows: int, max_weight: float, temperature: float,
             seed: int = 0) -> dict[str, Any]:
    """Per prior size in `grid`: every row scored by curves fitted on the other half of its set's
    cells; totals, per set and per bin."""
    in_first = halves(rows, seed)
    parts = [[r for r, f in zip(rows, in_first) if f == side] for side in (True, False)]
    surfaces = [Surfaces(part, min_rows) for part in parts]
    out: dict[str, Any] = {}
    for k in grid:
        results = []
        for fitted, score_on in ((surfaces[0], parts[1]), (surfaces[1], parts[0])):
            pooled, by_set = fitted.curves(k, max_weight)
            curves = {name: by_set.get(name, pooled) for name in {r["set"] for r in score_on}}
            results.append((score_on, scored(score_on, curves, max_weight, temperature)))
        rs = [r for part, _ in results for r in part]
        got = {key: np.concatenate([res[key] for _, res in results]) for key in ("nll", "right", "conf")}
        out["inf" if math.isinf(k) else f"{k:g}"] = {
            "all": summary(got, np.ones(len(rs), dtype=bool)),
            "sets": {name: summary(got, np.array([r["set"] == name for r in rs]))
                     for name in sorted({r["set"] for r in rs})},
            "bins": {name: summary(got, np.array([lo <= r["genes"] < hi for r in rs]))
                     for name, (lo, hi) in bin_ranges().items()}}
    return out


def bin_ranges() -> dict[str, tuple[float, float]]:
    return {(f"{lo}+" if hi is None else f"{lo}-{hi - 1}"): (lo, math.inf if hi is None else hi)
            for lo, hi in zip(EDGES, (*EDGES[1:], None))}


def summary(got: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, Any]:
    if not mask.any():
        return {"n_rows": 0}
    right, conf = got["right"][mask], got["conf"][mask]
    return {"n_rows": int(mask.sum()), "log_loss": float(got["nll"][mask].mean()), "accuracy": float(right.mean()),
            "ece": calibration_error(conf, right)}


def chosen_prior_rows(table: dict[str, Any]) -> str:
    """The prior size with the lowest held-out log loss over all rows."""
    return min(table, key=lambda k: table[k]["all"]["log_loss"])
