"""A linear read-out of the genes, beside the language model: a second expert for closed label sets.

Why: the language model reads a cell through eight query tokens, and on the finely split PBMC
sets that bottleneck loses what a linear model on the genes keeps (on zheng2017's valid cells a
linear read-out of the encoder's queries reaches macro-F1 0.764, logistic regression on the same
input 0.836; benchmarks/EXPERIMENTS.md). Training a linear path into the soft tokens did not carry
through the language model, so the two are combined where the answer is made instead: for labels
the checkpoint learned, each label's score is the language model's log-likelihood plus `weight`
times the read-out's log-probability among the same labels (a product of experts, renormalised
over the candidates). Strings the checkpoint never learned have no read-out column and are scored
by the language model alone. The weight may follow a curve over the file's gene coverage, fitted
by label log loss on valid (core_model/readout_weight.py): a file lacking most of the genes the
read-out was fitted on leans on the language model instead; and a second curve over each cell's
detected genes caps it, so a shallow cell does too.

The read-out is one weight matrix over the model's gene vocabulary and every learned label,
trained on the train splits with each cell's softmax restricted to its own dataset's labels (the
same population is named differently in several sets; those columns are never played against
each other). It reads the model's own input, log1p(CP10k) over the vocabulary. A file holding few
of the vocabulary's genes is normalized over those, which no training cell shows the plain fit;
`train-readout --panel-copies 1` also fits on a copy of every cell seen through a random gene panel
(readout_train.py), better on such files and not on full panels (benchmarks/EXPERIMENTS.md,
"Read-out variants"), so it is not the default. Files:
readout.safetensors + readout.json beside the model's files; optional (a checkpoint without them
answers with the language model alone). They also keep each label set's mean training cell, the
reference gene saliency is measured against (interpret/api.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from .errors import CheckpointError
from .io import load_tensors_with_meta, save_tensors_with_meta, vocab_sha256

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE, META_FILE = "readout.safetensors", "readout.json"
# A plain product of experts: the weight of a read-out fitted without a curve
# (benchmarks/readout_weight_curve.py fits one).
DEFAULT_WEIGHT = 1.0


class SetDepthCurve(NamedTuple):
    """One label set's depth curve: (detected vocabulary genes, weight) points, genes ascending."""

    labels: frozenset[str]
    points: list[tuple[float, float]]


def depth_caps(points: Sequence[tuple[float, float]], genes: np.ndarray) -> np.ndarray:
    """The curve's weights at these numbers of detected genes, interpolated in log genes and held
    flat beyond its ends (inf everywhere for no points)."""
    genes = np.maximum(np.asarray(genes, dtype=np.float64), 1.0)
    if not points:
        return np.full(genes.shape, np.inf)
    xs, ws = zip(*points)
    return np.interp(np.log(genes), np.log(xs), ws)


class SetShift(NamedTuple):
    """One label set's logits re-centred for a file's genes (core_model/readout_adapt.py):
    `scale * logit + shift[label]` over its labels; `coverage` ranks the sets sharing labels."""

    labels: frozenset[str]
    coverage: float
    scale: float
    shift: dict[str, float]


