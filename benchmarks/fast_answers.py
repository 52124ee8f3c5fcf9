"""`fast=True` against the default, side by side: the cells the read-out answers alone, and at what cost.

Every cell of one split of each shared annotation and drug-response set is answered through the
Python API as a user calls it (`ica.annotate(cells, candidates=labels)`, `predict_drug_response`
for the drug set: one prompt for every cell), once with the default (every cell read by the
language model) and once with `fast=True` (core_model/readout_first.py), timed in turn in the same
run, each `--repeats` times, the fastest pass kept. Reported per set: the share of cells the
read-out answered alone, the share given the same label as the default, accuracy and macro-F1 of
both, expected calibration error of both (10 bins), cells per second of both and their ratio. For
free answers (no candidates) it reports whether the read-out can answer alone at all there, and
if not why (labels across several learned sets: the language model picks the naming); where it
can, free answers are timed with and without `fast` too.

    python benchmarks/fast_answers.py                                   # shipped checkpoint, test split
    python benchmarks/fast_answers.py --checkpoint DIR --split valid --stem fast_answers_valid
    python benchmarks/fast_answers.py --thin 0.1 --stem fast_answers_thin0.1   # cells sequenced a tenth as deeply

`--thin F` keeps each count of every cell with probability F (benchmarks/file_copies.py, as
sequencing_depth.py thins): deep cells made shallow, where `fast` judges a cell by the read-out at
the weight its depth gives it. Sets whose values give no counts back are skipped.

The threshold (SURE = 0.98) was chosen on the valid split with a read-out fitted on train only
(`instructcell train-readout --checkpoint COPY --split train`): the shipped read-out was fitted on
train+valid, so on valid it is sure of nearly every cell and right about all of them.
Writes ``<stem>.md`` and ``<stem>.json`` to ``--out-dir`` (default benchmarks/results).
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
from sklearn.metrics import f1_score

import instructcell_agent as ica
from instructcell_agent.core_model import readout_first
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.datasets import load_catalog, prompt_fields, read_split, subset_by_names
from instructcell_agent.core_model.io import get_labels, read_h5ad
from instructcell_agent.core_model.temperature import calibration_error
from instructcell_agent.core_model.thinning import umi_counts
from file_copies import thinned
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("fast_answers")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=ica.default_checkpoint_path())
    p.add_argument("--split", default="test")
    p.add_argument("--datasets", default="", help="comma-separated set names (default: every annotation and drug set)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--thin", type=float, default=1.0, help="keep each count with this probability (default 1: as is)")
    p.add_argument("--seed", type=int, default=0, help="the thinning's seed")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--stem", default="fast_answers")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.95, 0.98, 0.99, 0.999],
                   help="read-out probabilities at which the sweep counts the cells it would answer alone")
    return p.parse_args(argv)


def answer(model, cells, spec, labels: list[str] | None, fast: bool):
    """The set's cells answered among `labels` (None: free answers, no candidates)."""
    with warnings.catch_warnings():  # atypical-cell and context warnings are not what is measured here
        warnings.simplefilter("ignore")
        if spec.task == "drug_response":
            return ica.predict_drug_response(cells, drug=spec.drug, model=model, candidates=labels, fast=fast)
        return ica.annotate(cells, model=model, candidates=labels, fast=fast)


