"""Cell types from known markers alone (`annotate_by_markers`) on the shared splits, beside the model.

The marker route exists for candidates the model never learned, which no shared labelled set
holds (every one of them trained the model). What can be measured is how well the route names
cell types it was never fitted to: it learns nothing from any set; the database and our label
table are its only inputs, and two settings are chosen on the valid splits here:

1. valid splits, PanglaoDB: how a candidate's markers are pooled into one score (`mean` or
   `ztest` of their z-scores over the file's cells, `rank` within each cell, or `both` z-tests
   summed), by mean macro-F1 over the nine cell-type sets with five distractors (types of other
   organs) added to each set's labels; then the softmax temperature by log loss over their pooled
   cells, own labels;
2. test splits, with those settings: the route with PanglaoDB and with CellMarker 2.0 (accuracy,
   macro-F1, expected calibration error, cells per second), and in the same run the model with
   the set's labels as candidates (`ica.annotate`, float32): what training on the set buys; and
   scanpy's `score_genes` on the same genes and markers (the usual way to score a gene set per
   cell), each cell given its top candidate; then all with the distractors added (how often a
   cell is given a type absent from the file); then the labels renamed to their Cell Ontology
   names, answered by the route and by the model scoring those names as strings (what it does
   with names it cannot route);
3. the reference system's 20-cell liver demo file (a tissue the model never saw) with three
   candidate lists, the route beside the model.

    python benchmarks/marker_annotation.py [--checkpoint DIR] [--out-dir benchmarks/results]

Writes ``marker_annotation.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.metrics import f1_score

import instructcell_agent as ica
from instructcell_agent.core_model.cell_encoder import log_normalize_csr
from instructcell_agent.core_model.datasets import load_catalog, read_split, shared_root, subset_by_names
from instructcell_agent.core_model.io import get_labels, read_h5ad
from instructcell_agent.core_model.temperature import calibration_error
from instructcell_agent.interpret import marker_annotation as route
from instructcell_agent.interpret.marker_check import model_genes
from instructcell_agent.interpret.markers import load_marker_db
from renamed_candidates import renamings, scored_as_text
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("marker_annotation")
POOLINGS = route.POOLINGS
# PanglaoDB types of organs no shared set comes from: candidates absent from every file
DISTRACTORS = ["Hepatocytes", "Cholangiocytes", "Astrocytes", "Cardiomyocytes", "Podocytes"]
UNSCORED = np.log(1e-300) + 1  # the log of a probability clipped from 0
TEMPERATURES = np.round(np.geomspace(0.05, 2.0, 41), 4)
LIVER = "data/compat/he2020_liver_instructcell_demo.h5ad"
LIVER_CANDIDATES = (
    ("the file's own five labels", ["Macrophage", "T Cell", "Monocyte", "B Cell", "Endothelial Cell"]),
    ("'Kupffer cell' for 'Macrophage'", ["Kupffer cell", "T Cell", "Monocyte", "B Cell", "Endothelial Cell"]),
    ("eight liver types (three absent from the file)", ["Kupffer cell", "T cell", "Monocyte", "B cell",
                                                        "Endothelial cell", "Hepatocyte", "Cholangiocyte",
                                                        "Hepatic stellate cell"]),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=ica.default_checkpoint_path())
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--stem", default="marker_annotation")
    return p.parse_args(argv)


def split_cells(spec, split: str):
    cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)[split], split)
    return cells, np.asarray(get_labels(cells, spec.label_key), str)


def by_markers(cells, labels: list[str], **kwargs):
    """(result, seconds) of the marker route."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = route.annotate_by_markers(cells, labels, **kwargs)
    return result, time.perf_counter() - start


def plain_scores(truth: np.ndarray, answers: np.ndarray, seconds: float) -> dict[str, Any]:
    """Accuracy, macro-F1 and cells per second of answers that come without confidences."""
    return {"accuracy": float((answers == truth).mean()), "cells_per_s": len(truth) / seconds,
            "macro_f1": float(f1_score(truth, answers, average="macro", labels=sorted(set(truth)), zero_division=0))}


def scores(truth: np.ndarray, result, seconds: float) -> dict[str, Any]:
    answers = np.asarray(result.labels, str)
    conf = np.asarray(result.confidence, float)
    return {"accuracy": float((answers == truth).mean()),
            "macro_f1": float(f1_score(truth, answers, average="macro", labels=sorted(set(truth)), zero_division=0)),
            "ece": float(calibration_error(conf, answers == truth)), "mean_confidence": float(conf.mean()),
            "cells_per_s": len(truth) / seconds}