@dataclass
class Readout:
    """Weights (labels x genes) and bias over the checkpoint's learned labels."""

    labels: list[str]
    weight: torch.Tensor
    bias: torch.Tensor
    answer_weight: float = DEFAULT_WEIGHT
    info: dict[str, Any] = field(default_factory=dict)
    # Each label set's mean training cell (log1p(CP10k), genes,), from the cells the read-out was
    # fitted on: the reference `explain` measures attributions against by default
    # (interpret/api.py). Empty in read-outs written before it was kept.
    mean_cells: dict[str, torch.Tensor] = field(default_factory=dict)
    # (gene coverage, weight) points, coverage ascending: the weight a label set gets on a file
    # whose genes carry that share of the set's mean training cell, interpolated linearly and
    # held flat beyond the ends. Empty: `answer_weight` everywhere (core_model/readout_weight.py).
    weight_curve: list[tuple[float, float]] = field(default_factory=list)
    # Set by `for_genes` for one file: each label set's labels and its weight there.
    set_weights: list[tuple[frozenset[str], float]] = field(default_factory=list)
    # (detected vocabulary genes, weight) points, genes ascending: the most a cell with that many
    # non-zero genes lets the read-out weigh, interpolated in log genes and held flat beyond the
    # ends. A shallow cell's few genes carry large normalized values, so the linear read-out grows
    # sure of little evidence where the language model does not (fitted by label log loss on thinned
    # valid cells, benchmarks/readout_depth_curve.py). Empty: no cap.
    depth_curve: list[tuple[float, float]] = field(default_factory=list)
    # The same, fitted on one label set's cells (shrunk toward the pooled curve where the set has
    # few of them): sets read shallow cells differently (on valid, zheng2017's read-out kept its full
    # weight at 18 genes a cell, pbmc3k's was worth 0.05 up to 63). Used for scores over labels that
    # one such set alone holds; `depth_curve` elsewhere.
    set_depth_curves: dict[str, SetDepthCurve] = field(default_factory=dict)
    # Set by core_model/readout_adapt.py for one file: each label set's logits re-centred for the
    # genes the file holds. Empty: the logits as fitted.
    set_shifts: dict[str, SetShift] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.column = {label: i for i, label in enumerate(self.labels)}

    def weight_at(self, coverage: float) -> float:
        """The weight on the curve at `coverage` (`answer_weight` without a curve)."""
        if not self.weight_curve:
            return self.answer_weight
        xs, ws = zip(*self.weight_curve)
        return float(np.interp(coverage, xs, ws))

    def depth_curve_for(self, labels: Sequence[str] | None) -> list[tuple[float, float]]:
        """The depth curve of scores over `labels`: the curve of the one label set holding them all,
        else the pooled one (no labels; labels of no fitted set; labels several sets spell alike,
        where nothing tells which set a cell resembles)."""
        if labels is not None:
            held = [c.points for c in self.set_depth_curves.values() if set(labels) <= c.labels]
            if len(held) == 1:
                return held[0]
        return self.depth_curve

    def depth_caps(self, genes: np.ndarray, labels: Sequence[str] | None = None) -> np.ndarray:
        """The most the read-out may weigh, in scores over `labels`, in cells with these numbers of
        non-zero vocabulary genes (inf everywhere without a depth curve)."""
        return depth_caps(self.depth_curve_for(labels), genes)

    def cell_weights(self, expr: torch.Tensor, weight: float, labels: Sequence[str] | None = None) -> torch.Tensor:
        """(B, 1) each cell's weight in scores over `labels`: `weight`, capped by the depth curve at
        the cell's number of non-zero genes in `expr` (a constant to gradients: the count is a step)."""
        caps = self.depth_caps((expr > 0).sum(1).cpu().numpy(), labels)
        return torch.from_numpy(np.minimum(caps, float(weight))).unsqueeze(1).to(expr.device)

    def coverage(self, present: torch.Tensor, name: str) -> float:
        """The share of label set `name`'s mean training cell (linear scale) on the `present`
        vocabulary genes (bool mask): 1 for a file holding every gene the set's files held."""
        linear = torch.expm1(self.mean_cells[name].double().cpu())
        return float(linear[present.cpu()].sum() / linear.sum().clamp(min=1e-12))

    def for_genes(self, present: torch.Tensor, label_sets: dict[str, Sequence[str]]) -> Readout:
        """This read-out as it answers a file holding the `present` vocabulary genes: each label
        set weighted as the curve says at its coverage (itself when it has no curve)."""
        if not self.weight_curve:
            return self
        weights = [(frozenset(labels), self.weight_at(self.coverage(present, name)))
                   for name, labels in label_sets.items() if name in self.mean_cells]
        return dataclasses.replace(self, set_weights=weights)

    def weight_for(self, labels: Sequence[str]) -> float:
        """The weight of scores over `labels`: the largest of the file's weights of the label sets
        holding them all (`answer_weight` outside `for_genes`' view, or for no such set). Several
        sets spell some labels alike (pancreas types); the one whose genes the file holds best
        is the one it most resembles, and a whole file of a training set keeps its full weight."""
        held = [w for labels_of, w in self.set_weights if set(labels) <= labels_of]
        return max(held) if held else self.answer_weight

    def covers(self, labels: Sequence[str]) -> bool:
        """Whether every label has a column (was learned), so the read-out can score the set."""
        return len(labels) > 0 and all(label in self.column for label in labels)

    def log_probs(self, expr: torch.Tensor, labels: Sequence[str]) -> torch.Tensor:
        """(B, len(labels)) log-probability of each label among `labels`, for log-normalized `expr`."""
        idx = torch.tensor([self.column[label] for label in labels], device=expr.device)
        logits = expr.float() @ self.weight.to(expr.device)[idx].T + self.bias.to(expr.device)[idx]
        shift = self.shift_for(labels)
        if shift is not None and (shift.scale != 1.0 or shift.shift):
            offsets = torch.tensor([shift.shift.get(label, 0.0) for label in labels], device=expr.device)
            logits = logits * shift.scale + offsets
        return torch.log_softmax(logits, 1)

    def shift_for(self, labels: Sequence[str]) -> SetShift | None:
        """The re-centring of scores over `labels`: that of the label set holding them all whose
        genes the file holds best (several sets spell some labels alike; a whole training file's
        own set, re-centred by nothing, wins), or None."""
        held = [s for s in self.set_shifts.values() if set(labels) <= s.labels]
        return max(held, key=lambda s: s.coverage) if held else None

    def mean_cell(self, sets: Sequence[str]) -> torch.Tensor | None:
        """The mean training cell of the named label sets, each set weighted equally (None when
        one of them has none)."""
        if not sets or any(name not in self.mean_cells for name in sets):
            return None
        return torch.stack([self.mean_cells[name].float() for name in sets]).mean(0)

    def permute_genes(self, order: Sequence[int]) -> None:
        """Reorder the gene columns (the checkpoint's vocabulary was reordered)."""
        self.weight = self.weight[:, list(order)].contiguous()
        self.mean_cells = {k: v[list(order)].contiguous() for k, v in self.mean_cells.items()}

    def to(self, device: str | torch.device) -> Readout:
        self.weight, self.bias = self.weight.to(device), self.bias.to(device)
        self.mean_cells = {k: v.to(device) for k, v in self.mean_cells.items()}
        return self


