"""Captum attributions on the model's expression input, through its own candidate scoring.

The attributed function is the one the model answers with: the prompt prefix (instruction with
its options) is read, the cell's soft tokens are appended, every candidate label is scored by its
log-likelihood (``CellLanguageModel.score_candidates``), and a softmax over the candidates gives
each label's log-probability. The input is the log1p(CP10k) vector over the model's vocabulary,
the exact tensor the cell encoder reads, so attributions are in the space the model sees.

Methods
-------
``saliency``
    gradient x (input - reference), the first-order change of the log-probability from the
    reference cell to this one. With the default all-zero reference this is gradient x input
    (Captum ``InputXGradient``): zero for genes the cell does not express, signed, in
    log-probability units per unit of log-expression times that expression.
``gradient``
    the plain gradient (Captum ``Saliency`` without absolute value): sensitivity, also for
    genes the cell does not express. It has no reference.
``ig``
    Integrated Gradients from the reference (default all-zero: no expression), with Captum's
    completeness delta per cell: sum(attributions) - (f(x) - f(reference)). The path integral is
    taken piecewise and adaptively (see :func:`_integrated_gradients` for why).

Reference
---------
Zero asks "why this label rather than an empty cell". Genes every cell expresses highly
(ribosomal, mitochondrial) then carry large attributions whenever the model leans on them at
all. A reference such as the mean cell of a sample asks "why this label rather than an average
cell": a gene at its average level contributes nothing. Genes below the average get attribution
too, but rankings count only genes the cell expresses above the reference
(`Attributions.above_reference`; measured in `benchmarks/results/saliency_variants.md`).
This function takes any reference vector; ``explain`` defaults to the checkpoint's mean
training cell of the scored label set (interpret/api.py).

Contrast
--------
With `versus`, each cell's explained quantity is log p(target) - log p(versus): why this label
rather than that one (a named label, or the cell's runner-up). The softmax's normaliser cancels,
so the other candidates drop out: a gene that raises both labels alike scores nothing, where the
plain log-probability credits it for pushing down every other candidate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp
import torch
from captum.attr import IntegratedGradients, Saliency

from instructcell_agent.core_model.candidate_route import CandidateRoute
from instructcell_agent.core_model.corpus import dense_rows
from instructcell_agent.core_model.model import CellLanguageModel
from instructcell_agent.core_model.readout import Readout

log = logging.getLogger(__name__)

METHODS = ("saliency", "gradient", "ig")
# `versus` value asking for each cell's most probable other candidate
RUNNER_UP = "runner-up"


@dataclass
class Attributions:
    """Per-cell attributions over the vocabulary.

    Attributes
    ----------
    values
        cells x genes float32 attributions for each cell's target label.
    inputs
        cells x genes float32 log1p(CP10k): the model input that was attributed.
    target
        Per cell, the index (into `explained`) of the label explained.
    probabilities
        cells x `explained` probabilities of the unperturbed input: the candidates' softmax, then
        each broader type's sum over the candidates under it.
    candidates
        The scored labels, in scoring order.
    method
        One of :data:`METHODS`.
    delta
        Integrated Gradients' completeness delta per cell (None for other methods).
    n_steps
        Integration steps (IG only).
    steps_used
        IG: integration points (forward + backward passes) spent per cell (its batch's count).
    reference
        The reference input (genes,) of ``saliency`` and ``ig``; None means all zeros.
    prefixes, rows
        The distinct prompt prefixes and each cell's index into them (to re-run the model on
        perturbed inputs, e.g. the deletion test).
    route, decisive, readout
        How the candidates were scored (re-scoring must do the same).
    broader
        (name, candidate indices) of each broader type explained beside the candidates (`resolve_at`'s
        answers, core_model/hierarchy.py): its log-probability is the log of the summed
        probabilities of the candidates under it.
    versus
        Per cell, the index (into `explained`) of the label the target was contrasted with: the
        values attribute log p(target) - log p(versus). None: the target's log-probability alone.
    """

    values: np.ndarray
    inputs: np.ndarray
    target: np.ndarray
    probabilities: np.ndarray
    candidates: list[str]
    method: str
    delta: np.ndarray | None = None
    n_steps: int | None = None
    prefixes: list[str] = field(default_factory=list)
    rows: np.ndarray | None = None
    steps_used: np.ndarray | None = None
    reference: np.ndarray | None = None
    route: CandidateRoute | None = None
    decisive: bool = False
    readout: Readout | None = None
    broader: tuple[tuple[str, tuple[int, ...]], ...] = ()
    versus: np.ndarray | None = None

    @property
    def explained(self) -> list[str]:
        """The candidates, then the broader types: what `target` and `probabilities` index."""
        return [*self.candidates, *(name for name, _ in self.broader)]

    def subset(self, keep: np.ndarray) -> Attributions:
        """The same attributions for the cells `keep` (indices or a boolean mask) only."""
        per_cell = ("values", "inputs", "target", "probabilities", "delta", "rows", "steps_used", "versus")
        return replace(self, **{name: None if getattr(self, name) is None else getattr(self, name)[keep]
                                for name in per_cell})

    @property
    def predicted(self) -> np.ndarray:
        """Index of the most probable candidate per cell."""
        return self.probabilities[:, :len(self.candidates)].argmax(1)

    @property
    def above_reference(self) -> np.ndarray:
        """cells x genes input minus the reference (the input itself for the zero reference).

        Rankings count a gene in a cell where this is > 0: the evidence of what the cell expresses
        beyond the reference. Against the mean cell, a gene below the mean also gets attribution
        (its absence supports the label: GCG in a beta cell), but a marker list names genes the
        label's cells express, so those are left out there. Against zeros it is "expressed".
        """
        return self.inputs if self.reference is None else self.inputs - self.reference


class LabelLogProb:
    """Forward function for Captum: log-probability of every candidate, (B, n_candidates).

    A fresh prompt context is built for every call with that call's batch size, because a
    context is consumed by scoring and Integrated Gradients calls it with n_steps x B rows.
    `rows` (an extra forward argument, expanded by Captum alongside the inputs) says which of
    the distinct prompt prefixes each row uses.
    """

    def __init__(self, model: CellLanguageModel, prefixes: Sequence[str], candidates: Sequence[str],
                 route: CandidateRoute | None = None, decisive: bool = False, readout: Readout | None = None,
                 broader: Sequence[Sequence[int]] = ()) -> None:
        self.model = model
        # broader types: columns after the candidates, each the log of the summed probability of
        # the candidates under it (what `resolve_at` sums)
        self.broader = [torch.tensor(list(g), device=model.device) for g in broader]
        self.decisive = decisive  # score decisive tokens only, as `annotate` does for learned labels
        self.readout = readout  # the linear read-out joins the LM's scores, as in `annotate` (None: LM alone)
        self.prefixes = list(prefixes)
        self.candidates = [str(c) for c in candidates]
        # Ontology route: the learned labels are scored and their probability summed per candidate
        # (core_model/candidate_route.py), so the explained quantity is what `annotate` answers with.
        self.pooled = route is not None and route.kind == "ontology"
        self.scored = list(route.learned) if self.pooled else self.candidates
        if self.pooled:  # index tensors built once, on the model's device
            owner = torch.tensor(route.owner, device=model.device)
            self.groups = [torch.nonzero(owner == c).flatten() for c in range(len(self.candidates))]

    def __call__(self, expr: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx = self.model.start(self.prefixes, rows)
        scores = self.model.score_candidates(ctx, expr, self.scored, decisive=self.decisive)
        if self.readout is not None:
            weight = self.readout.cell_weights(expr, self.readout.weight_for(self.scored), self.scored).to(scores.dtype)
            scores = scores + weight * self.readout.log_probs(expr, self.scored).to(scores.dtype)
        logp = torch.log_softmax(scores, 1)
        if self.pooled:
            logp = torch.stack([torch.logsumexp(logp[:, g], 1) for g in self.groups], 1)
        if not self.broader:
            return logp
        return torch.cat([logp, torch.stack([torch.logsumexp(logp[:, g], 1) for g in self.broader], 1)], 1)


class _Contrast:
    """Captum forward for a contrast: every column minus each row's `versus` column, so the target
    column is log p(target) - log p(versus). `versus` is a forward argument (not state) because
    Integrated Gradients expands the arguments along its path points with the inputs."""

    def __init__(self, forward: LabelLogProb) -> None:
        self.forward = forward

    def __call__(self, expr: torch.Tensor, rows: torch.Tensor, versus: torch.Tensor) -> torch.Tensor:
        logp = self.forward(expr, rows)
        return logp - logp.gather(1, versus[:, None])


def _runner_up(logp: torch.Tensor, chosen: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """Per row, the most probable candidate that is neither the chosen label nor (for a broader
    chosen type) one of the candidates under it. `excluded` is (explained, candidates) bool."""
    cands = logp[:, :excluded.shape[1]].detach().clone()
    cands[excluded[chosen]] = -torch.inf
    return cands.argmax(1)


def _exclusions(n_candidates: int, broader: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """(explained, candidates) bool: what a runner-up may not be for each explained label."""
    out = torch.zeros(n_candidates + len(broader), n_candidates, dtype=torch.bool, device=device)
    out[torch.arange(n_candidates), torch.arange(n_candidates)] = True
    for i, under in enumerate(broader):
        out[n_candidates + i, list(under)] = True
    return out


class _TargetLogProb:
    """Captum forward for gradients: the log-probability of each cell's target label, (B, 1), from
    the same pass that records every candidate's probability and, without a given target, picks
    the most probable one. One forward serves both: a separate no-gradient pass for the
    probabilities had cost about a quarter of saliency's time (benchmarks/saliency_passes.py).
    With a contrast, log p(target) - log p(versus), the runner-up picked in the same pass."""

    def __init__(self, forward: LabelLogProb, target: torch.Tensor | None, versus: torch.Tensor | None = None,
                 excluded: torch.Tensor | None = None) -> None:
        self.forward, self.target = forward, target
        self.versus, self.excluded = versus, excluded  # excluded set: pick each row's runner-up
        self.probabilities: torch.Tensor | None = None
        self.chosen: torch.Tensor | None = None

    def __call__(self, expr: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        logp = self.forward(expr, rows)
        self.probabilities = logp.detach().exp()
        # the most probable candidate (a broader type's sum is never "predicted")
        n_cands = len(self.forward.candidates)
        self.chosen = logp.detach()[:, :n_cands].argmax(1) if self.target is None else self.target
        out = logp.gather(1, self.chosen[:, None])
        if self.excluded is not None:
            self.versus = _runner_up(logp, self.chosen, self.excluded)
        return out if self.versus is None else out - logp.gather(1, self.versus[:, None])


def _gradient_batch(forward: LabelLogProb, expr: torch.Tensor, rows: torch.Tensor, target: torch.Tensor | None,
                    method: str, reference: torch.Tensor, versus: torch.Tensor | None = None,
                    excluded: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Saliency or plain gradient of one batch: (attributions, probabilities, targets, versus), one
    pass. Gradients are taken w.r.t. the input only; `reference` is (genes,) or all zeros."""
    expr = expr.detach().requires_grad_()  # Captum would set it too, with a warning per batch
    forward_target = _TargetLogProb(forward, target, versus, excluded)
    with torch.enable_grad():
        grads = Saliency(forward_target).attribute(expr, target=0, abs=False, additional_forward_args=(rows,))
    # x - 0 is exactly x, so the zero reference gives InputXGradient's numbers
    attr = grads * (expr.detach() - reference) if method == "saliency" else grads
    return attr, forward_target.probabilities, forward_target.chosen, forward_target.versus