def _absent(result) -> float:
    """Share of the cells answered with a distractor, a type absent from every shared set."""
    return float(np.isin(np.asarray(result.labels, str), DISTRACTORS).mean())


def tune_on_valid(specs) -> dict[str, Any]:
    """The pooling by mean valid macro-F1 with the distractors added to the set's labels
    (a user lists types that may be absent), then the temperature by pooled valid log loss with the
    own labels."""
    settings = list(POOLINGS)
    f1 = {k: [] for k in settings}
    f1_distracted = {k: [] for k in settings}
    absent = {k: [] for k in settings}
    logp_at_1 = {k: [] for k in settings}  # per cell, log-softmax of the scores at temperature 1
    truth_idx = []
    for spec in specs:
        cells, truth = split_cells(spec, "valid")
        labels = list(spec.classes)
        truth_idx.append(np.array([labels.index(t) for t in truth]))
        for pooling in settings:
            result, _ = by_markers(cells, labels, pooling=pooling, temperature=1.0)
            f1[pooling].append(scores(truth, result, 1.0)["macro_f1"])
            logp_at_1[pooling].append(np.log(result.probabilities.to_numpy().clip(1e-300)))
            result, _ = by_markers(cells, labels + DISTRACTORS, pooling=pooling, temperature=1.0)
            f1_distracted[pooling].append(scores(truth, result, 1.0)["macro_f1"])
            absent[pooling].append(_absent(result))
        logger.info("valid %s: macro-F1 own / with distractors %s", spec.name,
                    {p: (round(f1[p][-1], 3), round(f1_distracted[p][-1], 3)) for p in settings})
    # users list the types a tissue may hold, some of them absent from their file: the setting is
    # chosen by macro-F1 with the distractors among the candidates (own labels alone break ties)
    chosen = max(settings, key=lambda k: (round(float(np.mean(f1_distracted[k])), 3), np.mean(f1[k])))
    loss = {}
    for t in TEMPERATURES:
        total, n = 0.0, 0
        for logp, idx in zip(logp_at_1[chosen], truth_idx):
            # cells of a label none of whose markers the file holds (wang2016's 219 genes) are
            # wrong at any temperature: left out of the fit
            fit = logp[np.arange(len(idx)), idx] > UNSCORED
            logp, idx = logp[fit], idx[fit]
            z = logp / t  # log-softmax at 1 differs from the scores by a per-cell constant
            z = z - z.max(1, keepdims=True)
            lse = np.log(np.exp(z).sum(1))
            total += float((lse - z[np.arange(len(idx)), idx]).sum())
            n += len(idx)
        loss[float(t)] = total / n
    temperature = min(loss, key=loss.get)
    table = [{"pooling": p, "macro_f1": float(np.mean(f1[p])), "macro_f1_distracted": float(np.mean(f1_distracted[p])),
              "absent": float(np.mean(absent[p]))} for p in settings]
    return {"settings": table, "pooling": chosen, "temperature": temperature,
            "log_loss": loss[temperature], "sets": [s.name for s in specs]}


def score_genes_answers(cells, result):
    """The peer: scanpy's `score_genes` (Seurat's AddModuleScore: the markers' mean expression less
    that of control genes of matched expression) on the same cells, genes and markers as the
    route's `result`, each cell given its highest-scoring candidate."""
    start = time.perf_counter()
    found = result.provenance["markers"]
    db = load_marker_db(result.provenance["marker_db"])
    wanted = {c: set(g.split(",")) - {""} for c, g in zip(found["candidate"], found["genes"])}
    aligned, genes = route.read_for_markers(cells, db, wanted, model_genes(None))
    view = ad.AnnData(log_normalize_csr(aligned.X), var=pd.DataFrame(index=genes))
    view.var_names_make_unique()
    table = np.full((cells.n_obs, len(wanted)), -np.inf)
    for j, genes_of in enumerate(wanted.values()):
        if genes_of:
            sc.tl.score_genes(view, sorted(genes_of), score_name="score", random_state=0, use_raw=False)
            table[:, j] = view.obs["score"].to_numpy()
    answers = np.asarray(found["candidate"])[table.argmax(1)]
    return answers, time.perf_counter() - start


