"""Label-prior correction of candidate scores over a batch of cells (opt-in).

The LM prefers some label strings whatever the cell (a prior over answers learned from text and
from training-set frequencies). Subtracting each candidate's mean log-likelihood over the cells
answered together removes that shared preference and keeps what distinguishes the cells. On the
valid splits this raised accuracy (zheng2017 0.746 -> 0.825, bastidasponce2019 0.662 -> 0.743).

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