@dataclass(frozen=True)
class IGSettings:
    """How Integrated Gradients integrates along its path.

    Attributes
    ----------
    n_steps
        Integration points of the first pass, spread over `segments` pieces of the path.
    segments
        Initial pieces: one [0, alpha_min], the rest geometrically spaced up to 1.
    tolerance
        Target |completeness delta| per cell (log-probability units); pieces whose own delta
        is above their share of it are halved and integrated again. None: a single pass.
    max_steps
        Cap on integration points per batch (a warning says when it stopped refinement).
    alpha_min
        Smallest scale of the input on the geometric grid.
    """

    n_steps: int = 64
    segments: int = 8
    tolerance: float | None = 0.05
    max_steps: int = 1024
    alpha_min: float = 1e-4

    def breakpoints(self) -> np.ndarray:
        """Initial path breakpoints, 0 (baseline) to 1 (the input)."""
        if self.segments < 1 or self.n_steps < self.segments:
            raise ValueError(f"need 1 <= ig segments <= n_steps, got {self.segments} for {self.n_steps} steps")
        if self.segments == 1:
            return np.array([0.0, 1.0])
        return np.concatenate([[0.0], np.geomspace(self.alpha_min, 1.0, self.segments)])


class _PathFunction:
    """f(r + a * (x - r)) for the batch's targets, memoised per position a (no gradients)."""

    def __init__(self, forward: Callable[..., torch.Tensor], expr: torch.Tensor, args: tuple[torch.Tensor, ...],
                 target: torch.Tensor, reference: torch.Tensor) -> None:
        self.forward, self.expr, self.args, self.target, self.reference = forward, expr, args, target, reference
        self.memo: dict[float, torch.Tensor] = {}

    def point(self, alpha: float) -> torch.Tensor:
        """The input at position `alpha` of the straight path (0: reference, 1: the cell)."""
        return self.reference + alpha * (self.expr - self.reference)

    def __call__(self, alpha: float) -> torch.Tensor:
        if alpha not in self.memo:
            with torch.no_grad():
                out = self.forward(self.point(alpha), *self.args)
            self.memo[alpha] = out.gather(1, self.target[:, None]).squeeze(1)
        return self.memo[alpha]