def model_answers(model, cells, labels: list[str]):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ica.annotate(cells, model=model, candidates=labels)
    return result, time.perf_counter() - start


def run_test(specs, model, tune: dict[str, Any]) -> list[dict[str, Any]]:
    settings = dict(pooling=tune["pooling"], temperature=tune["temperature"])
    rows = []
    for spec in specs:
        cells, truth = split_cells(spec, "test")
        labels = list(spec.classes)
        row = {"dataset": spec.name, "n_cells": int(cells.n_obs), "n_labels": len(labels)}
        for db in ("panglaodb", "cellmarker2"):
            try:
                result, seconds = by_markers(cells, labels, marker_db=db, **settings)
            except route.UnknownMarkersError as exc:  # a label CellMarker 2.0 has no entry for
                row[db] = {"error": str(exc).split(":")[0]}
                continue
            row[db] = scores(truth, result, seconds)
            if db == "panglaodb":
                answers, seconds = score_genes_answers(cells, result)
                row["score_genes"] = plain_scores(truth, answers, seconds)
        result, seconds = by_markers(cells, labels + DISTRACTORS, **settings)
        row["panglaodb_distracted"] = {**scores(truth, result, seconds), "absent": _absent(result)}
        answers, seconds = score_genes_answers(cells, result)
        row["score_genes_distracted"] = {**plain_scores(truth, answers, seconds),
                                         "absent": float(np.isin(answers, DISTRACTORS).mean())}
        result, seconds = model_answers(model, cells, labels)
        row["model"] = scores(truth, result, seconds)
        result, seconds = model_answers(model, cells, labels + DISTRACTORS)
        row["model_distracted"] = {**scores(truth, result, seconds), "absent": _absent(result),
                                   "route": result.provenance["candidate_route"]}
        row["unrouted"] = as_unrouted_names(model, spec, cells, truth, settings)
        logger.info("test %s: %s", spec.name, {k: round(v["macro_f1"], 3) for k, v in row.items()
                                                if isinstance(v, dict) and "macro_f1" in v})
        rows.append(row)
    return rows


