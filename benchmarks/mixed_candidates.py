"""Candidates mixing types the checkpoint learned with types it never learned: markers or strings.

A user annotating a tissue the checkpoint half knows lists its types: some the checkpoint learned
('T cell'), some it never saw ('Hepatocyte'). `ica.annotate` lets the unlearned ones' known
markers decide between each of them and the learned ones, and the model choose among the learned
ones (`CandidateRoute.gate`), the markers' say shrinking where the model's own learned answer fits
the cell well (its typicality; the plain gate, without that weight, beside it); `by_markers=False`
scores their names as strings instead (the peer: what `annotate` did before either gate). The
shared sets hold no labelled type the checkpoint never learned, so one is made: on each set's
split, the labels named by their Cell Ontology names, one type at a time is hidden from the
checkpoint (every learned label at or below its term is removed from the label sets and the
read-out, so the routing treats it as never learned). The language model still saw those cells
in training, which can only help the strings (the peer) tell them.

Per trial: macro-F1 over the set's labels, the hidden type's recall, accuracy on the other cells,
and the share of the other cells given the hidden type; beside them the marker route alone
(`annotate_by_markers`) and the checkpoint with nothing hidden (its ceiling). Then the other
risk: every type learned, three types of other organs (absent from every file) among the
candidates; how many cells the markers hand to one.

The gate is computed here from the strings' probabilities, their typicality and the markers'
probabilities (what `annotate` does inside), and checked against `annotate`'s own answers on one
trial per set.

    python benchmarks/mixed_candidates.py [--split test] [--sets a,b] [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import f1_score

import instructcell_agent as ica
from instructcell_agent.core_model.candidate_route import route_candidates
from instructcell_agent.core_model.datasets import load_catalog, shared_root
from instructcell_agent.core_model.io import read_h5ad
from instructcell_agent.core_model.labels import ontology_ancestors, ontology_id
from marker_annotation import LIVER, LIVER_CANDIDATES, split_cells
from renamed_candidates import renamings
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("mixed_candidates")
ABSENT = ["Hepatocytes", "Astrocytes", "Cardiomyocytes"]  # PanglaoDB types of organs no shared set comes from
METHODS = ("strings", "gate", "plain_gate", "marker_led", "markers", "nothing_hidden")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="test")
    p.add_argument("--sets", default="", help="comma-separated set names (default: every annotation set)")
    p.add_argument("--checkpoint", type=Path, default=ica.default_checkpoint_path())
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--stem", default="")
    return p.parse_args(argv)


def hidden(model, term: str):
    """A view of `model` that never learned `term`: every label at or below it leaves the label
    sets, and the read-out no longer finds it (its row is renamed, so the matrix is untouched)."""
    below = {label for e in model.label_sets.values() for label in e["labels"]
             if (t := ontology_id(label)) and (t == term or term in ontology_ancestors(t))}
    sets = {name: {**e, "labels": [label for label in e["labels"] if label not in below]}
            for name, e in model.label_sets.items()}
    readout = model.readout
    if readout is not None:
        readout = dataclasses.replace(readout, labels=[f"\0hidden {label}" if label in below else label
                                                       for label in readout.labels])
    return dataclasses.replace(model, label_sets=sets, readout=readout)


def quiet_annotate(cells, model, names, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ica.annotate(cells, model=model, candidates=names, **options)


def quiet_markers(cells, model, names):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ica.annotate_by_markers(cells, names, model=model)


def picked(probs: np.ndarray, names: Sequence[str]) -> np.ndarray:
    return np.asarray(names)[np.nan_to_num(probs, nan=-1.0).argmax(1)]


def marker_led(probs: np.ndarray, marker_probs: np.ndarray, typicality: np.ndarray) -> np.ndarray:
    """A variant of the gate (exploratory, not `annotate`'s): the markers' own probabilities over
    every candidate, learned ones too, weighed as the gate weighs the markers (1 / (1 + exp(t)), 1
    where t is NaN) against the model's; cells the markers could not score keep the model's. Where
    a cell is unlike its learned answer's training cells the markers then choose among the learned
    types as well (benchmarks/EXPERIMENTS.md, 2026-12-06: progenitors answered 'T cells')."""
    weight = 1.0 / (1.0 + np.exp(np.clip(np.asarray(typicality, dtype=np.float64), -50.0, 50.0)))
    weight = np.where(np.isnan(weight), 1.0, weight)[:, None]
    scored = np.isfinite(marker_probs).all(1, keepdims=True)
    return np.where(scored, weight * np.nan_to_num(marker_probs) + (1.0 - weight) * probs, probs)


def measures(truth: np.ndarray, answers: np.ndarray, hide: str | None, absent: Sequence[str] = ()) -> dict[str, float]:
    out = {"macro_f1": float(f1_score(truth, answers, average="macro", labels=sorted(set(truth)), zero_division=0)),
           "accuracy": float((answers == truth).mean())}
    if hide is not None:
        rest = truth != hide
        out.update(hidden_recall=float((answers[~rest] == hide).mean()),
                   others_accuracy=float((answers[rest] == truth[rest]).mean()),
                   others_given_hidden=float((answers[rest] == hide).mean()))
    if absent:
        out["given_absent"] = float(np.isin(answers, list(absent)).mean())
    return out


def run_set(model, spec, split: str) -> dict[str, Any] | None:
    own = sorted(set(model.label_set(spec.name)["labels"]))
    renamed = renamings(own, set(model.labels_for_task("annotation")))
    if renamed is None:
        return None
    names = renamed["cl_names"]
    cells, truth = split_cells(spec, split)
    named = np.array([names[own.index(t)] for t in truth])
    start = time.perf_counter()
    markers = quiet_markers(cells, model, names)
    by_markers = picked(markers.probabilities[names].to_numpy(), names)
    ceiling = np.asarray(quiet_annotate(cells, model, names).labels, str)
    row: dict[str, Any] = {"dataset": spec.name, "n_cells": int(cells.n_obs), "names": names, "trials": [],
                           "nothing_hidden": measures(named, ceiling, None)}
    checked = False
    for hide in names:
        if hide not in named:
            continue
        view = hidden(model, ontology_id(hide))
        route = route_candidates(names, view.label_sets)
        strings = quiet_annotate(cells, view, names, by_markers=False)
        probs, marker_probs = strings.probabilities[names].to_numpy(), markers.probabilities[names].to_numpy()
        # the strings' typicality is the model's own learned answer's, which annotate weighs the gate by
        gated = picked(route.gate(probs, marker_probs, np.asarray(strings.typicality, float)), names)
        plain = picked(route.gate(probs, marker_probs), names)
        led = picked(marker_led(probs, marker_probs, np.asarray(strings.typicality, float)), names)
        if not checked:  # the gate as annotate applies it, on one trial per set
            direct = np.asarray(quiet_annotate(cells, view, names).labels, str)
            row["checked_against_annotate"] = {"hidden": hide, "same_answers": int((direct == gated).sum()),
                                               "cells": int(cells.n_obs)}
            checked = True
        trial = {"hidden": hide, "n_hidden": int((named == hide).sum()), "route": route.kind,
                 "strings": measures(named, picked(probs, names), hide), "gate": measures(named, gated, hide),
                 "plain_gate": measures(named, plain, hide), "marker_led": measures(named, led, hide),
                 "markers": measures(named, by_markers, hide),
                 "nothing_hidden": measures(named, ceiling, hide)}
        row["trials"].append(trial)
        logger.info("%s, %s hidden: macro-F1 strings %.3f, gate %.3f, markers %.3f, nothing hidden %.3f",
                    spec.name, hide, trial["strings"]["macro_f1"], trial["gate"]["macro_f1"],
                    trial["markers"]["macro_f1"], trial["nothing_hidden"]["macro_f1"])
    cands = names + ABSENT
    absent_markers = quiet_markers(cells, model, cands)
    strings = quiet_annotate(cells, model, cands, by_markers=False)
    gated = quiet_annotate(cells, model, cands)  # annotate's own gate
    route = route_candidates(cands, model.label_sets)
    plain = picked(route.gate(strings.probabilities[cands].to_numpy(), absent_markers.probabilities[cands].to_numpy()),
                   cands)
    row["absent_types"] = {"strings": measures(named, np.asarray(strings.labels, str), None, ABSENT),
                           "gate": measures(named, np.asarray(gated.labels, str), None, ABSENT),
                           "plain_gate": measures(named, plain, None, ABSENT),
                           "marker_led": measures(named, picked(marker_led(
                               strings.probabilities[cands].to_numpy(), absent_markers.probabilities[cands].to_numpy(),
                               np.asarray(strings.typicality, float)), cands), None, ABSENT),
                           "markers": measures(named, picked(absent_markers.probabilities[cands].to_numpy(), cands),
                                               None, ABSENT),
                           "gate_route": gated.provenance["candidate_route"],
                           "gated": "marker_gate" in gated.provenance}
    row["seconds"] = time.perf_counter() - start
    return row


def run_liver(model) -> list[dict[str, Any]]:
    """The reference system's 20-cell liver file (immune and endothelial cells, types the model
    learned), with candidate lists naming liver types too: agreement with its labels."""
    cells = read_h5ad(shared_root() / LIVER)
    known = cells.obs["cell_type"]
    rows = []
    for what, cands in LIVER_CANDIDATES:
        strings = quiet_annotate(cells, model, cands, by_markers=False)
        gated = quiet_annotate(cells, model, cands)
        rows.append({"candidates": what, "names": cands, "strings": strings.agreement(known).agreement,
                     "gate": gated.agreement(known).agreement, "route": gated.provenance["candidate_route"],
                     "gated": "marker_gate" in gated.provenance})
        logger.info("liver, %s: strings %.2f, default %.2f", what, rows[-1]["strings"], rows[-1]["gate"])
    return rows


def mean_of(rows: list[dict[str, Any]], method: str, key: str) -> float:
    values = [t[method][key] for r in rows for t in r["trials"]]
    return float(np.mean(values)) if values else float("nan")


def render(report: dict[str, Any]) -> str:
    rows = report["sets"]
    n_trials = sum(len(r["trials"]) for r in rows)
    lines = ["# Candidates mixing learned and unlearned types: known markers or names scored as strings", "",
             *meta_lines(report["meta"]), f"- checkpoint: `{report['checkpoint']}`, float32; split: {report['split']}",
             "- candidates: each set's labels by their Cell Ontology names (sets with a label without a term left "
             "out); one type at a time hidden from the checkpoint (its learned labels and those below it removed from "
             "the label sets and the read-out), so routing treats it as never learned",
             "- strings: `ica.annotate(..., by_markers=False)`, the hidden type's name scored as a string; "
             "plain gate: the markers decide the hidden type against the learned ones, the model among those "
             "(`annotate`'s default from 2026-12-06 01:55); gate: the same, weighed by how well the model's own "
             "learned answer fits the cell (markers' weight 1 / (1 + exp(typicality)); `annotate`'s default since "
             "2026-12-06 04:00); marker led (a variant, not `annotate`'s): the markers' own probabilities over every "
             "candidate, learned ones too, with the gate's weight, against the model's; markers: "
             "`annotate_by_markers` alone; nothing hidden: the checkpoint as shipped (the ceiling)",
             "- checked: " + "; ".join(f"{r['dataset']}: {r['checked_against_annotate']['same_answers']} of "
                                       f"{r['checked_against_annotate']['cells']} cells as `annotate` answers"
                                       for r in rows if "checked_against_annotate" in r), "",
             f"## One type hidden at a time: mean over {n_trials} trials", "",
             "| method | macro-F1 | hidden type's recall | other cells' accuracy | other cells given the hidden type |",
             "| --- | --- | --- | --- | --- |"]
    for method in METHODS:
        lines.append(f"| {method.replace('_', ' ')} | {mean_of(rows, method, 'macro_f1'):.3f} | "
                     f"{mean_of(rows, method, 'hidden_recall'):.3f} | {mean_of(rows, method, 'others_accuracy'):.3f} "
                     f"| {mean_of(rows, method, 'others_given_hidden'):.3f} |")
    lines += ["", "## Per set: mean macro-F1 over its trials", "",
              "| dataset | cells | trials | " + " | ".join(m.replace("_", " ") for m in METHODS) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in METHODS) + " |"]
    for r in rows:
        means = [mean_of([r], m, "macro_f1") for m in METHODS]
        lines.append(f"| {r['dataset']} | {r['n_cells']} | {len(r['trials'])} | "
                     + " | ".join(f"{v:.3f}" for v in means) + " |")
    lines += ["", "## Every trial: hidden type (cells): macro-F1 and its recall", "",
              "| dataset | hidden type | cells | strings F1 / recall | gate F1 / recall | plain gate F1 / recall "
              "| marker led F1 / recall | markers F1 / recall |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        for t in r["trials"]:
            lines.append(f"| {r['dataset']} | {t['hidden']} | {t['n_hidden']} | " + " | ".join(
                f"{t[m]['macro_f1']:.3f} / {t[m]['hidden_recall']:.2f}"
                for m in ("strings", "gate", "plain_gate", "marker_led", "markers")) + " |")
    lines += ["", f"## Nothing hidden, three absent types among the candidates ({', '.join(ABSENT)})", "",
              "macro-F1 over the set's labels / share of the cells given an absent type.", "",
              "| dataset | strings | gate | plain gate | marker led | markers alone |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        a = r["absent_types"]
        lines.append(f"| {r['dataset']} | " + " | ".join(
            f"{a[m]['macro_f1']:.3f} / {a[m]['given_absent']:.3f}" if m in a else "-"
            for m in ("strings", "gate", "plain_gate", "marker_led", "markers")) + " |")
    absent = {m: float(np.mean([r["absent_types"][m]["macro_f1"] for r in rows]))
              for m in ("strings", "gate", "plain_gate", "marker_led")}
    given = {m: float(np.mean([r["absent_types"][m]["given_absent"] for r in rows]))
             for m in ("gate", "plain_gate", "marker_led")}
    lines += ["", f"Mean over the sets: macro-F1 {absent['strings']:.3f} with strings, {absent['gate']:.3f} with the "
              f"gate, which gave an absent type to {given['gate']:.3f} of the cells, {absent['plain_gate']:.3f} with "
              f"the plain gate ({given['plain_gate']:.3f} of the cells), {absent['marker_led']:.3f} marker led "
              f"({given['marker_led']:.3f} of the cells)."]
    lines += ["", "## The reference system's 20-cell liver demo file", "",
              "Agreement with the file's `cell_type`, answers read through the Cell Ontology ('Kupffer cell' "
              "counts for 'Macrophage'); its cells are immune and endothelial, types the model learned.", "",
              "| candidates | strings | default (gate where the candidates mix) | route |", "| --- | --- | --- | --- |"]
    for r in report["liver"]:
        lines.append(f"| {r['candidates']} | {r['strings']:.2f} | {r['gate']:.2f} | {r['route']}"
                     f"{', markers decided the unlearned types' if r['gated'] else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    meta = run_meta(shlex.join(["python", *sys.argv]))
    wanted = set(filter(None, args.sets.split(",")))
    specs = [s for s in load_catalog(tasks=("annotation",)) if not wanted or s.name in wanted]
    model = ica.load_model(args.checkpoint, precision="float32")
    rows = [row for spec in specs if (row := run_set(model, spec, args.split)) is not None]
    report = {"meta": meta, "checkpoint": str(args.checkpoint), "split": args.split, "sets": rows,
              "liver": run_liver(model)}
    path = write_report(report, render(report), args.out_dir, args.stem or f"mixed_candidates_{args.split}")
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
