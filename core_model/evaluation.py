"""Evaluate a checkpoint on a labelled split, the way a user would meet it: each test cell paired
with a random phrasing; with options the candidates are scored, without options the answer
(decoded, or with the checkpoint's read-out chosen by scoring the labels it learned) is mapped onto
the label set (exact, then Cell Ontology synonyms) or counted invalid."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from .calibration import label_prior_correction
from .checkpoint import LoadedModel
from .corpus import dense_rows
from .alignment import align_to_vocab
from .datasets import prompt_fields, split_names, subset_by_names
from .instructions import format_choices, has_choices, load_bank, render
from .errors import InputFileError
from .hierarchy import check_resolve_at, count_right, resolve
from .io import get_labels
from .labels import LabelMapper
from .readers import read_cells
from .readout import Readout, answer_scores, readout_name
from .scoring import check_scoring, scoring_name, use_decisive
from .temperature import summary
from .temperature_depth import detected_genes

INVALID = "<invalid>"
BANK_OF_TASK = {"cta": "annotation", "dsp": "drug_response"}


@dataclass
class Predictions:
    truth: np.ndarray
    predicted: np.ndarray  # label or INVALID
    with_options: np.ndarray  # bool per cell
    answers: list[str]
    seconds: float
    # each cell's answer scores (over the labels it was chosen among), None where it was decoded:
    # what its confidence is a softmax of (core_model/temperature.py)
    score_rows: list[np.ndarray | None] | None = None
    score_labels: list[Sequence[str] | None] | None = None  # the labels each score row's columns stand for


def predict_split(loaded: LoadedModel, X, fields: list[dict[str, str]], truth: np.ndarray, labels: Sequence[str],
                  phrasings: Sequence[str], seed: int, batch_size: int = 32,
                  answers: Sequence[Sequence[str]] | None = None, calibrate: bool = False,
                  decisive: bool = False, readout: Readout | None = None,
                  label_lists: Sequence[Sequence[str]] = ()) -> Predictions:
    """Answer every cell with its own randomly drawn phrasing (seeded).

    Questions without options are answered by greedy decoding constrained to `answers[i]` for
    cell i (the labels the checkpoint learned to name for the cell's species and tissue; None =
    unconstrained), and the text is then mapped onto `labels`; the dataset's own label set is
    never shown to the model there.
    With `calibrate`, scored answers get the batch label-prior correction (core_model/calibration.py)
    over all cells asked with options. With `decisive`, candidates are scored, and constrained
    answers decoded, on their decisive tokens only (`CellLanguageModel.score_candidates`).
    """
    model = loaded.model
    allowed = list(answers) if answers else None
    rng = random.Random(seed)
    labels = list(labels)
    mapper = LabelMapper(tuple(labels))
    prompts, options = [], []
    for i in range(X.shape[0]):
        template = rng.choice(list(phrasings))
        values = {**fields[i], "cell_type": "", "condition": ""}
        if has_choices(template):
            values["choices"] = format_choices(labels, rng)
        prompts.append(model.prefix_text(render(template, values)))
        options.append(has_choices(template))
    options_arr = np.array(options)
    predicted = np.empty(X.shape[0], dtype=object)
    answers = [""] * X.shape[0]
    score_rows: list[np.ndarray | None] = [None] * X.shape[0]
    score_labels: list[Sequence[str] | None] = [None] * X.shape[0]
    scored_rows, scored = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for flag in (True, False):
            idx = np.flatnonzero(options_arr == flag)
            for b in range(0, len(idx), batch_size):
                rows = idx[b : b + batch_size]
                texts = [prompts[r] for r in rows]
                uniq = sorted(set(texts))
                ctx = model.start(uniq, torch.tensor([uniq.index(t) for t in texts]))
                expr = model.normalize(torch.from_numpy(dense_rows(X, rows)).to(model.device))
                if flag:
                    scores = answer_scores(model, ctx, expr, labels, decisive, readout, label_lists)
                    scored_rows.extend(rows.tolist())
                    scored.append(scores.float().cpu().numpy())
                    out = [labels[j] for j in scores.argmax(1).tolist()]
                    got = out
                elif readout is not None and allowed and _shared_allowed(allowed, rows, readout):
                    choices = list(allowed[rows[0]])
                    chosen = answer_scores(model, ctx, expr, choices, decisive, readout, label_lists)
                    out = [choices[j] for j in chosen.argmax(1).tolist()]
                    got = [mapper.map(a) or INVALID for a in out]
                    for r, row in zip(rows, chosen.float().cpu().numpy()):
                        score_rows[r], score_labels[r] = row, choices
                else:
                    out = model.generate(ctx, expr, allowed=[allowed[r] for r in rows] if allowed else None,
                                         decisive=decisive)
                    got = [mapper.map(a) or INVALID for a in out]
                for r, a, g in zip(rows, out, got):
                    answers[r], predicted[r] = a, g
    if scored:
        matrix = np.concatenate(scored)
        if calibrate:
            matrix = label_prior_correction(matrix)
            for r, j in zip(scored_rows, matrix.argmax(1)):
                answers[r] = predicted[r] = labels[j]
        for r, row in zip(scored_rows, matrix):
            score_rows[r], score_labels[r] = row, labels
    return Predictions(truth, predicted.astype(str), options_arr, answers, time.perf_counter() - start, score_rows,
                       score_labels)


def _shared_allowed(allowed: Sequence[Sequence[str]], rows: np.ndarray, readout: Readout) -> bool:
    """Whether the batch's cells share one allowed list that the read-out covers (cells of one
    dataset do; otherwise the batch is decoded without the read-out)."""
    first = list(allowed[rows[0]])
    return readout.covers(first) and all(list(allowed[r]) == first for r in rows)


def scored_cells(preds: Predictions) -> tuple[list[np.ndarray], np.ndarray, list[int]]:
    """The score rows of the cells whose answer was scored (decoded answers have none), whether
    each of those answers was right, and the column of each cell's true label in its row (-1
    when the row does not hold it)."""
    keep = [i for i, row in enumerate(preds.score_rows or []) if row is not None]
    columns = [list(preds.score_labels[i]).index(preds.truth[i]) if preds.truth[i] in preds.score_labels[i] else -1
               for i in keep]
    return [preds.score_rows[i] for i in keep], preds.predicted[keep] == preds.truth[keep], columns


def confidence_summary(preds: Predictions, temperature: float | np.ndarray) -> dict[str, Any]:
    """How well the confidences of scored answers match their accuracy, at `temperature`
    (core_model/temperature.py; one, or one per cell of the split)."""
    rows, correct, _ = scored_cells(preds)
    if np.ndim(temperature):
        temperature = np.asarray(temperature)[[i for i, r in enumerate(preds.score_rows or []) if r is not None]]
    return {**summary(rows, correct, temperature),
            "definition": "top-label probability of scored answers; calibration_error: 10 equal-width bins"}


def resolved_summary(preds: Predictions, temperature: float | np.ndarray, at: float) -> dict[str, Any]:
    """`resolve_at` over the scored answers (core_model/hierarchy.py): how many cells reach the
    bar at their label, how many as a broader type, how many do not, and how often each is right
    for the cell's label (a broader type when the label falls under it). Decoded answers have no
    probabilities to sum: counted, not resolved."""
    rows = preds.score_rows or [None] * len(preds.truth)
    per_cell = np.broadcast_to(np.asarray(temperature, dtype=np.float64), (len(preds.truth),))
    # with options each cell lists the labels in its own order: rows are put in one (sorted) order
    # per label set, so each set's types are worked out once
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, row in enumerate(rows):
        if row is not None:
            groups.setdefault(tuple(sorted(preds.score_labels[i])), []).append(i)
    out = {"at": at, "n_label": 0, "right_label": 0, "n_broader": 0, "right_broader": 0, "n_unassigned": 0,
           "n_decoded": sum(row is None for row in rows)}
    for labels, cells in groups.items():
        order = [[list(preds.score_labels[i]).index(label) for label in labels] for i in cells]
        z = np.stack([np.asarray(rows[i])[o] for i, o in zip(cells, order)]).astype(np.float64)
        z /= per_cell[cells][:, None]
        probs = np.exp(z - z.max(1, keepdims=True))  # -inf scores (labels ruled out) get 0
        found = resolve(probs / probs.sum(1, keepdims=True), labels, at)
        for key, value in count_right(found.names, found.levels, preds.truth[cells]).items():
            out[key] += value
    answered = out["n_label"] + out["n_broader"]
    out["accuracy"] = (out["right_label"] + out["right_broader"]) / answered if answered else None
    return out


def metrics(truth: np.ndarray, predicted: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted F1 over the dataset's labels (an invalid answer is a wrong one)."""
    if len(truth) == 0:
        return {"n_cells": 0}
    labels = list(labels)
    return {
        "n_cells": int(len(truth)),
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(truth, predicted, labels=labels, average="weighted", zero_division=0)),
        "invalid_rate": float(np.mean(predicted == INVALID)),
        "per_label_f1": dict(zip(map(str, labels), map(float, f1_score(truth, predicted, labels=labels, average=None, zero_division=0)))),
    }