def timed(model, cells, spec, labels: list[str] | None, fast: bool, repeats: int):
    """The result and the fastest pass's seconds."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = answer(model, cells, spec, labels, fast)
        best = min(best, time.perf_counter() - start)
    return result, best


def free_answers_side_by_side(model, cells, spec, repeats: int) -> dict[str, Any] | str:
    """Free answers (no candidates) with and without `fast`, where the read-out can answer alone
    there; otherwise why not."""
    route = free_answer_route(model, cells)
    if route != "yes":
        return route
    full, t_full = timed(model, cells, spec, None, False, repeats)
    fast, t_fast = timed(model, cells, spec, None, True, repeats)
    same = np.asarray(full.labels, dtype=object) == np.asarray(fast.labels, dtype=object)
    return {"by_readout_alone": fast.provenance["fast"]["cells_answered_by_readout_alone"],
            "same_label": int(same.sum()), "speedup": t_full / t_fast}


def scores(result, truth: np.ndarray, labels: list[str]) -> dict[str, float]:
    predicted = np.asarray(result.labels, dtype=object).astype(str)
    correct = predicted == truth
    conf = np.asarray(result.confidence, dtype=float)
    return {"accuracy": float(correct.mean()),
            "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
            "ece": float(calibration_error(conf, correct)), "mean_confidence": float(conf.mean())}


def free_answer_route(model, cells) -> str:
    """"yes" when the read-out can answer cells alone as they are asked without candidates, else why not."""
    aligned = align_to_vocab(cells, model.vocab)
    allowed = model.labels_for_cells("annotation", prompt_fields(cells))
    if not allowed or not allowed[0]:
        return "no learned labels for these cells"
    why = readout_first.why_not(model.readout_for(aligned.matched), allowed[0], model.label_lists)
    return "yes" if why is None else f"no: {why}"


def sweep(model, cells, labels: list[str], default_labels, thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """At each threshold, the cells the read-out would answer alone (its probability at the weight a
    cell's depth gives it at least the threshold, the cell not atypical of that label, as `fast`
    decides) and how many of them the default gave another label: how the threshold was chosen,
    without a run per threshold."""
    aligned = align_to_vocab(cells, model.vocab)
    readout = model.readout_for(aligned.matched)
    logp = readout_first.readout_log_probs(model.model, aligned.X, readout, labels)
    logp = readout_first.at_weight(logp, readout_first.cell_weights(readout, aligned.X, labels))  # as it weighs
    best = np.asarray(labels, dtype=object)[logp.argmax(1)]
    typicality = (model.reference.typicality(aligned.X, aligned.matched, list(best)) if model.reference is not None
                  else np.full(len(best), np.nan))
    differ = best != np.asarray(default_labels, dtype=object)
    out = []
    for threshold in thresholds:
        alone = (logp.max(1) >= np.log(threshold)) & ~(typicality < readout_first.FAST_TYPICAL_BELOW)
        out.append({"threshold": threshold, "alone": int(alone.sum()), "differ": int(differ[alone].sum())})
    return out


def thinned_cells(cells, fraction: float, seed: int):
    """The cells as integer counts with each count kept with probability `fraction` (None: the
    file's values give no counts back)."""
    try:
        counts = umi_counts(cells.X)
    except ValueError as err:
        logger.info("skipped (%s)", err)
        return None
    return ad.AnnData(X=thinned(counts, fraction, np.random.default_rng(seed)).astype(np.float32),
                      obs=cells.obs.copy(), var=cells.var.copy())


def run_set(model, spec, split: str, repeats: int, thresholds: Sequence[float], thin: float = 1.0,
            seed: int = 0) -> dict[str, Any] | None:
    cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)[split], split)
    if thin < 1.0 and (cells := thinned_cells(cells, thin, seed)) is None:
        return None
    truth = np.asarray(get_labels(cells, spec.label_key)).astype(str)
    labels = list(model.label_set(spec.name)["labels"])
    answer(model, cells[:8].copy(), spec, labels, False)  # first-call costs (prompt memo, trie) outside the clock
    full, t_full = timed(model, cells, spec, labels, False, repeats)
    fast, t_fast = timed(model, cells, spec, labels, True, repeats)
    record = fast.provenance["fast"]
    same = np.asarray(full.labels, dtype=object) == np.asarray(fast.labels, dtype=object)
    counts = np.asarray(cells.X.sum(1)).ravel()
    row = {"dataset": spec.name, "n_cells": cells.n_obs, "median_counts": float(np.median(counts)),
           "by_readout_alone": record["cells_answered_by_readout_alone"], "why_none": record.get("why_none"),
           "same_label": int(same.sum()), "full": scores(full, truth, labels), "fast": scores(fast, truth, labels),
           "seconds_full": t_full, "seconds_fast": t_fast,
           "cells_per_s_full": cells.n_obs / t_full, "cells_per_s_fast": cells.n_obs / t_fast,
           "speedup": t_full / t_fast, "sweep": sweep(model, cells, labels, full.labels, thresholds)}
    at_sure = next((r for r in row["sweep"] if r["threshold"] == readout_first.SURE), None)
    if at_sure is not None and at_sure["alone"] != row["by_readout_alone"]:  # the sweep decides as fast does
        raise RuntimeError(f"{spec.name}: the sweep counts {at_sure['alone']} cells at {readout_first.SURE}, "
                           f"fast answered {row['by_readout_alone']}")
    row["free_answers"] = free_answers_side_by_side(model, cells, spec, repeats) if spec.task == "annotation" else "-"
    logger.info("%s: %d of %d by the read-out alone, %d same label, %.2fx", spec.name, row["by_readout_alone"],
                cells.n_obs, row["same_label"], row["speedup"])
    return row


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "# `fast=True` against the default, side by side", "",
        *meta_lines(meta),
        f"- checkpoint: `{report['checkpoint']}`; split: {report['split']}; read-out threshold {readout_first.SURE}",
        *([f"- every cell thinned to {report['thin']:g} of its counts (each count kept with that probability, seed "
           f"{report['seed']}); sets whose values give no counts back skipped: {', '.join(report['skipped']) or 'none'}"]
          if report.get("thin", 1.0) < 1.0 else []),
        "- setting: the Python API with the set's labels as candidates in one order (one prompt for every cell); "
        f"fastest of {report['repeats']} passes each, the default and `fast=True` in turn in the same run",
        "", "| dataset | cells (median counts) | by read-out alone | same label as default | default acc / F1 / ECE | "
        "fast acc / F1 / ECE | default cells/s | fast cells/s | speed-up | free answers: read-out alone? |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        f, q, free = r["full"], r["fast"], r["free_answers"]
        if isinstance(free, dict):
            free = (f"yes: {free['by_readout_alone']} by the read-out alone, {free['same_label']} same label, "
                    f"{free['speedup']:.2f}x")
        else:
            free = free.split(";")[0]  # the reason, without its hint
        lines.append(
            f"| {r['dataset']} | {r['n_cells']} ({r.get('median_counts', float('nan')):,.0f}) "
            f"| {r['by_readout_alone']} ({r['by_readout_alone'] / r['n_cells']:.0%}) "
            f"| {r['same_label']} ({r['same_label'] / r['n_cells']:.1%}) "
            f"| {f['accuracy']:.3f} / {f['macro_f1']:.3f} / {f['ece']:.3f} "
            f"| {q['accuracy']:.3f} / {q['macro_f1']:.3f} / {q['ece']:.3f} "
            f"| {r['cells_per_s_full']:.1f} | {r['cells_per_s_fast']:.1f} | {r['speedup']:.2f}x "
            f"| {free} |")
    t = report["totals"]
    lines += ["", f"All sets: {t['by_readout_alone']} of {t['n_cells']} cells answered by the read-out alone, "
              f"{t['same_label']} given the default's label; {t['seconds_full']:.1f} s against "
              f"{t['seconds_fast']:.1f} s ({t['speedup']:.2f}x)."]
    thresholds = [r["threshold"] for r in report["rows"][0]["sweep"]]
    lines += ["", "Threshold sweep (no extra runs: the read-out's probabilities beside the default's answers): cells "
              "the read-out would answer alone at each threshold (not atypical of its label, as `fast` decides), "
              "and how many of them the default answered otherwise.", "",
              "| dataset | " + " | ".join(f"{x:g}: alone / differ" for x in thresholds) + " |",
              "| --- |" + " --- |" * len(thresholds)]
    for r in report["rows"]:
        lines.append(f"| {r['dataset']} | " + " | ".join(f"{c['alone']} / {c['differ']}" for c in r["sweep"]) + " |")
    sums = [(sum(r["sweep"][i]["alone"] for r in report["rows"]), sum(r["sweep"][i]["differ"] for r in report["rows"]))
            for i in range(len(thresholds))]
    lines.append("| all sets | " + " | ".join(f"{a} / {d}" for a, d in sums) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if not 0 < args.thin <= 1:
        raise SystemExit("--thin must lie in (0, 1]")
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model(args.checkpoint, precision="float32")
    wanted = [s for s in args.datasets.split(",") if s]
    specs = [s for s in load_catalog(tasks=("annotation", "drug_response")) if not wanted or s.name in wanted]
    rows, skipped = [], []
    for spec in specs:
        row = run_set(model, spec, args.split, args.repeats, args.thresholds, args.thin, args.seed)
        if row is None:
            skipped.append(spec.name)
        else:
            rows.append(row)
    totals = {k: sum(r[k] for r in rows) for k in ("n_cells", "by_readout_alone", "same_label", "seconds_full",
                                                    "seconds_fast")}
    totals["speedup"] = totals["seconds_full"] / totals["seconds_fast"]
    report = {"meta": meta, "checkpoint": str(args.checkpoint), "split": args.split, "repeats": args.repeats,
              "thin": args.thin, "seed": args.seed, "skipped": skipped, "rows": rows, "totals": totals}
    print(write_report(report, render(report), args.out_dir, args.stem))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
