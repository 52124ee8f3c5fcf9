"""Python API: AnnData in, result objects out.

    import instructcell_agent as ica
    model = ica.load_model()
    result = ica.annotate(adata, model=model)
    result.to_adata(adata)
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import torch

from .core_model import readout_first
from .core_model.alignment import align_to_vocab, empty_cells, matrices_note
from .core_model.calibration import label_prior_correction
from .core_model.candidate_route import CandidateNoteWarning, CandidateRoute, route_candidates
from .core_model.checkpoint import LoadedModel, load_checkpoint
from .core_model.context import species_clash
from .core_model.corpus import dense_rows
from .core_model.datasets import prompt_fields
from .core_model.errors import InstructionError
from .core_model.hierarchy import check_resolve_at
from .core_model.instructions import has_choices, render
from .core_model.labels import UNASSIGNED, LabelMapper
from .core_model.precision import resolve_device, resolve_precision
from .core_model.readout import Readout, answer_scores, joins, one_set, readout_name
from .core_model.reference import ATYPICAL_SHARE, AtypicalCellsWarning, atypical_share
from .core_model.scoring import check_scoring, scoring_name, use_decisive
from .core_model.temperature_depth import detected_genes
from .lacking_types import lacking_note, lacking_types
from .resolution import Part, resolved_frame
from .results import (LANGUAGE_MODEL, READOUT_ALONE, AnnotationResult, check_unassigned_atypical,
                      check_unassigned_below)
from .unlearned_candidates import (answer_by_markers, by_markers_answer, check_marker_result, gate_note,
                                   gate_record, gates_unrouted, marker_result as markers_of)

log = logging.getLogger(__name__)

DEFAULT_INSTRUCTIONS = {
    # Our own phrasings (not the evaluation templates); {choices} only when candidates are given.
    ("annotation", True): "Which cell type is this cell? Choose one of: {choices}.",
    ("annotation", False): "Which cell type is this cell?",
    ("drug_response", True): "Is this cell resistant or sensitive to {drug}? Options: {choices}.",
    ("drug_response", False): "How does this cell respond to {drug}?",
}


def default_checkpoint_path() -> Path:
    """Directory of the checkpoint shipped inside the package."""
    return Path(str(resources.files("instructcell_agent").joinpath("checkpoints/default")))


@lru_cache(maxsize=4)
def _load_cached(path: str, device: str, precision: str, files: tuple) -> LoadedModel:
    return load_checkpoint(path, device, precision)


def _files_state(path: Path) -> tuple:
    """(name, size, modification time) of a checkpoint directory's files: part of the cache key, so
    a checkpoint changed on disk since it was loaded (a read-out refitted, reference cells kept,
    temperatures fitted) is loaded again rather than served stale."""
    if not path.is_dir():
        return ()
    return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path) if e.is_file()))


def load_model(checkpoint: str | os.PathLike | None = None, device: str = "auto",
               precision: str = "auto") -> LoadedModel:
    """Load a checkpoint (default: the shipped one); repeated calls reuse the loaded model.

    `device`: "auto" (the GPU when torch sees one, else the CPU; in float32 both give the same
    answers), "cpu", "cuda" or "cuda:N"; a GPU that is not there is refused (`DeviceError`).

    `precision`: the language model's compute dtype. "auto" (bfloat16 on a CPU with fast
    bfloat16 units, else float32, GPUs included), "float32" (reproducible across machines; what the
    benchmarks' accuracy tables use) or "bfloat16". See `core_model/precision.py`.
    """
    device = resolve_device(device)
    if precision == "auto":
        precision = "bfloat16" if resolve_precision("auto", device) == torch.bfloat16 else "float32"
    path = (Path(checkpoint) if checkpoint else default_checkpoint_path()).resolve()
    return _load_cached(str(path), device, precision, _files_state(path))


def annotate(adata: ad.AnnData, model: LoadedModel | None = None, instruction: str | None = None,
             candidates: Sequence[str] | None = None, **kwargs) -> AnnotationResult:
    """Cell type of every cell, answering `instruction` (a default phrasing when None).

    With `candidates` each candidate's likelihood is scored (probabilities for all of them);
    without, the model answers freely: with the checkpoint's read-out (the default) by scoring
    the labels it learned for the cells' species and tissue, `confidence` being the answer's
    probability among them; without it by decoding, `confidence` being the answer's own
    probability (of its decisive tokens, under the default scoring).
    Keyword arguments: species, tissue, sequencing_method (prompt fields; default from `obs`),
    layer, use_raw, gene_key, min_genes (alignment), batch_size (default 64 on CPU, 256 on GPU),
    mode ("instruct" | "chat"),
    free_text (True: unconstrained free answers instead of decoding within the labels the checkpoint
    learned for the cells' species and tissue),
    calibrate (True: subtract each candidate's mean log-likelihood over the cells of the call, see
    core_model/calibration.py; needs candidates and at least 20 cells),
    scoring ("auto": labels the checkpoint learned are scored on their decisive tokens, the ones
    that tell them apart: 1.2x to 3.5x faster on CPU, the same answer for 97.4% to 100% of each
    test split's cells, benchmarks/results/decisive_scoring.md; other strings on every token.
    "full": every token of every candidate. "decisive": always the decisive tokens. See
    `CellLanguageModel.score_candidates`),
    readout (True: where the checkpoint has a linear gene read-out and the labels are ones it learned,
    each label's score adds the read-out's log-probability, core_model/readout.py; free answers are
    then chosen by scoring the learned labels instead of decoding. False: the language model alone),
    progress (called with (cells done, total) after each batch; the CLI draws a bar with it).
    fast (True: cells the linear read-out gives one label a probability of 0.98 or more, unless
    their typicality for it is below -3, take its answer and probabilities (`answered_by` says
    which), and the language model reads only the others; where the read-out
    answers with its full weight over one learned label set (core_model/readout_first.py). On the
    valid cells of the ten shared sets that changed no answer; uns['instructcell']['fast'] counts
    the cells it answered. Off by default: every cell's answer then comes from the language model).
    unassigned_below (a confidence: cells answered with a lower one are labelled 'Unassigned', for
    files that may hold types the candidates lack; see `AnnotationResult.unassigned_below`),
    unassigned_atypical (a number of standard deviations, 3 say: cells whose typicality, how alike
    the training cells of their label they are, lies further below 0 are labelled 'Unassigned';
    with or without candidates; see `AnnotationResult.unassigned_atypical`),
    resolve_at (a probability above 0.5, 0.9 say: each cell also gets the finest answer that reaches
    it, its label or, summing the probabilities of the labels under each Cell Ontology type, a
    broader type such as 'CD4-positive, alpha-beta T cell', else 'Unassigned'; the `resolved`
    table, obs['<key>_resolved']; core_model/hierarchy.py. With candidates or free answers scored
    with the read-out; decoded answers keep only the labels that reach it),
    by_markers (None, the default: candidates none of which is a type the checkpoint learned
    ('Hepatocyte', 'Kupffer cell') are answered from their known markers, `annotate_by_markers`,
    with a warning; candidates mixing such types with learned ones ('Hepatocyte', 'T cell') have
    the markers decide between each unlearned type and the learned ones, and the model among the
    learned ones (`CandidateRoute.gate`, the markers weighing less where the model's own answer
    fits the cell; uns['instructcell']['marker_gate']), whatever the other options; either only
    where the markers are known. False: the names of unlearned types are
    scored as strings),
    marker_result (the `annotate_by_markers` result over the same candidates that decides a mix of
    learned and unlearned types, computed on these cells or on a file holding them, for chunks of
    a large file: a marker's score sets a cell against the file's other cells; default: computed
    on `adata`).
    """
    return _answer(adata, model, "annotation", instruction, candidates, **kwargs)


def predict_drug_response(adata: ad.AnnData, drug: str, model: LoadedModel | None = None,
                          instruction: str | None = None, candidates: Sequence[str] | None = ("resistant", "sensitive"),
                          **kwargs) -> AnnotationResult:
    """Drug response of every cell (default candidates: resistant / sensitive). Keyword arguments as
    `annotate`'s (unassigned_below / unassigned_atypical label uncertain / atypical calls 'Unassigned')."""
    if not str(drug or "").strip():
        raise ValueError("drug is required: the response to which drug? (the shipped model learned erlotinib; "
                         "`instructcell info` lists a checkpoint's drugs)")
    return _answer(adata, model, "drug_response", instruction, candidates, drug=drug, **kwargs)


def generate_cells(model: LoadedModel | None = None, cell_type: str = "", n: int = 100, species: str | None = None,
                   tissue: str | None = None, condition: str | None = None, instruction: str | None = None,
                   seed: int = 0, allow_unseen: bool = False, sequencing_method: str | None = None) -> ad.AnnData:
    """Generate `n` pseudo-cells (integer counts over the model's genes) for a condition.

    `condition` is free text ("IFN-beta stimulated", "control"; "stim"/"ctrl" are mapped). An
    unseen condition raises `UnseenConditionError` unless `allow_unseen` (then it warns and sets
    obs['unseen_condition']). obs records cell_type, species, tissue, condition and instruction;
    fields left out are filled from training, with a `ConditionChoiceWarning` where the type was
    learned in another species or tissue too (`instructcell info` and the MCP tool `describe_model`
    list them). See `instructcell_agent.core_model.generation.sampling.generate_cells`.
    """
    from .core_model.generation.sampling import generate_cells as _generate

    return _generate(model or load_model(), cell_type, n, species=species, tissue=tissue, condition=condition,
                     sequencing_method=sequencing_method, instruction=instruction, seed=seed, allow_unseen=allow_unseen)


def default_batch_size(device: torch.device) -> int:
    """Cells per forward pass when the caller names none: 64 on a CPU; 256 on a GPU, where this
    small LM is launch-bound and bigger batches pay (H200, benchmarks/results/gpu_batch_sweep.md:
    2.0x to 4.0x the cells per second of 64, at most 3.3 GiB of GPU memory on the shared sets)."""
    return 256 if torch.device(device).type == "cuda" else 64


def _answer(adata: ad.AnnData, model: LoadedModel | None, task: str, instruction: str | None,
            candidates: Sequence[str] | None, *, species: str = "", tissue: str = "", sequencing_method: str = "",
            drug: str = "", layer: str | None = None, use_raw: bool = False, gene_key: str | None = None,
            min_genes: int = 100, batch_size: int | None = None, mode: str = "instruct",
            free_text: bool = False, calibrate: bool = False, scoring: str = "auto", readout: bool = True,
            progress: Callable[[int, int], None] | None = None, fast: bool = False,
            unassigned_below: float | None = None, unassigned_atypical: float | None = None,
            resolve_at: float | None = None, by_markers: bool | None = None,
            marker_result: AnnotationResult | None = None) -> AnnotationResult:
    if mode not in ("instruct", "chat"):
        raise ValueError(f"mode must be 'instruct' or 'chat', got {mode!r}")
    if resolve_at is not None:
        if task != "annotation":  # two labels, no broader type to fall back on
            raise ValueError("resolve_at is for cell types (broader Cell Ontology types); for drug response use "
                             "unassigned_below")
        check_resolve_at(resolve_at)
    if unassigned_below is not None:
        check_unassigned_below(unassigned_below)  # before any model work
    if unassigned_atypical is not None:
        check_unassigned_atypical(unassigned_atypical)
    check_scoring(scoring)
    loaded = model or load_model()
    if unassigned_atypical is not None and loaded.reference is None:
        raise ValueError("unassigned_atypical needs reference cells, which this checkpoint does not keep "
                         "(`instructcell fit-reference --checkpoint DIR` keeps them)")
    batch_size = batch_size or default_batch_size(loaded.model.device)
    cands = [str(c) for c in candidates] if candidates else None
    if cands is not None and len(set(cands)) != len(cands):
        raise ValueError("candidates contain duplicates")
    if cands is not None and len(cands) < 2:
        # one candidate leaves nothing to choose: every cell would get it at confidence 1.0
        raise ValueError(f"one candidate ({cands[0]!r}) leaves nothing to choose between: every cell would get it "
                         "with confidence 1. Pass it among the others it should be told from (e.g. a label set the "
                         "model learned), or annotate without candidates and read each cell's typicality, how alike "
                         "it is to the training cells of its label")
    route = route_candidates(cands, loaded.label_sets, task) if cands is not None else None
    model_only = dict(instruction=instruction, fast=fast, resolve_at=resolve_at, calibrate=calibrate,
                      unassigned_atypical=unassigned_atypical, chat=mode == "chat")
    matrix = dict(layer=layer, use_raw=use_raw, gene_key=gene_key)
    if by_markers is not False and answer_by_markers(route, **model_only):
        found = by_markers_answer(adata, loaded, route, species=species, unassigned_below=unassigned_below, **matrix)
        if found is not None:
            return found
    # candidates mixing types the checkpoint learned with types it did not: the markers decide the latter
    markers = None
    if marker_result is not None:
        if by_markers is False:
            raise ValueError("by_markers=False scores the candidates' names as strings, and marker_result asks their "
                             "markers to decide: pass one or the other")
        check_marker_result(marker_result, route, adata.obs_names)
        markers = marker_result
    elif by_markers is not False and gates_unrouted(route):
        markers = markers_of(adata, loaded, route, species=species, **matrix)
    template = instruction or DEFAULT_INSTRUCTIONS[(task, cands is not None)]
    if has_choices(template) and cands is None:
        cands = loaded.labels_for_task(task)
        route = CandidateRoute("learned", tuple(cands))
    pooled = route is not None and route.kind == "ontology"
    scored = list(route.learned) if pooled else cands
    if pooled:
        # The model answers the open question; listing strings it never learned would only
        # bias it towards the closest-looking learned label.
        template = instruction if instruction and not has_choices(instruction) else DEFAULT_INSTRUCTIONS[(task, False)]
    aligned = align_to_vocab(adata, loaded.vocab, layer=layer, use_raw=use_raw, gene_key=gene_key, min_genes=min_genes)
    fields = prompt_fields(adata, None, species=species, tissue=tissue, sequencing_method=sequencing_method, drug=drug)
    texts = [_prompt(loaded, template, f, None if pooled else cands) for f in fields]
    # Free answers are decoded within the labels this checkpoint learned to name for the cell's
    # species and tissue (never a misspelling, never a blood label for a pancreas cell), unless
    # the caller asks for unconstrained text.
    allowed = None if cands is not None or free_text else loaded.labels_for_cells(task, fields)
    first_allowed = allowed[0] if allowed else None
    notes = [] if route is None or not route.note else [route.note if markers is None else gate_note(route, markers)]
    if pooled and instruction and has_choices(instruction):
        notes.append(f"the instruction lists the candidates ({{choices}}), which this route cannot use; "
                     f"the model was asked {template!r} instead")
    if route is not None and (route.kind == "text" or route.unrouted):
        warnings.warn(notes[0], CandidateNoteWarning, stacklevel=3)
    if cands is None:
        notes += _unseen_context_notes(loaded, task, fields, free_text)
        for note in notes:
            warnings.warn(note, UnseenContextWarning, stacklevel=3)
    if clash := species_clash(sorted({f["species"] for f in fields}), aligned.report.species):
        notes.append(clash)
        warnings.warn(clash, UnseenContextWarning, stacklevel=3)
    if task == "drug_response" and (drug_note := unseen_drug_note(loaded, drug)):
        notes.append(drug_note)
        warnings.warn(drug_note, UnseenContextWarning, stacklevel=3)
    if calibrate and cands is None:
        raise ValueError("calibrate=True corrects scored candidates: pass candidates (or an instruction with {choices})")
    if calibrate and fast:  # the correction averages the LM's scores over the cells; fast leaves some without
        raise ValueError("calibrate=True and fast=True do not combine: the correction needs the language model's "
                         "scores for every cell, and fast skips it where the read-out is sure")
    # Labels the model learned to write are told apart by their decisive tokens; a string it never
    # learned is scored in full under "auto" (its later tokens are not near-certain).
    decisive = use_decisive(scoring, route.scores_learned_labels if cands is not None else allowed is not None)
    expert = loaded.readout_for(aligned.matched) if readout else None
    by_readout = cands is None and allowed is not None and expert is not None and all(map(expert.covers, allowed))
    # A cell with no counts on any of the model's genes carries nothing to answer from; the model
    # would still name a label for it, confidently (0.997 for an emptied zheng2017 cell), so it is
    # left out and left unlabelled.
    keep = np.flatnonzero(~empty_cells(aligned.X))
    X = aligned.X
    if len(keep) < len(texts):
        # none with counts: most likely the wrong matrix (an emptied X beside a counts layer)
        said = EMPTY_CELLS_NOTE if len(keep) else f"{EMPTY_CELLS_NOTE}; {matrices_note(adata, layer, use_raw)}"
        notes.append(said)
        warnings.warn(f"{len(texts) - len(keep):,} of {len(texts):,} cells: {said}", EmptyCellWarning, stacklevel=3)
        X, texts = X[keep], [texts[i] for i in keep]
        allowed = [allowed[i] for i in keep] if allowed is not None else None
    if cands is None and not by_readout:
        expert = None  # decoded free answers: the read-out does not join them
    labels, conf, answers, probs = [], [], [], np.zeros((0, len(cands or ())))  # what no cell to answer gives
    alone = np.zeros(len(keep), dtype=bool)  # cells the read-out answered alone (`fast`)
    parts: list[Part] | None = []  # the scored probabilities resolve_at sums (None: decoded answers)
    lacking = None  # with candidates: which cells look like a learned type they lack (lacking_types.py)
    # fast leaves a cell unlike its label's training cells to the language model (readout_first.py)
    typical = (None if loaded.reference is None else
               (lambda counts, named: loaded.reference.typicality(counts, aligned.matched, named)))
    if len(keep) and by_readout:  # the read-out needs a score for every allowed label, which decoding does not give
        labels, conf, alone, parts = _choose_allowed(loaded, X, texts, batch_size, allowed, decisive, expert,
                                                      progress, fast, typical)
        answers = list(labels)
    elif len(keep) and cands is None:
        labels, conf, answers = _generate_answers(loaded, X, texts, batch_size, allowed, decisive, progress)
        parts = None
        # Free answers: named with the checkpoint's own spelling when they match one.
        mapper = LabelMapper(tuple(loaded.labels_for_task(task)))
        labels = [mapper.map(a) or a for a in labels]
    elif len(keep):
        loglik, alone = _score(loaded, X, texts, scored, batch_size, decisive, progress, expert, fast, typical)
        answers = None
        learned_loglik = loglik
        if pooled:
            loglik, top = route.pool(loglik)
            answers = [route.learned[i] for i in top]  # the model's own, often finer, answer
        labels, conf, probs = _choose(loglik, cands, calibrate)
        if markers is not None:  # the markers decide the candidates the checkpoint never learned
            # weighed by how well the model's own learned answer fits each cell (CandidateRoute.gate)
            fit = None if loaded.reference is None else loaded.reference.typicality(X, aligned.matched, answers)
            probs = route.gate(probs, _marker_rows(markers, aligned.obs_names, keep, cands), fit)
            best = probs.argmax(1)
            labels, conf = [cands[b] for b in best], probs.max(1).tolist()
            answers = route.finest(learned_loglik, best)
        answers = answers or list(labels)
        parts = [(np.arange(len(keep)), cands, probs)]
        if task == "annotation" and route.kind != "text":  # cells of a learned type the candidates lack
            lacking = lacking_types(loaded, X, aligned.matched, cands, answers)
    labels, conf, answers, probs = _unlabelled_filled(len(aligned.obs_names), keep, labels, conf, answers,
                                                      probs if cands is not None else None)
    # typicality is measured against the learned label the model chose (routed candidates are
    # names it never learned; `answers` holds its own label there)
    typicality = (loaded.reference.typicality(aligned.X, aligned.matched, answers if pooled else labels)
                  if loaded.reference is not None else None)
    if (note := _atypical_note(typicality)) is not None:
        notes.append(note)
        warnings.warn(note, AtypicalCellsWarning, stacklevel=3)
    if (note := lacking_note(lacking)) is not None:
        notes.append(note)
        warnings.warn(note, CandidateNoteWarning, stacklevel=3)
    if mode == "chat":
        answers = [f"This cell is most likely {l} (probability {c:.2f})." if l is not None else ""
                   for l, c in zip(labels, conf)]
    chosen, chosen_among = cands is not None or by_readout, scored if cands is not None else first_allowed
    provenance = {
        "task": task, "instruction": template, "mode": mode, "alignment": aligned.report.to_dict(),
        "alignment_summary": aligned.report.summary(),
        "calibration": "batch label-prior correction" if calibrate else "none",
        "checkpoint": str(loaded.path), "package_version": loaded.info.get("package_version"),
        "backbone": loaded.model.cfg.backbone.name, "backbone_sha256": loaded.model.backbone.sha256,
        "precision": loaded.model.precision, "device": loaded.model.device.type, "notes": notes,
        "candidate_route": route.kind if route is not None else "none",
        "scoring": scoring_name(decisive and (cands is not None or allowed is not None)),
        "readout": readout_name(expert, scored if cands is not None else (first_allowed if by_readout else None)),
        # decoded free answers report the LM's own probability of the text, unscaled
        "confidence_temperature": loaded.temperature(expert, chosen_among) if chosen else 1.0,
        "confidence_depth_term": (depth.to_json() if chosen and (depth := loaded.depth_term(expert, chosen_among))
                                  else None),
    }
    if markers is not None:
        provenance["marker_gate"] = gate_record(route, markers, labels)
    if fast:
        asked = scored if cands is not None else (first_allowed if by_readout else None)
        provenance["fast"] = _fast_record(int(alone.sum()), len(keep), expert, asked, loaded)
        if not alone.any() and (why := provenance["fast"].get("why_none")):
            notes.append(f"fast: every cell was answered by the language model: {why}")
    if task == "drug_response":  # the instruction above is the template; which drug filled it
        provenance["drug"] = drug
    if cands is None and task == "annotation":
        # what a file without a tissue was read as; answers on several tissues' labels are worth a look
        tissue_of = loaded.label_tissues("annotation")
        provenance["answer_tissues"] = AnnotationResult.answer_tissue_record(
            Counter(tissue_of.get(str(l), "?") for l in labels if l is not None))
    prob_frame = pd.DataFrame(probs, index=aligned.obs_names, columns=cands) if probs is not None else None
    answered_by = None
    if fast:  # who answered each cell; None for a cell left unlabelled
        answered_by = np.full(len(aligned.obs_names), None, dtype=object)
        answered_by[keep] = np.where(alone, READOUT_ALONE, LANGUAGE_MODEL)
    resolved = None
    if resolve_at is not None:
        resolved = resolved_frame(list(map(str, aligned.obs_names)), keep, parts, labels, conf, resolve_at)
        provenance["resolve_at"] = resolve_at
        if parts is None:
            notes.append("resolve_at: these answers were decoded as text, with no probability for the other labels, "
                         "so no broader type could be summed: a cell keeps its label where its confidence reaches "
                         f"{resolve_at:g}, else it is {UNASSIGNED!r}")
    outside, outside_type = None, None
    if lacking is not None:  # NaN and None for cells left unlabelled
        outside, outside_type = np.full(len(aligned.obs_names), np.nan), np.full(len(aligned.obs_names), None, object)
        outside[keep], outside_type[keep] = lacking.probability, lacking.label
    result = AnnotationResult(list(map(str, aligned.obs_names)), labels, conf, answers, prob_frame, provenance,
                              typicality, answered_by, resolved, outside, outside_type)
    if unassigned_atypical is not None:
        result = result.unassigned_atypical(unassigned_atypical)
    return result if unassigned_below is None else result.unassigned_below(unassigned_below)


def _marker_rows(markers: AnnotationResult, obs_names: Sequence[str], keep: np.ndarray,
                 cands: Sequence[str]) -> np.ndarray:
    """The markers' probabilities (cells `keep` x `cands`): by position where they were computed on
    these cells, else by cell name (a result computed on a whole file, answered in chunks)."""
    frame = markers.probabilities
    names = [str(n) for n in obs_names]
    if list(map(str, frame.index)) != names:
        frame = frame.set_axis(list(map(str, frame.index))).reindex(names)
    return frame[list(cands)].to_numpy(dtype=np.float64)[keep]


def _fast_record(n_sure: int, n_cells: int, expert: Readout | None, labels, loaded: LoadedModel) -> dict:
    """Provenance of `fast`: how many cells the read-out answered alone, and, where it could
    answer none for the labels asked, why (core_model/readout_first.py)."""
    record = {"sure_at": readout_first.SURE, "cells_answered_by_readout_alone": n_sure, "cells_answered": n_cells}
    if labels is None:  # decoded free answers: nothing is scored, so the read-out has no say
        record["why_none"] = "free answers are decoded here, not scored over labels"
    elif why := readout_first.why_not(expert, labels, loaded.label_lists):
        record["why_none"] = why + _one_set_hint(loaded, labels, expert)
    return record


def _one_set_hint(loaded: LoadedModel, labels: Sequence[str], expert: Readout | None) -> str:
    """Where the labels span several learned sets: those sets, each of which `fast` could answer
    from as candidates (what to pass instead); '' otherwise."""
    if not joins(expert, labels) or one_set(labels, loaded.label_lists):
        return ""
    # the sets the labels are made of (free answers: the sets learned for the tissue), else those they touch
    sets = ([(name, e["labels"]) for name, e in loaded.label_sets.items() if set(e["labels"]) <= set(labels)]
            or [(name, e["labels"]) for name, e in loaded.label_sets.items() if set(e["labels"]) & set(labels)])
    return ": " + "; ".join(f"{name}: {', '.join(map(str, named))}" for name, named in sets[:4])


class UnseenContextWarning(UserWarning):
    """Free answers for cells of a species / tissue the checkpoint learned no labels for."""


class EmptyCellWarning(UserWarning):
    """Cells with no counts on any of the model's genes, left unlabelled."""


def _atypical_note(typicality: np.ndarray | None) -> str | None:
    """A note when at least ATYPICAL_SHARE of the scored cells fall below typicality -3."""
    if typicality is None or (share := atypical_share(typicality)) < ATYPICAL_SHARE:
        return None
    return (f"{share:.0%} of the cells are unlike the training cells of the label they were given (typicality "
            "below -3): the file may hold a tissue, cell types or a protocol the model never learned; weigh the "
            "labels accordingly (unassigned_atypical=3 labels such cells 'Unassigned')")


EMPTY_CELLS_NOTE = ("cells with no counts on any of the model's genes are left unlabelled "
                    "(label missing, confidence and probabilities NaN)")


def _unlabelled_filled(n_cells: int, keep: np.ndarray, labels, conf, answers, probs):
    """Answers for all `n_cells` from those of the cells at `keep`: the others get no label, NaN
    confidence and probabilities, and an empty answer."""
    all_labels = np.full(n_cells, None, dtype=object)
    all_labels[keep] = labels
    all_conf = np.full(n_cells, np.nan)
    all_conf[keep] = conf
    all_answers = [""] * n_cells
    for i, answer in zip(keep, answers):
        all_answers[i] = answer
    all_probs = None
    if probs is not None:
        all_probs = np.full((n_cells, np.shape(probs)[1]), np.nan)
        all_probs[keep] = probs
    return all_labels, all_conf, all_answers, all_probs


def _unseen_context_notes(loaded: LoadedModel, task: str, fields: list[dict[str, str]], free_text: bool) -> list[str]:
    """One note per (species, tissue) of the cells that no label set of the checkpoint matches.

    Free answers for such cells range over every label the checkpoint knows, from every tissue;
    a user should hear that, and how to do better, rather than read blood labels off a liver."""
    what = task.replace("_", " ")
    if not loaded.labels_for_task(task):
        return [f"this checkpoint learned no {what} labels at all, so its answers are unconstrained text. "
                f"Pass candidates (the answers you expect) for answers you can weigh, or use a checkpoint "
                f"trained on a {what} set (train --catalog)."]
    notes = []
    for species, tissue in dict.fromkeys((f.get("species", ""), f.get("tissue", "")) for f in fields):
        if loaded.label_sets_for_context(task, species, tissue):
            continue
        scope = "unconstrained text" if free_text else f"all {len(loaded.labels_for_task(task))} labels it knows, from every tissue"
        notes.append(
            f"this checkpoint learned no {what} labels for {species or 'any species'} / "
            f"{tissue or 'any tissue'}; free answers for these cells range over {scope}. Pass candidates "
            f"(the labels you expect) for answers you can weigh, or name a tissue it knows: "
            f"{'; '.join(loaded.known_contexts(task))}."
            + (" Cell types it never learned can be named from their known markers: annotate_by_markers "
               "(CLI annotate --by-markers, MCP by_markers) with the types you expect as candidates"
               + _tissue_types_hint(tissue) + "." if task == "annotation" else ""))
    return notes


def _tissue_types_hint(tissue: str) -> str:
    """Where the tissue names an organ of the marker database: the candidates that name its types."""
    from .interpret.tissue_types import UnknownTissueError, tissue_cell_types

    try:
        types = tissue_cell_types(tissue) if tissue else []
    except UnknownTissueError:
        return ""
    more = f" and {len(types) - 6} more" if len(types) > 6 else ""
    return (f"; for {tissue}, ica.tissue_cell_types({tissue!r}) (CLI --tissue-types, MCP inspect_dataset's "
            f"tissue_cell_types) lists them: {', '.join(types[:6])}{more}") if types else ""


def unseen_drug_note(loaded: LoadedModel, drug: str) -> str | None:
    """A note when `drug` is none of the drugs the checkpoint learned responses to.

    Why: the shipped checkpoint learned one drug (erlotinib, aissa2021). Asked about cisplatin or
    paclitaxel instead, it gave the same answer as for erlotinib to all 109 of aissa2021's test
    cells (mean p(sensitive) 0.228 and 0.224 against 0.225; benchmarks/EXPERIMENTS.md): the drug's
    name does not reach the answer, so a response to an unseen drug must not pass unremarked."""
    known = sorted({str(e.get("drug")) for e in loaded.label_sets.values()
                    if e.get("task") == "drug_response" and e.get("drug")})
    if not known or " ".join(drug.split()).casefold() in {k.casefold() for k in known}:
        return None
    return (f"this checkpoint learned drug response for {', '.join(known)} only; {drug!r} was never seen, so the "
            f"answers rest on what it learned for {', '.join(known)} (the name of an unseen drug did not change "
            "its answers on the test cells). Fine-tune on a response set for that drug (train --catalog).")


def _prompt(loaded: LoadedModel, template: str, fields: dict[str, str], cands: list[str] | None) -> str:
    values = {**fields, "cell_type": "", "condition": ""}
    if cands is not None:
        # A fixed order keeps one shared prompt prefix for every cell (computed once).
        values["choices"] = ", ".join(cands)
    try:
        return loaded.model.prefix_text(render(template, values))
    except InstructionError:
        raise
    except KeyError as exc:
        raise InstructionError(f"the instruction uses a placeholder with no value: {exc}") from exc


def _batches(loaded: LoadedModel, X, texts: list[str], batch_size: int,
             progress: Callable[[int, int], None] | None = None):
    """(rows, prompt context, normalized expression) per batch; each distinct prompt read once.
    `progress` hears (cells done, total) once the caller has finished with a batch."""
    model = loaded.model
    for start in range(0, X.shape[0], batch_size):
        rows = np.arange(start, min(start + batch_size, X.shape[0]))
        batch_texts = [texts[r] for r in rows]
        uniq = sorted(set(batch_texts))
        ctx = model.start(uniq, torch.tensor([uniq.index(t) for t in batch_texts]))
        yield rows, ctx, model.normalize(torch.from_numpy(dense_rows(X, rows)).to(model.device))
        if progress is not None:
            progress(int(rows[-1]) + 1, X.shape[0])


def _score(loaded: LoadedModel, X, texts: list[str], labels: list[str], batch_size: int,
           decisive: bool = False, progress: Callable[[int, int], None] | None = None,
           expert: Readout | None = None, fast: bool = False,
           typical: Callable[..., np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood (cells x labels) of each label as the answer (of its decisive tokens only),
    plus the read-out's log-probability where `expert` is given (core_model/readout.py), divided
    by the checkpoint's confidence temperature for that mode (core_model/temperature.py; the best
    label of each cell is the same at any temperature, its probability is not); and which cells
    the read-out answered alone (bool per cell): with `fast`, where it can (core_model/readout_first.py),
    a cell it is sure of gets its log-probabilities instead and the language model never reads it,
    unless `typical` (count rows, their labels -> typicality) finds it unlike its label's training
    cells."""
    # one temperature per cell: shallow cells get a higher one where a depth term was fitted
    temperature = loaded.cell_temperatures(expert, labels, detected_genes(X))[:, None]
    if not fast or readout_first.why_not(expert, labels, loaded.label_lists) is not None:
        scores = _lm_scores(loaded, X, texts, labels, batch_size, decisive, progress, expert) / temperature
        return scores, np.zeros(X.shape[0], dtype=bool)
    scores = readout_first.at_weight(readout_first.readout_log_probs(loaded.model, X, expert, labels),
                                     readout_first.cell_weights(expert, X, labels))
    of_rows = None if typical is None else (lambda rows, named: typical(X[rows], named))
    alone = readout_first.sure_and_typical(scores, labels, of_rows)
    slow = np.flatnonzero(~alone)
    n_sure = X.shape[0] - len(slow)
    if progress is not None and n_sure:
        progress(n_sure, X.shape[0])
    if len(slow):
        tick = None if progress is None else (lambda d, _t: progress(n_sure + d, X.shape[0]))
        scores[slow] = _lm_scores(loaded, X[slow], [texts[i] for i in slow], labels, batch_size, decisive, tick,
                                  expert) / temperature[slow]
    return scores, alone


@torch.no_grad()
def _lm_scores(loaded: LoadedModel, X, texts: list[str], labels: list[str], batch_size: int, decisive: bool,
               progress: Callable[[int, int], None] | None, expert: Readout | None) -> np.ndarray:
    """The language model's scores, with the read-out's added where `expert` joins (unscaled)."""
    sets = loaded.label_lists
    scores = [answer_scores(loaded.model, ctx, expr, labels, decisive, expert, sets).cpu().numpy()
              for _, ctx, expr in _batches(loaded, X, texts, batch_size, progress)]
    return np.concatenate(scores).astype(np.float64)


def _choose_allowed(loaded: LoadedModel, X, texts: list[str], batch_size: int, allowed: list[list[str]],
                    decisive: bool, expert: Readout, progress: Callable[[int, int], None] | None = None,
                    fast: bool = False, typical: Callable[..., np.ndarray] | None = None):
    """Free answers chosen by scoring each cell's allowed labels with the read-out beside the LM
    (cells sharing an allowed list, usually all of them, are scored together); which cells the
    read-out answered alone (`fast`); and each group's (rows, labels, probabilities)."""
    labels: list[str] = [""] * X.shape[0]
    conf = [0.0] * X.shape[0]
    groups: dict[tuple[str, ...], list[int]] = {}
    for r, a in enumerate(allowed):
        groups.setdefault(tuple(a), []).append(r)
    done = 0
    alone = np.zeros(X.shape[0], dtype=bool)
    parts: list[Part] = []
    for group, rows in groups.items():
        tick = None if progress is None else (lambda d, _t, base=done: progress(base + d, X.shape[0]))
        scores, alone[rows] = _score(loaded, X[rows], [texts[r] for r in rows], list(group), batch_size,
                                     decisive, tick, expert, fast, typical)
        best, top, probs = _choose(scores, list(group), False)
        for r, b, c in zip(rows, best, top):
            labels[r], conf[r] = b, c
        parts.append((np.asarray(rows), list(group), probs))
        done += len(rows)
    return labels, conf, alone, parts


@torch.no_grad()
def _generate_answers(loaded: LoadedModel, X, texts: list[str], batch_size: int, allowed: list[list[str]] | None,
                      decisive: bool = False, progress: Callable[[int, int], None] | None = None):
    labels: list[str] = []
    conf: list[float] = []
    for rows, ctx, expr in _batches(loaded, X, texts, batch_size, progress):
        out, logp = loaded.model.generate(ctx, expr, return_logprob=True, decisive=decisive,
                                          allowed=[allowed[r] for r in rows] if allowed else None)
        labels += out
        conf += np.exp(logp).tolist()
    return labels, conf, list(labels)


def _choose(loglik: np.ndarray, cands: list[str], calibrate: bool):
    """Softmax over the candidates (after the opt-in label-prior correction); best label per cell."""
    if calibrate:
        loglik = label_prior_correction(loglik)
    probs = np.exp(loglik - loglik.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    best = probs.argmax(1)
    return [cands[i] for i in best], probs[np.arange(len(best)), best].tolist(), probs
