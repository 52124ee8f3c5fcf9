"""Cells the linear read-out alone is sure of, answered without the language model (opt-in `fast`).

Why: on a 2-core CPU the language model answers 4 to 36 cells a second and the read-out
(core_model/readout.py) thousands. In the product of experts a label the read-out gives a
probability of at least SURE is one the language model would have to outvote by about 4 nats, and
it did not once: with a read-out fitted on the train splits only, the product chose the read-out's
label for every one of the 994 valid cells of the ten shared sets where the read-out's
probability was at least 0.98 (0.56 to 0.98 of each set's cells), 0.990 of them right
(benchmarks/EXPERIMENTS.md, "Cells the read-out is sure of"). So with `fast` those cells take
the read-out's answer and the language model reads only the rest.

Only where the read-out takes its full part in the answer: labels of one learned set (across
sets the language model picks the naming, which the read-out cannot) at a weight of 1 or more (a
file holding few of the genes weighs the read-out down, and the language model decides).
A shallow cell, whose few genes cap the read-out's weight below 1 (the depth curve,
core_model/readout.py), is judged by the read-out as it weighs in the product: its
log-probabilities times that weight, renormalized (`at_weight`), must reach SURE. Leaving every
capped cell to the language model, as `fast` did at first, sent many whole cells of files holding
few genes there (of the test cells the read-out was sure of: wang2016 37 of 50, pbmc3k 64 of 210;
benchmarks/EXPERIMENTS.md, 2026-12-07).
A cell answered this way has those probabilities (at SURE or above for its label; the temperature
fitted for the product does not apply to them). A linear read-out can be sure
of a type the candidates lack, where the language model was not (13 of zheng2017's 70 CD34+ test
cells asked among kang2018's labels, when sure alone decided), so a cell the read-out is sure of
but that is unlike the training cells of its label (typicality below FAST_TYPICAL_BELOW, where
the checkpoint keeps reference cells) goes to the language model too (`sure_and_typical`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .corpus import dense_rows
from .readout import Readout, joins, one_set
SURE = 0.98
# A sure read-out answer goes to the language model too where the cell sits this far below the
# training cells of the read-out's label. -1 rather than the -3 `unassigned_atypical` uses: across
# studies the read-out is sure of wrong answers for cells that are only mildly atypical (zheng2017's
# CD8 T cells asked among kang2018's labels, read as 'CD4T' at p >= 0.98, typicality -2.2 to +0.8),
# while a set's own test cells sit below -1 for 0.055 of them (benchmarks/EXPERIMENTS.md, 2026-12-07).
FAST_TYPICAL_BELOW = -1.0
# The falling coverage curve gives the read-out weight 1 from a gene coverage of 0.47 up, which is
# where `fast` answers alone. The curve refitted for the re-centred read-out (core_model/readout_adapt.py;
# an option) keeps weight 1 on files holding far fewer genes, but SURE was never checked on those:
# they stay with the language model.
FAST_MIN_COVERAGE = 0.47
_CHUNK = 1024  # cells normalized at once: the read-out is one matrix product, memory is what bounds it


def why_not(readout: Readout | None, labels: Sequence[str], label_sets: Sequence[Sequence[str]]) -> str | None:
    """Why the read-out cannot answer cells alone for `labels` (None when it can)."""
    if not joins(readout, labels):
        return ("the read-out does not score these labels (the checkpoint has none, it is turned off, or the labels "
                "are ones it never learned)")
    if not one_set(labels, label_sets):
        return ("the labels come from several learned sets, and the language model picks which set names the cell; "
                "candidates from one learned set let the read-out answer alone")
    if readout.weight_for(labels) < 1:
        return (f"this file holds few of the read-out's genes (weight {readout.weight_for(labels):.2g}), "
                "so the language model decides")
    shift = readout.shift_for(labels)
    if shift is not None and shift.coverage < FAST_MIN_COVERAGE:
        return (f"this file holds few of the read-out's genes (coverage {shift.coverage:.2g}), "
                "so the language model decides")
    return None


@torch.no_grad()
def readout_log_probs(model, X, readout: Readout, labels: Sequence[str]) -> np.ndarray:
    """(cells, labels) the read-out's log-probability of each label among `labels`, for count-scale
    rows `X` (normalized as the model normalizes its input)."""
    out = [np.zeros((0, len(labels)))]
    for start in range(0, X.shape[0], _CHUNK):
        rows = np.arange(start, min(start + _CHUNK, X.shape[0]))
        expr = model.normalize(torch.from_numpy(dense_rows(X, rows)).to(model.device))
        out.append(readout.log_probs(expr, labels).double().cpu().numpy())
    return np.concatenate(out)


def cell_weights(readout: Readout, X, labels: Sequence[str]) -> np.ndarray:
    """Each count-scale row's weight of the read-out in the product over `labels` (its depth curve at
    the row's detected genes), at most 1: SURE was chosen on cells at weight 1, and a larger weight
    is not taken as making the read-out surer than that."""
    genes = np.asarray((X > 0).sum(1)).ravel()
    return np.minimum(readout.depth_caps(genes, labels), 1.0)


def at_weight(log_probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The read-out's log-probabilities as it weighs in the product: log-softmax of `weights` (one
    per row) times `log_probs`. At weight 1 unchanged; below 1 flatter, so a shallow cell needs a
    clearer read-out to reach SURE (the language model then needs the same ~4 nats to outvote it)."""
    scaled = log_probs * np.asarray(weights, dtype=np.float64)[:, None]
    return scaled - np.logaddexp.reduce(scaled, axis=1, keepdims=True) if len(scaled) else scaled


def sure(log_probs: np.ndarray) -> np.ndarray:
    """Whether each cell's best label has a read-out probability of at least SURE."""
    return log_probs.max(1) >= np.log(SURE) if len(log_probs) else np.zeros(0, dtype=bool)


def sure_and_typical(log_probs: np.ndarray, labels: Sequence[str],
                     typicality: Callable[[np.ndarray, list[str]], np.ndarray] | None) -> np.ndarray:
    """`sure`, less the cells unlike the training cells of the read-out's label: `typicality`
    (rows, their labels) -> z-scores, as core_model/reference.py measures them; a cell below
    FAST_TYPICAL_BELOW goes to the language model. Why: a linear read-out can be sure of a type the
    candidates lack (zheng2017's CD34+ cells among kang2018's labels), where the language model
    was not; such cells are often atypical of the label given (0.31 of those cells below -3,
    against at most 0.005 of each set's test cells, benchmarks/results/atypical_cells.md; with
    this check 10 of the 70 skip the language model, 13 without it, benchmarks/EXPERIMENTS.md).
    NaN (no reference cells for the label) does not count against a cell."""
    ok = sure(log_probs)
    if typicality is not None and ok.any():
        rows = np.flatnonzero(ok)
        z = typicality(rows, [labels[i] for i in log_probs[rows].argmax(1)])
        ok[rows[np.asarray(z, dtype=float) < FAST_TYPICAL_BELOW]] = False
    return ok
