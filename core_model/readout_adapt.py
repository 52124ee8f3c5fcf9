"""The linear read-out re-centred for a file that lacks some of the genes it was fitted on.

Why: the read-out (core_model/readout.py) is a linear map of log1p(CP10k) over the vocabulary.
A file holding a share of those genes (cut to its most variable genes, a targeted panel) loses
the absent genes' terms and is normalised over fewer genes, so every label's logit moves by an
amount of its own: on the valid splits cut to 2,000 HVGs the read-out alone fell from 0.835 to
0.42 macro-F1 on zheng2017 (benchmarks/EXPERIMENTS.md), and the coverage weight curve then had to
hand most of the answer to the language model. Much of that loss is a shift, not lost signal:
the checkpoint's reference cells (training cells kept per label, core_model/reference.py) show
it, read once whole and once through the file's genes.

So each label set's logits get a scale and a per-label offset, `a * (w . x + b) + c`, fitted so
that the set's reference cells read through the file's genes give the label probabilities the
full read-out gives them whole (cross-entropy, softmax over the set's labels, as the read-out was
trained). One number per label and one per set, fitted on ~40 cells a label, so it cannot learn
the file; a set whose reference cells lose no counts on the file's genes is left as fitted, so a
whole training file answers exactly as before.

On in the shipped checkpoint since 2026-12-06 (readout.json's `adapt_to_genes`), beside the
falling weight curve it had before (`readout_weight_curve.py --from-report REPORT --adapt --write
DIR`). Measured against the checkpoint without it (benchmarks/EXPERIMENTS.md, 2026-12-06, 21:52):
cells of one study asked with another study's labels (benchmarks/cross_study.py, 38 pairs) +0.009
[+0.004, +0.014] mean accuracy; test copies of the shared files cut to 10%, 30% and 2,000 HVGs
+0.017, +0.006 and +0.011 mean macro-F1; whole files unchanged. With a curve refitted for it
(weight 1 at every coverage, `readout_weight_curve.py --adapt --write DIR`) it gained more on both,
but the demo's question (pbmc68k_reduced, 5% of the genes, the ten `bulk_labels` names) lost 0.031,
CD14+ monocytes answered 'Dendritic', so that curve stays an option.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .cell_encoder import log_normalize_csr
from .readout import Readout, SetShift
from .reference import Reference

# The read-out.json entry that turns it on: the coverage weight curve stored beside it was fitted
# with it (benchmarks/readout_weight_curve.py --adapt), so the two go together.
ADAPT_KEY = "adapt_to_genes"
# A weak pull toward the read-out as fitted (a = 1, c = 0) keeps the fit defined for a label
# whose cells tell it little; small beside the cross-entropy of ~40 cells a label.
RIDGE = 1e-3
# An optional ceiling on the scale a (a readout.json entry; absent: no ceiling, the shipped fit).
# Why: the fit only sees the set's own cell types, and a scale above 1 makes every answer on the
# file surer, cells of types the set lacks too (bastidasponce2019's ductal cells and progenitors
# among xin2016's islet labels: below confidence 0.5 0.649 -> 0.243 with the re-centring, 0.284
# held to 1; benchmarks/EXPERIMENTS.md, 2026-12-07). Not on by default: on test copies cut to 10%,
# 30% and 2,000 HVGs, where the sharper scale restores the spread the cut took, a ceiling of 1 cost
# -0.014, -0.008 and -0.011 mean macro-F1 (benchmarks/results/compare_checkpoints_test_scale_ceiling_*.md).
MAX_SCALE_KEY = "adapt_max_scale"


def adapted(readout: Readout, reference: Reference, present: np.ndarray,
            label_sets: dict[str, Sequence[str]], target_sum: float) -> Readout:
    """`readout` with each label set's logits re-centred for a file holding the `present`
    vocabulary genes (bool mask), fitted on `reference`'s cells of that set; the scale held to
    the read-out's MAX_SCALE_KEY where it has one."""
    max_scale = readout.info.get(MAX_SCALE_KEY)
    weight, bias = readout.weight.float().cpu(), readout.bias.float().cpu()
    mask = torch.from_numpy(present)
    shifts = {}
    for name, labels in label_sets.items():
        labels = [l for l in labels if l in readout.column]
        rows = [np.arange(reference.offsets[k], reference.offsets[k + 1])
                for k, key in enumerate(reference.keys) if key[0] == name]
        if not labels or not rows or name not in readout.mean_cells:
            continue
        cells = reference.cells[np.concatenate(rows)]
        kept = sp.csr_matrix(cells.multiply(present.astype(np.float32)[None, :]))
        coverage = readout.coverage(mask, name)
        if kept.sum() >= cells.sum():  # nothing lost: the set reads this file as it was fitted
            shifts[name] = SetShift(frozenset(labels), coverage, 1.0, {})
            continue
        cols = torch.tensor([readout.column[l] for l in labels])
        scale, shift = _fit(_logits(cells, weight[cols], bias[cols], target_sum),
                            _logits(kept, weight[cols], bias[cols], target_sum), max_scale)
        shifts[name] = SetShift(frozenset(labels), coverage, scale, dict(zip(labels, shift)))
    return dataclasses.replace(readout, set_shifts=shifts)


def _logits(counts: sp.csr_matrix, weight: torch.Tensor, bias: torch.Tensor, target_sum: float) -> torch.Tensor:
    """The read-out's logits (cells, labels) for count rows, normalised as the model normalises."""
    expr = log_normalize_csr(counts, target_sum).astype(np.float64)
    return torch.from_numpy(np.asarray(expr @ weight.double().numpy().T)) + bias.double()


def _fit(whole: torch.Tensor, through: torch.Tensor, max_scale: float | None = None) -> tuple[float, list[float]]:
    """Scale a and offsets c making softmax(a * through + c) match softmax(whole), row by row.
    Deterministic (L-BFGS from the identity). With `max_scale`, a fitted above it is held there
    and the offsets refitted: the loss is convex in (a, c), so that is the best fit under the cap."""
    scale, shift = _fit_once(whole, through, fixed_scale=None)
    if max_scale is not None and scale > max_scale:
        scale, shift = _fit_once(whole, through, fixed_scale=float(max_scale))
    return scale, shift


def _fit_once(whole: torch.Tensor, through: torch.Tensor, fixed_scale: float | None) -> tuple[float, list[float]]:
    """One L-BFGS fit of (a, c) from (1, 0), or of c alone with a held at `fixed_scale`."""
    target = torch.softmax(whole, 1)
    scale = torch.full((1,), 1.0 if fixed_scale is None else fixed_scale, dtype=whole.dtype,
                       requires_grad=fixed_scale is None)
    shift = torch.zeros(whole.shape[1], dtype=whole.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([scale, shift] if fixed_scale is None else [shift], max_iter=200, tolerance_grad=1e-9,
                            line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        opt.zero_grad()
        logp = torch.log_softmax(through * scale + shift, 1)
        loss = -(target * logp).sum(1).mean() + RIDGE * (((scale - 1) ** 2).sum() + (shift ** 2).sum())
        loss.backward()
        return loss

    opt.step(loss_fn)
    return float(scale.detach()), [float(c) for c in shift.detach()]