def _integrated_gradients(forward: Callable[..., torch.Tensor], expr: torch.Tensor, args: tuple[torch.Tensor, ...],
                          target: torch.Tensor, settings: IGSettings, internal_batch_size: int,
                          reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """IG from the reference, integrated adaptively along the same straight path. `forward` takes
    the input and then `args` (the prompt rows; for a contrast also each row's versus label).

    The cell encoder layer-normalises its first hidden layer, so the model is nearly
    scale-invariant in its input: along the path from zero the answer changes within a narrow
    band of small scales (about |bias| / |W x|, ~1% of the input on the tiny test model) and
    hardly at all after; evenly spread quadrature points step over that band (|delta| up to 16
    nats with 64 points measured). IG is additive over pieces of its path, so Captum's IG is run
    piece by piece (between positions a and b of the path), starting from geometrically spaced
    pieces and halving any piece whose own completeness gap exceeds its share of the tolerance.
    The delta returned is Captum's, for the whole path: sum(attributions) - (f(x) - f(reference)).
    (From a non-zero reference the geometric pieces are merely finer near it than they need be.)
    """
    ig = IntegratedGradients(forward)
    reference = reference.expand_as(expr)
    path = _PathFunction(forward, expr, args, target, reference)
    points = settings.breakpoints()
    per = max(1, settings.n_steps // (len(points) - 1))
    budget = settings.tolerance / (len(points) - 1) if settings.tolerance is not None else None
    todo = [(float(lo), float(hi), budget) for lo, hi in zip(points[:-1], points[1:])]
    total, used, capped = torch.zeros_like(expr), 0, False
    while todo:
        lo, hi, tol = todo.pop()
        attr = ig.attribute(path.point(hi), baselines=path.point(lo), target=target, additional_forward_args=args,
                            n_steps=per, internal_batch_size=max(internal_batch_size, expr.shape[0])).detach()
        used += per
        gap = (attr.sum(1) - (path(hi) - path(lo))).abs().max().item()
        if tol is not None and gap > tol and hi - lo > 1e-9:
            if used + 2 * per <= settings.max_steps:
                mid = (lo + hi) / 2 if lo == 0 else float(np.sqrt(lo * hi))
                todo += [(lo, mid, tol / 2), (mid, hi, tol / 2)]
                continue
            capped = True
        total += attr
    if capped:
        log.warning("Integrated Gradients stopped refining at %d points (max_steps); see the per-cell deltas", used)
    delta = ig.compute_convergence_delta(total, reference, expr, target=target, additional_forward_args=args)
    return total, delta, used


@torch.no_grad()
def _probabilities(forward: LabelLogProb, expr: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return forward(expr, rows).exp()


def attribute(model: CellLanguageModel, counts: sp.csr_matrix | np.ndarray, candidates: Sequence[str],
              prefixes: Sequence[str], rows: np.ndarray | None = None, target: np.ndarray | None = None, *,
              method: str = "saliency", batch_size: int = 16, ig: IGSettings | None = None,
              internal_batch_size: int = 64, reference: np.ndarray | None = None,
              progress: Callable[[int, int], None] | None = None, route: CandidateRoute | None = None,
              decisive: bool = False, readout: Readout | None = None,
              broader: Sequence[tuple[str, Sequence[int]]] = (),
              versus: np.ndarray | str | None = None) -> Attributions:
    """Attribute each cell's target-label log-probability to its log-normalized expression.

    Parameters
    ----------
    model
        The cell language model (kept in eval mode; its parameters are not differentiated).
    counts
        cells x vocabulary count-scale matrix (``AlignedData.X``).
    candidates
        Labels scored for every cell; the softmax runs over them.
    prefixes, rows
        Distinct prompt prefixes (``model.prefix_text(...)``) and, per cell, which one it uses
        (default: all cells use ``prefixes[0]``).
    target
        Per cell, the index to explain among the candidates and then the `broader` types (default:
        the predicted candidate).
    method
        ``"saliency"`` (gradient x input), ``"gradient"`` or ``"ig"``.
    batch_size
        Cells per forward pass.
    ig
        Integrated Gradients settings (default :class:`IGSettings`: 64 points on 8 geometric
        pieces, refined to |delta| < 0.05).
    internal_batch_size
        Integrated Gradients: rows (cells x points) per forward pass. Backward memory grows with
        rows x candidate tokens: 256 rows over zheng2017's 10 long labels took more than 20 GB on
        the default checkpoint; 64 stays near 6 GB.
    reference
        Reference input (one log1p(CP10k) value per gene) that ``saliency`` and ``ig`` measure
        from, e.g. the mean cell of a sample. Default: all zeros (no expression).
    progress
        Called with (cells done, total) after each batch.
    route
        How the candidates are scored (``core_model/candidate_route.py``); with an ontology route
        the prefixes must ask the open question, and each candidate's probability is the sum over
        the learned labels it covers. Default: the candidates themselves are scored.
    decisive
        Score the candidates on their decisive tokens only (``CellLanguageModel.score_candidates``),
        so the explained log-probability is the one `annotate` answers with under its default scoring.
    readout
        A linear gene read-out whose weighted log-probabilities join the scores (core_model/readout.py);
        the caller passes it only when it covers the scored labels, all from one learned set.
    broader
        (name, candidate indices) of broader types to explain beside the candidates: the log of the
        summed probability of the candidates under each (`resolve_at`'s answers).
    versus
        Explain log p(target) - log p(versus) instead: per cell, an index like `target`'s, or
        :data:`RUNNER_UP` for each cell's most probable candidate other than its target (and, for a
        broader target, other than the candidates under it). Default: no contrast.

    Returns
    -------
    Attributions

    Raises
    ------
    ValueError
        Unknown method, a target or versus index outside the candidates, or a reference that is
        not one finite, non-negative value per gene.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    ref = _reference_tensor(model, reference, counts.shape[1])
    ig = ig or IGSettings()
    if method == "ig":
        ig.breakpoints()  # refuse bad settings before any work
    n_cells = counts.shape[0]
    if n_cells == 0:
        raise ValueError("no cells to attribute")
    rows = np.zeros(n_cells, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    broader = tuple((str(name), tuple(int(i) for i in g)) for name, g in broader)
    n_explained = len(candidates) + len(broader)
    if target is not None and (np.min(target) < 0 or np.max(target) >= n_explained):
        raise ValueError(f"target indices must lie in [0, {n_explained})")
    if any(not g or min(g) < 0 or max(g) >= len(candidates) for _, g in broader):
        raise ValueError("a broader type must cover candidates, by index")
    if isinstance(versus, str) and versus != RUNNER_UP:
        raise ValueError(f"versus must be per-cell indices or {RUNNER_UP!r}, got {versus!r}")
    if versus is not None and not isinstance(versus, str):
        versus = np.asarray(versus, dtype=np.int64)
        if versus.shape != (n_cells,) or np.min(versus) < 0 or np.max(versus) >= n_explained:
            raise ValueError(f"versus must hold one index in [0, {n_explained}) per cell")
    if model.training:
        log.warning("model was in training mode; switching it to eval for attributions")
        model.eval()
    forward = LabelLogProb(model, prefixes, candidates, route, decisive, readout, [g for _, g in broader])
    excluded = _exclusions(len(candidates), [g for _, g in broader], model.device) \
        if isinstance(versus, str) else None
    parts = []
    for start in range(0, n_cells, batch_size):
        idx = np.arange(start, min(start + batch_size, n_cells))
        fixed = versus[idx] if isinstance(versus, np.ndarray) else None
        parts.append(_one_batch(forward, counts, idx, rows, target, method, ig, internal_batch_size, ref,
                                fixed, excluded))
        if progress is not None:
            progress(int(idx[-1]) + 1, n_cells)
    values, inputs, probs, targets, deltas, used, against = (list(x) for x in zip(*parts))
    return Attributions(
        np.concatenate(values), np.concatenate(inputs), np.concatenate(targets).astype(np.int64),
        np.concatenate(probs), [str(c) for c in candidates], method,
        np.concatenate(deltas) if method == "ig" else None, ig.n_steps if method == "ig" else None,
        list(prefixes), rows, np.concatenate(used) if method == "ig" else None,
        None if reference is None else ref.cpu().numpy(), route, decisive, readout, broader,
        None if versus is None else np.concatenate(against).astype(np.int64),
    )


def _reference_tensor(model: CellLanguageModel, reference: np.ndarray | None, n_genes: int) -> torch.Tensor:
    """The reference as a float32 tensor on the model's device (zeros when None), checked."""
    if reference is None:
        return torch.zeros(n_genes, device=model.device)
    ref = np.asarray(reference, dtype=np.float32)
    if ref.shape != (n_genes,):
        raise ValueError(f"reference must hold one value per gene ({n_genes}), got shape {ref.shape}")
    if not np.isfinite(ref).all() or (ref < 0).any():
        raise ValueError("reference must be finite and non-negative (a log1p(CP10k) expression profile)")
    return torch.from_numpy(ref).to(model.device)


def _one_batch(forward: LabelLogProb, counts: sp.csr_matrix | np.ndarray, idx: np.ndarray, rows: np.ndarray,
               target: np.ndarray | None, method: str, ig: IGSettings, internal_batch_size: int,
               reference: torch.Tensor, versus: np.ndarray | None = None,
               excluded: torch.Tensor | None = None) -> tuple:
    """(attributions, inputs, probabilities, targets, IG delta or None, points used, versus or None)
    of cells `idx`; `versus` fixed per cell, or `excluded` set to pick each cell's runner-up."""
    model = forward.model
    expr = _log_expression(model, counts, idx)
    row_t = torch.from_numpy(rows[idx]).to(model.device)
    given = None if target is None else torch.as_tensor(target[idx], device=model.device)
    against = None if versus is None else torch.as_tensor(versus, device=model.device)
    if method in ("saliency", "gradient"):
        attr, p, tgt, against = _gradient_batch(forward, expr, row_t, given, method, reference, against, excluded)
        delta, used = None, 1
    else:
        p = _probabilities(forward, expr, row_t)
        tgt = p[:, :len(forward.candidates)].argmax(1) if given is None else given
        if excluded is not None:
            against = _runner_up(p.log(), tgt, excluded)
        contrast = against is not None
        with torch.enable_grad():
            attr, delta, used = _integrated_gradients(_Contrast(forward) if contrast else forward, expr,
                                                      (row_t, against) if contrast else (row_t,), tgt, ig,
                                                      internal_batch_size, reference)
    as_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    return (as_np(attr), as_np(expr), as_np(p), tgt.cpu().numpy(), as_np(delta) if delta is not None else None,
            np.full(len(idx), used, dtype=np.int64), against.cpu().numpy() if against is not None else None)


def _log_expression(model: CellLanguageModel, counts: sp.csr_matrix | np.ndarray, idx: np.ndarray) -> torch.Tensor:
    dense = dense_rows(counts, idx) if sp.issparse(counts) else np.asarray(counts[idx], dtype=np.float32)
    return model.normalize(torch.from_numpy(dense).to(model.device)).float()


@torch.no_grad()
def label_probability(model: CellLanguageModel, expr: np.ndarray, candidates: Sequence[str], prefixes: Sequence[str],
                      rows: np.ndarray, target: np.ndarray, batch_size: int = 16,
                      route: CandidateRoute | None = None, decisive: bool = False,
                      readout: Readout | None = None, broader: Sequence[Sequence[int]] = (),
                      versus: np.ndarray | None = None) -> np.ndarray:
    """Probability of each cell's `target` (a candidate, or a `broader` type after them) given
    log-normalized input `expr` (cells x genes); with `versus` (an index per cell), its probability
    within the pair, p(target) / (p(target) + p(versus)), whose log-odds is the contrast `attribute`
    explains.

    Used by the deletion test: `expr` may have genes zeroed in log space. `route`, `decisive`,
    `readout`, `broader` (candidate indices of each broader type): as in `attribute`.
    """
    forward = LabelLogProb(model, prefixes, candidates, route, decisive, readout, broader)
    out = []
    for start in range(0, expr.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        x = torch.from_numpy(np.ascontiguousarray(expr[sl], dtype=np.float32)).to(model.device)
        r = torch.from_numpy(np.asarray(rows[sl], dtype=np.int64)).to(model.device)
        logp = forward(x, r)
        p = logp.gather(1, torch.as_tensor(target[sl], device=model.device)[:, None]).squeeze(1)
        if versus is not None:  # sigmoid of the log-odds against versus: p within the pair
            other = logp.gather(1, torch.as_tensor(versus[sl], device=model.device)[:, None]).squeeze(1)
            p = torch.sigmoid(p - other).log()
        out.append(p.exp().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