def one_set(labels: Sequence[str], label_sets: Sequence[Sequence[str]]) -> bool:
    """Whether all `labels` come from one learned label set (the read-out's softmax was trained
    within such sets only, so only there are its columns comparable)."""
    return any(set(labels) <= set(s) for s in label_sets)


def joins(readout: Readout | None, labels: Sequence[str] | None) -> bool:
    """Whether `readout` takes part in scoring `labels` (it is on and learned every one of them)."""
    return readout is not None and readout.answer_weight != 0 and labels is not None and readout.covers(labels)


def answer_scores(model, ctx, expr: torch.Tensor, labels: Sequence[str], decisive: bool,
                  readout: Readout | None, label_sets: Sequence[Sequence[str]]) -> torch.Tensor:
    """(B, labels) scores a closed answer is chosen by: the language model's log-likelihood of each
    label (decisive tokens only if `decisive`) combined with the read-out (`add_readout`). The one
    place `annotate`, `evaluate` and the free answers chosen with the read-out score labels."""
    return add_readout(model.score_candidates(ctx, expr, labels, decisive=decisive), readout, expr, labels,
                       label_sets)


def add_readout(scores: torch.Tensor, readout: Readout | None, expr: torch.Tensor, labels: Sequence[str],
                label_sets: Sequence[Sequence[str]]) -> torch.Tensor:
    """Language-model scores (B, labels) combined with the read-out (a product of experts).

    Labels from one learned set: each gets `answer_weight` times the read-out's log-probability
    among `labels`. Labels spanning several sets (free answers within everything the checkpoint
    learned for a tissue; candidates routed through the Cell Ontology): the language model's best
    label picks the set, as its free answer would, and the read-out then re-ranks within that set's
    labels; the other sets' labels are ruled out (score -inf), so the answer keeps the naming the
    language model chose. Unchanged without a read-out or with a label it never learned.
    """
    if not joins(readout, labels):
        return scores
    if one_set(labels, label_sets):
        weights = readout.cell_weights(expr, readout.weight_for(labels), labels).to(scores.dtype)
        return scores + weights * readout.log_probs(expr, labels).to(scores.dtype)
    out = torch.full_like(scores, float("-inf"))
    best = scores.argmax(1).tolist()
    for b in sorted(set(best)):
        rows = torch.tensor([i for i, j in enumerate(best) if j == b], device=scores.device)
        family = set().union(*(s for s in label_sets if labels[b] in s))
        cols = torch.tensor([j for j, l in enumerate(labels) if l in family], device=scores.device)
        within = [labels[j] for j in cols.tolist()]
        r = readout.log_probs(expr[rows], within).to(scores.dtype)
        weights = readout.cell_weights(expr[rows], readout.weight_for([labels[b]]), within).to(scores.dtype)
        out[rows.unsqueeze(1), cols] = scores[rows.unsqueeze(1), cols] + weights * r
    return out


