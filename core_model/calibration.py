"""Label-prior correction of candidate scores over a batch of cells (opt-in).

The LM prefers some label strings whatever the cell (a prior over answers learned from text and
from training-set frequencies). Subtracting each candidate's mean log-likelihood over the cells
answered together removes that shared preference and keeps what distinguishes the cells.

Measured with the default checkpoint: on the valid splits, every cell asked with ONE fixed
instruction listing the labels, accuracy rose from 0.746 to 0.825 (zheng2017) and from 0.662 to
0.743 (bastidasponce2019). In `instructcell evaluate`, where each cell gets its own phrasing and
option order (so the prior differs from cell to cell), it changed little on the test splits:
0.746 -> 0.748 (zheng2017) and 0.554 -> 0.514 (bastidasponce2019). Hence opt-in.

It is transductive: a cell's answer then depends on the other cells of the call, and a call whose
cells are mostly of one type pushes them towards the others. Use it on whole samples of mixed
cells, not on a handful of cells of one kind.
"""

from __future__ import annotations

import numpy as np

MIN_CELLS = 20  # below this the per-candidate mean is too noisy to correct with


def label_prior_correction(scores: np.ndarray) -> np.ndarray:
    """Scores (cells x candidates) minus each candidate's mean over the cells."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be cells x candidates, got shape {scores.shape}")
    if scores.shape[0] < MIN_CELLS:
        raise ValueError(f"label-prior correction needs at least {MIN_CELLS} cells answered together, "
                         f"got {scores.shape[0]}; annotate without calibrate=True")
    return scores - scores.mean(0, keepdims=True)