def as_unrouted_names(model, spec, cells, truth: np.ndarray, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The set's labels renamed to their Cell Ontology names, answered by the marker route and by the
    model scoring those names as strings (`renamed_candidates.py`'s peer): what the model does with
    names it cannot route, as for a type it never learned. None for a set with a label without a term."""
    own = sorted(set(model.label_set(spec.name)["labels"]))
    renamed = renamings(own, set(model.labels_for_task("annotation")))
    if renamed is None:
        return None
    names = renamed["cl_names"]
    named = np.array([names[own.index(t)] for t in truth])
    result, seconds = by_markers(cells, names, **settings)
    fields = {"species": spec.species, "tissue": spec.tissue, "sequencing_method": spec.sequencing_method}
    picked, text_seconds = scored_as_text(model, cells, names, fields)
    return {"names": names, "markers": scores(named, result, seconds),
            "model_as_text": plain_scores(named, np.asarray(picked), text_seconds)}


def run_liver(model, tune: dict[str, Any]) -> list[dict[str, Any]]:
    path = shared_root() / LIVER
    cells = read_h5ad(path)
    known = cells.obs["cell_type"]
    rows = []
    for what, cands in LIVER_CANDIDATES:
        markers, _ = by_markers(cells, cands, pooling=tune["pooling"], temperature=tune["temperature"])
        answered, _ = model_answers(model, cells, cands)
        rows.append({"candidates": what, "names": cands,
                     "markers": markers.agreement(known).agreement,
                     "model": answered.agreement(known).agreement,
                     "model_route": answered.provenance["candidate_route"],
                     "markers_answers": [str(x) for x in markers.labels],
                     "model_answers": [str(x) for x in answered.labels], "known": [str(x) for x in known]})
        logger.info("liver, %s: markers %s, model %s", what, rows[-1]["markers"], rows[-1]["model"])
    return rows


def _cell(entry: dict[str, Any]) -> str:
    if "error" in entry:
        return "no entry for a label"
    return f"{entry['accuracy']:.3f} / {entry['macro_f1']:.3f} / {entry['ece']:.3f} / {entry['cells_per_s']:,.0f}"


def render(report: dict[str, Any]) -> str:
    tune = report["valid"]
    lines = ["# Cell types from known markers alone, beside the model", "", *meta_lines(report["meta"]),
             f"- checkpoint (model column): `{report['checkpoint']}`, float32, the set's labels as candidates",
             "- marker route: `instructcell_agent.interpret.marker_annotation.annotate_by_markers`, the set's labels "
             "as candidates, mapped onto database cell types by `interpret/marker_map.json`; no model, nothing fitted "
             "on any set but the settings below", "",
             "## Settings chosen on the valid splits (PanglaoDB)", "",
             f"Distractors: {', '.join(DISTRACTORS)} (PanglaoDB types of organs no shared set comes from) added to "
             "the set's labels; 'absent' is the share of cells answered with one.", "",
             "| pooling | mean macro-F1, own labels | with distractors | absent |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['pooling']} | {r['macro_f1']:.3f} | {r['macro_f1_distracted']:.3f} | {r['absent']:.3f} |"
              for r in tune["settings"]]
    lines += ["", f"Chosen (highest mean macro-F1 with distractors): pooling {tune['pooling']}; "
              f"temperature {tune['temperature']:g} (pooled valid log loss {tune['log_loss']:.3f}, grid "
              f"{TEMPERATURES[0]:g} to {TEMPERATURES[-1]:g}). Shipped: pooling {report['shipped']['pooling']}, "
              f"temperature {report['shipped']['temperature']:g}.", "",
              "## Test splits: accuracy / macro-F1 / expected calibration error / cells per second", "",
              "| dataset | cells | labels | markers, PanglaoDB | scanpy score_genes, same markers "
              "| markers, CellMarker 2.0 | model (trained on the set) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["test"]:
        g = r["score_genes"]
        lines.append(f"| {r['dataset']} | {r['n_cells']} | {r['n_labels']} | {_cell(r['panglaodb'])} | "
                     f"{g['accuracy']:.3f} / {g['macro_f1']:.3f} / - / {g['cells_per_s']:,.0f} | "
                     f"{_cell(r['cellmarker2'])} | {_cell(r['model'])} |")
    lines += ["", "## Test splits with the distractors among the candidates: macro-F1 / share answered absent", "",
              "| dataset | markers, PanglaoDB | scanpy score_genes | model | model's candidate route |",
              "| --- | --- | --- | --- | --- |"]
    for r in report["test"]:
        m, g, d = r["panglaodb_distracted"], r["score_genes_distracted"], r["model_distracted"]
        lines.append(f"| {r['dataset']} | {m['macro_f1']:.3f} / {m['absent']:.3f} | {g['macro_f1']:.3f} / "
                     f"{g['absent']:.3f} | {d['macro_f1']:.3f} / {d['absent']:.3f} | {d['route']} |")
    lines += ["", "## Names the model cannot route: each set's labels as their Cell Ontology names, macro-F1", "",
              "What the model does with a type it never learned is score its name as a string; here the names are "
              "of types it did learn, so this is the route's behaviour, not a never-learned type's cells.", "",
              "| dataset | markers, PanglaoDB | model scoring the names as strings |", "| --- | --- | --- |"]
    for r in report["test"]:
        u = r["unrouted"]
        lines.append(f"| {r['dataset']} | " + ("label without a Cell Ontology term | - |" if u is None else
                     f"{u['markers']['macro_f1']:.3f} | {u['model_as_text']['macro_f1']:.3f} |"))
    lines += ["", "## The reference system's 20-cell liver demo file (a tissue the model never saw)", "",
              "Agreement with the file's `cell_type`, answers read through the Cell Ontology ('Kupffer cell' "
              "counts for 'Macrophage').", "",
              "| candidates | markers | model | model's candidate route |", "| --- | --- | --- | --- |"]
    for r in report["liver"]:
        lines.append(f"| {r['candidates']} | {r['markers']:.2f} | {r['model']:.2f} | {r['model_route']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    meta = run_meta(shlex.join(["python", *sys.argv]))
    specs = [s for s in load_catalog(tasks=("annotation",))]
    tune = tune_on_valid(specs)
    model = ica.load_model(args.checkpoint, precision="float32")
    report = {"meta": meta, "checkpoint": str(args.checkpoint), "valid": tune,
              "shipped": {"pooling": route.POOLING, "temperature": route.TEMPERATURE},
              "test": run_test(specs, model, tune), "liver": run_liver(model, tune)}
    path = write_report(report, render(report), args.out_dir, args.stem)
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