def readout_name(readout: Readout | None, labels: Sequence[str] | None) -> str:
    """Provenance: what besides the language model chose the answer."""
    if not joins(readout, labels):
        return "none"
    shallow = ", less for shallow cells" if readout.depth_curve or readout.set_depth_curves else ""
    shift = readout.shift_for(labels) if labels else None
    if shift is not None and shift.shift:  # core_model/readout_adapt.py
        shallow += ", re-centred for the file's genes"
    if readout.set_weights and not any(set(labels) <= held for held, _ in readout.set_weights):
        # labels across sets: each set re-ranks with its own weight (`add_readout`)
        weights = sorted({w for held, w in readout.set_weights if held & set(labels)})
        if len(weights) > 1:
            return (f"linear gene read-out, weight {weights[0]:.3g} to {weights[-1]:.3g} by label set "
                    f"(gene coverage){shallow}")
    return f"linear gene read-out, weight {readout.weight_for(labels):.3g}{shallow}"


# ---------------------------------------------------------------- training
Block = tuple[np.ndarray, np.ndarray, Sequence[str]]  # expression, labels per cell, the block's label set


def fit_readout(blocks: Sequence[Block], n_genes: int, *, l2: float = 1.0, max_iter: int = 300,
                prior: Mapping[str, tuple[torch.Tensor, float]] | None = None,
                ) -> tuple[list[str], torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Fit the read-out by L-BFGS on every block at once.

    Each block is (log-normalized expression (cells, n_genes), labels per cell, the block's label
    set); a cell's softmax runs over its own block's label set only. The loss is the mean
    cross-entropy plus l2 / (2 n_cells) times the squared weights, the objective of scikit-learn's
    LogisticRegression(C=1/l2) (the setting the valid-split probe used). Starting from zeros, the
    fit is deterministic.

    `prior` (label -> (row, bias) of an earlier fit): those labels' weights are penalised by their
    distance from that row instead of from zero, and start there. Why: fine-tuning on a user's set
    that spells a learned label alike refits the one row every set shares; centred on zero, the
    row forgets the genes the user's file lacks (weight 0 where the input is always 0) and what the
    earlier sets' cells taught it, and those sets answer with it afterwards.
    """
    labels: list[str] = []
    for _, _, label_set in blocks:
        labels.extend(l for l in label_set if l not in labels)
    column = {l: i for i, l in enumerate(labels)}
    xs, ys, masks = [], [], []
    for expr, truth, label_set in blocks:
        unknown = sorted(set(map(str, truth)) - set(label_set))
        if unknown:
            raise ValueError(f"cells labelled {unknown[:3]} outside their block's label set")
        mask = torch.full((len(labels),), float("-inf"))
        mask[[column[l] for l in label_set]] = 0.0
        xs.append(torch.as_tensor(expr, dtype=torch.float32))
        ys.append(torch.tensor([column[str(t)] for t in truth]))
        masks.append(mask.expand(len(truth), -1))
    X, y, M = torch.cat(xs), torch.cat(ys), torch.cat(masks)
    if X.shape[1] != n_genes:
        raise ValueError(f"expression has {X.shape[1]} genes, the vocabulary {n_genes}")
    n = X.shape[0]
    W0, b0 = torch.zeros(len(labels), n_genes), torch.zeros(len(labels))
    centred = [l for l in labels if prior and l in prior]
    for label in centred:
        row, bias = prior[label]
        W0[column[label]], b0[column[label]] = row.float(), float(bias)
    W, b = W0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X @ W.T + b + M, y) + l2 / (2 * n) * (W - W0).pow(2).sum()
        loss.backward()
        return loss

    final = float(opt.step(closure).detach())
    with torch.no_grad():
        train_acc = float(((X @ W.T + b + M).argmax(1) == y).float().mean())
    info = {"l2": l2, "max_iter": max_iter, "n_cells": int(n), "final_loss": final, "train_accuracy": train_acc}
    if centred:
        info["centred_on_prior"] = centred
    return labels, W.detach(), b.detach(), info


# ---------------------------------------------------------------- files
def has_readout(path: str | os.PathLike | None) -> bool:
    return path is not None and all((Path(path) / f).is_file() for f in (WEIGHTS_FILE, META_FILE))


def save_readout(root: str | os.PathLike, readout: Readout, vocab: Sequence[str]) -> Path:
    """Write readout.safetensors (float16) and readout.json into a checkpoint directory, each
    atomically; the JSON records the weights' hash and the vocabulary's, so a mismatched pair
    is refused on load."""
    sets = list(readout.mean_cells)
    tensors = {"weight": readout.weight.half(), "bias": readout.bias.float()}
    if sets:  # float16 keeps log1p values (under 12) to 3 significant digits
        tensors["mean_cells"] = torch.stack([readout.mean_cells[n].cpu() for n in sets]).half()
    meta = {"format_version": FORMAT_VERSION, "labels": readout.labels, "answer_weight": readout.answer_weight,
            "weight_curve": [list(p) for p in readout.weight_curve],
            "depth_curve": [list(p) for p in readout.depth_curve], "mean_cell_sets": sets,
            "set_depth_curves": {name: {"labels": sorted(c.labels), "points": [list(p) for p in c.points]}
                                 for name, c in readout.set_depth_curves.items()},
            "vocab_sha256": vocab_sha256(vocab), **readout.info}
    save_tensors_with_meta(root, WEIGHTS_FILE, META_FILE, tensors, meta)
    log.info("wrote %s and %s in %s", WEIGHTS_FILE, META_FILE, root)
    return Path(root) / META_FILE


def load_readout(root: str | os.PathLike, vocab: Sequence[str]) -> Readout | None:
    """The read-out stored in a checkpoint directory, or None when it has none."""
    root = Path(root)
    if not has_readout(root):
        return None
    state, meta = load_tensors_with_meta(root, WEIGHTS_FILE, META_FILE, vocab, FORMAT_VERSION,
                                         "instructcell train-readout --checkpoint DIR")
    weight, bias = state["weight"].float(), state["bias"].float()
    labels = list(meta.pop("labels"))
    if weight.shape != (len(labels), len(vocab)) or bias.shape != (len(labels),):
        raise CheckpointError(f"{root}/{WEIGHTS_FILE}: shape {tuple(weight.shape)} does not fit "
                              f"{len(labels)} labels x {len(vocab)} genes")
    sets = list(meta.pop("mean_cell_sets", []))
    means = state.get("mean_cells", torch.zeros(0, len(vocab))).float()
    if means.shape != (len(sets), len(vocab)):
        raise CheckpointError(f"{root}/{WEIGHTS_FILE}: mean cells of shape {tuple(means.shape)} do not fit "
                              f"{len(sets)} label sets x {len(vocab)} genes")
    curve = [(float(c), float(w)) for c, w in meta.pop("weight_curve", [])]
    if curve and (not sets or [c for c, _ in curve] != sorted({c for c, _ in curve})):
        raise CheckpointError(f"{root}/{META_FILE}: a weight curve needs mean cells and strictly ascending coverages")
    depth = checked_depth_curve(meta.pop("depth_curve", []), f"{root}/{META_FILE}")
    by_set = checked_set_curves(meta.pop("set_depth_curves", {}), f"{root}/{META_FILE}")
    bookkeeping = ("format_version", "answer_weight", "vocab_sha256", "weights_sha256")
    info = {k: v for k, v in meta.items() if k not in bookkeeping}
    return Readout(labels, weight, bias, float(meta.get("answer_weight", DEFAULT_WEIGHT)), info,
                   dict(zip(sets, means)), curve, depth_curve=depth, set_depth_curves=by_set)


def checked_depth_curve(points: Sequence[Sequence[float]], where: str) -> list[tuple[float, float]]:
    """Stored (genes, weight) points as a curve, refused unless genes ascend strictly from 1 and
    weights are non-negative."""
    depth = [(float(g), float(w)) for g, w in points]
    if depth and ([g for g, _ in depth] != sorted({g for g, _ in depth}) or depth[0][0] < 1
                  or min(w for _, w in depth) < 0):
        raise CheckpointError(f"{where}: a depth curve needs strictly ascending gene counts from 1 "
                              "and weights of at least 0")
    return depth


def checked_set_curves(stored: Any, where: str) -> dict[str, SetDepthCurve]:
    """Stored per-set depth curves ({name: {"labels": [...], "points": [[genes, weight], ...]}})."""
    if not isinstance(stored, dict) or not all(isinstance(e, dict) and {"labels", "points"} <= set(e)
                                               for e in stored.values()):
        raise CheckpointError(f"{where}: per-set depth curves need, per label set, its labels and points")
    return {name: SetDepthCurve(frozenset(e["labels"]), checked_depth_curve(e["points"], f"{where} ({name})"))
            for name, e in stored.items()}