def evaluate(loaded: LoadedModel, data: str | Path, split_path: str | Path | None, task: str, label_key: str, *,
             instructions: Sequence[str] | None = None, n_instructions: int | None = None, seed: int = 0,
             split: str = "test", batch_size: int = 32, calibrate: bool = False,
             keep_predictions: bool = False, scoring: str = "auto", readout: bool = True,
             keep_scores: bool = False, drug: str | None = None, genome: str | None = None,
             resolve_at: float | None = None) -> dict[str, Any]:
    """Metrics of `loaded` on one split of a labelled .h5ad (the `instructcell evaluate` job).

    `scoring` as in `annotate`: "auto" scores decisive tokens when every label of the dataset is
    one the checkpoint learned to write, else every token (core_model/scoring.py). `readout` as in
    `annotate`: the checkpoint's linear gene read-out joins the language model where it has one.

    With `keep_predictions`, ``result["cells"]`` holds each cell's obs name, truth and answer
    (mapped to a label, or ``<invalid>``), for paired comparisons with other classifiers. With
    `keep_scores`, ``result["score_rows"]`` holds each scored cell's answer scores (arrays, not
    JSON), ``result["correct"]`` whether its answer was right (core_model/temperature_fit.py),
    ``result["truth_columns"]`` its true label's column in the row (-1: not among them) and
    ``result["scored_cells"]`` its position among the split's cells, ``result["scored_genes"]``
    its detected vocabulary genes.

    `drug` names the drug of a `dsp` file (else obs['drug'], else the checkpoint's record of a set
    of the file's name); a drug-response phrasing without one is refused. `genome`: the species of
    a multi-genome matrix to read (core_model/genomes.py). `resolve_at` (cell types): also
    ``result["resolved"]``, each scored cell's finest answer reaching that probability
    (`resolved_summary`).
    """
    if task not in BANK_OF_TASK:
        raise ValueError(f"task must be one of {sorted(BANK_OF_TASK)}, got {task!r}")
    if resolve_at is not None:
        if task != "cta":
            raise ValueError("resolve_at is for cell types (--task cta)")
        check_resolve_at(resolve_at)
    check_scoring(scoring)
    adata = read_cells(data, genome=genome)
    all_labels = sorted(set(get_labels(adata, label_key)))
    if split_path is not None:
        adata = subset_by_names(adata, split_names(split_path, split), split)
    truth = get_labels(adata, label_key)
    aligned = align_to_vocab(adata, loaded.vocab)
    known = loaded.label_sets.get(Path(data).stem, {})
    given = {k: known.get(k, "") for k in ("tissue", "species", "sequencing_method", "drug")
             if k not in adata.obs.columns}
    fields = prompt_fields(adata, None, **{**given, **({"drug": drug} if drug else {})})
    if task == "dsp" and not all(f.get("drug") for f in fields):
        raise InputFileError(f"{sum(not f.get('drug') for f in fields):,} cells have no drug to name in the "
                             "drug-response phrasings: pass the drug (CLI --drug) or add an obs column 'drug'")
    source = "checkpoint valid phrasings" if instructions is None else "user file"
    phrasings = list(instructions) if instructions is not None else list(load_bank(BANK_OF_TASK[task]).valid)
    if n_instructions is not None and n_instructions < len(phrasings):
        phrasings = random.Random(seed).sample(phrasings, n_instructions)
    decisive = use_decisive(scoring, set(all_labels) <= set(loaded.labels_for_task(BANK_OF_TASK[task])))
    expert = loaded.readout_for(aligned.matched) if readout else None
    preds = predict_split(loaded, aligned.X, fields, truth, all_labels, phrasings, seed, batch_size,
                          answers=loaded.labels_for_cells(BANK_OF_TASK[task], fields), calibrate=calibrate,
                          decisive=decisive, readout=expert, label_lists=loaded.label_lists)
    # one temperature per cell: shallow cells get a higher one where a depth term was fitted
    genes = detected_genes(aligned.X)
    temperatures = loaded.cell_temperatures(expert, all_labels, genes)
    result = {
        **metrics(preds.truth, preds.predicted, all_labels),
        "n_instructions": len(phrasings),
        "instructions_source": source,
        "calibration": "batch label-prior correction of scored answers" if calibrate else "none",
        "with_options": metrics(preds.truth[preds.with_options], preds.predicted[preds.with_options], all_labels),
        "without_options": metrics(preds.truth[~preds.with_options], preds.predicted[~preds.with_options], all_labels),
        "cells_per_second": float(len(truth) / max(preds.seconds, 1e-9)),
        "task": task, "data": str(data), "split": split, "seed": seed, "label_key": label_key,
        "labels": all_labels, "alignment": aligned.report.to_dict(),
        "checkpoint": str(loaded.path) if loaded.path else None,
        "precision": loaded.model.precision,
        "scoring": scoring_name(decisive),
        "readout": readout_name(expert, all_labels),
        "invalid_examples": sorted({a for a, p in zip(preds.answers, preds.predicted) if p == "<invalid>"})[:20],
        # the dataset's labels decide the mode: learned ones are scored with the read-out on both
        # routes (options listed or not)
        "confidence": confidence_summary(preds, temperatures),
        "macro_f1_definition": "sklearn macro F1 over the dataset's label set; invalid answers count as wrong",
    }
    if resolve_at is not None:
        result["resolved"] = resolved_summary(preds, temperatures, resolve_at)
    if keep_scores:
        result["score_rows"], correct, result["truth_columns"] = scored_cells(preds)
        result["correct"] = correct.tolist()
        result["scored_cells"] = [i for i, row in enumerate(preds.score_rows or []) if row is not None]
        result["scored_genes"] = genes[result["scored_cells"]].tolist()  # the depth term's input
    if keep_predictions:
        result["cells"] = {"obs_names": [str(n) for n in adata.obs_names], "truth": [str(t) for t in preds.truth],
                           "predicted": [str(p) for p in preds.predicted]}
    return result
