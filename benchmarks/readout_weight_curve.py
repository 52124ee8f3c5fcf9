"""Fit the read-out's weight beside the language model by gene coverage, on valid.

How much the linear gene read-out counts against the language model (core_model/readout.py) is
chosen by the log loss of the true label (core_model/readout_weight.py) on the valid splits, with
the read-out refitted on train so it has not seen those cells. The read-out suffers more than the
language model when a file lacks genes, so the fit is repeated on copies of the valid files
keeping a random share of their genes (benchmarks/file_copies.py), one weight per share, placed at
the median gene coverage of its cells and made non-decreasing in coverage.

The language model's part of each answer is recorded once per file and replayed
(readout_variants.py): answered with read-out weights 1 and 2, each score row splits into the
language model's scores and the read-out's log-probabilities. Only rows holding the cell's true
label count (every row of a cell asked with options does), and not free answers whose labels span
several label sets (there the other sets' labels are ruled out, so the row does not split).

    python benchmarks/readout_weight_curve.py --out-dir /tmp/curve
    python benchmarks/readout_weight_curve.py --write instructcell_agent/checkpoints/default

On whole files the fitted weight is far above 1 (about 6), and a weight of 4 had cost kang2018
and explain's marker targets on test (benchmarks/EXPERIMENTS.md), so the stored curve is capped
(`--max-weight`, default 1): whole files keep the weight they had, files lacking genes lean on
the language model as the fit says. `--write DIR` stores the capped curve in DIR's readout.json
(its top becomes `answer_weight`); refit the confidence temperatures afterwards (`instructcell
calibrate`), as the answer scores they divide have changed. `--from-report JSON` re-derives the
curve from an earlier run's levels without answering cells again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from compare_checkpoints import TASK_CODE, split_specs
from file_copies import with_panel
from instructcell_agent import default_checkpoint_path
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.datasets import shared_root
from instructcell_agent.core_model.errors import GeneOverlapError
from instructcell_agent.core_model.evaluation import evaluate
from instructcell_agent.core_model.io import read_h5ad
from instructcell_agent.core_model.readout import Readout, load_readout, save_readout
from instructcell_agent.core_model.readout_adapt import ADAPT_KEY
from instructcell_agent.core_model.readout_weight import T_GRID, fit_weight, label_nll, monotone_curve
from readout_variants import Recorder, fit_blocks, fit_variant
from report_io import run_meta, write_report

logger = logging.getLogger("readout_weight_curve")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=default_checkpoint_path())
    p.add_argument("--shares", type=float, nargs="+", default=[1.0, 0.3, 0.1, 0.05],
                   help="shares of each valid file's genes kept (1: the files as they are)")
    p.add_argument("--datasets", help="comma-separated catalog names (default: every annotation and drug set)")
    p.add_argument("--seed", type=int, default=0, help="phrasing draw and gene panels")
    p.add_argument("--max-weight", type=float, default=1.0,
                   help="cap on the stored curve (default 1: above it kang2018 and explain's marker targets lost "
                        "on test, benchmarks/EXPERIMENTS.md); the fitted points are reported uncapped")
    p.add_argument("--from-report", type=Path,
                   help="take the fitted levels from this script's earlier JSON instead of answering cells again")
    p.add_argument("--adapt", action="store_true",
                   help="answer with the read-out re-centred for each copy's genes (core_model/readout_adapt.py); "
                        "--write then turns that on in the checkpoint with the curve fitted for it. With "
                        "--from-report, --write turns it on beside that report's curve even where the curve was "
                        "fitted without it (the falling curve with the re-centring, cross_study.py)")
    p.add_argument("--write", type=Path, help="store the (capped) curve in this checkpoint's read-out")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def split_rows(one: dict[str, Any], two: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The language model's scores and the read-out's log-probabilities of each scored row holding
    its true label, from the same answers at read-out weights 1 and 2, grouped by row width."""
    by_width: dict[int, list[tuple[np.ndarray, np.ndarray, int]]] = {}
    for r1, r2, col in zip(one["score_rows"], two["score_rows"], one["truth_columns"]):
        r1, r2 = np.asarray(r1, np.float64), np.asarray(r2, np.float64)
        if col < 0 or not np.isfinite(r1).all():  # across label sets the other sets' labels are ruled out
            continue
        by_width.setdefault(len(r1), []).append((r1 - (r2 - r1), r2 - r1, col))
    return [(np.stack([a for a, _, _ in rows]), np.stack([b for _, b, _ in rows]), np.array([c for _, _, c in rows]))
            for rows in by_width.values()]


def at_weights_1_and_2(loaded, held: Readout, spec: Any, copy: Any, seed: int) -> list[dict[str, Any]]:
    """`evaluate` on the valid cells of `copy` (a file of `spec`'s set) with the `held` read-out
    at weights 1 and 2, keeping the score rows; the language model's part is recorded on the
    first pass and replayed on the second (readout_variants.py), so only the read-out differs."""
    recorder = Recorder(loaded.model)
    recorder.record()
    answers = []
    for w in (1.0, 2.0):
        loaded.readout = dataclasses.replace(held, answer_weight=w)
        if answers:
            recorder.replay()
        answers.append(evaluate(loaded, copy.path, copy.split_path, TASK_CODE[spec.task], spec.label_key,
                                seed=seed, split="valid", keep_scores=True))
    recorder.restore()
    return answers


def record_level(loaded, shipped: Readout, held: Readout, specs: list[Any], share: float, seed: int,
                 tmp: Path) -> dict[str, Any]:
    """One share of genes: per set, its coverage, macro-F1 at weight 1 and the split score rows."""
    out = {}
    for spec in specs:
        copy = spec if share >= 1 else with_panel(spec, share, seed, tmp)
        try:
            matched = align_to_vocab(read_h5ad(copy.path), loaded.vocab).matched
        except GeneOverlapError as err:
            logger.info("share %g, %s: skipped (%s)", share, spec.name, str(err).split(".")[0])
            continue
        present = torch.zeros(len(loaded.vocab), dtype=torch.bool)
        present[torch.from_numpy(matched)] = True
        answers = at_weights_1_and_2(loaded, held, spec, copy, seed)
        groups = split_rows(*answers)
        out[spec.name] = {"coverage": shipped.coverage(present, spec.name), "groups": groups,
                          "n_rows": int(sum(len(g[2]) for g in groups)), "macro_f1_weight_1": answers[0]["macro_f1"]}
        logger.info("share %g, %s: coverage %.3f, %d rows", share, spec.name, out[spec.name]["coverage"],
                    out[spec.name]["n_rows"])
    return out


def fit_level(sets: dict[str, Any]) -> dict[str, Any]:
    groups = [g for entry in sets.values() for g in entry["groups"]]
    weight, temperature, loss = fit_weight(groups)
    at_one = min(float(label_nll(groups, 1.0, t).mean()) for t in T_GRID)
    cells = np.concatenate([np.full(e["n_rows"], e["coverage"]) for e in sets.values()])
    return {"weight": weight, "temperature": temperature, "log_loss": loss, "log_loss_weight_1": at_one,
            "coverage": float(np.median(cells)), "coverage_range": [float(cells.min()), float(cells.max())],
            "n_rows": int(len(cells))}


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = ["# The read-out's weight by gene coverage, fitted on valid", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- checkpoint: `{meta['checkpoint']}`; read-out refitted on train; valid splits, own valid phrasings, "
             f"seed {meta['seed']}; shared data: {meta['shared']}",
             *([f"- curve taken from that run's levels by: `{meta['curve_command']}`"] if meta.get("curve_command") else []),
             *(["- the read-out re-centred for each copy's genes on the reference cells (core_model/readout_adapt.py)"]
               if meta.get("adapt") else []),
             "- per share of genes kept: the weight and temperature minimising the mean log loss of the true label "
             "over every scored row holding it (core_model/readout_weight.py), against weight 1 at its best temperature",
             "", "| genes kept | rows | coverage, median [range] | weight | temperature | log loss | log loss, weight 1 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for share, r in report["levels"].items():
        lines.append(f"| {share} | {r['n_rows']} | {r['coverage']:.3f} [{r['coverage_range'][0]:.3f}, "
                     f"{r['coverage_range'][1]:.3f}] | {r['weight']:.2f} | {r['temperature']:.2f} | "
                     f"{r['log_loss']:.4f} | {r['log_loss_weight_1']:.4f} |")
    lines += ["", "Fitted curve (coverage, weight), made non-decreasing: " +
              ", ".join(f"({c:.3f}, {w:.2f})" for c, w in report["fitted_curve"]),
              f"Stored curve, capped at {meta['max_weight']:g}: " +
              ", ".join(f"({c:.3f}, {w:.2f})" for c, w in report["curve"]), "",
              "## Per set: coverage and macro-F1 at weight 1", "",
              "| genes kept | dataset | coverage | scored rows | macro-F1, weight 1 |", "| --- | --- | --- | --- | --- |"]
    for share, sets in report["sets"].items():
        for name, e in sets.items():
            lines.append(f"| {share} | {name} | {e['coverage']:.3f} | {e['n_rows']} | {e['macro_f1_weight_1']:.3f} |")
    if report["meta"].get("skipped"):
        lines += ["", "Skipped (too few vocabulary genes left to answer): " + ", ".join(report["meta"]["skipped"])]
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, cmd: list[str], loaded) -> dict[str, Any]:
    """Answer the valid cells at every share of genes and fit one weight per share."""
    shipped = loaded.readout  # its mean cells measure coverage, as at answer time
    order = list(loaded.label_sets)
    specs = sorted((s for s in split_specs(args.datasets) if s.name in loaded.label_sets),
                   key=lambda s: order.index(s.name))
    held = fit_variant(fit_blocks(loaded, specs, "train"), len(loaded.vocab), "raw",
                       float(shipped.info.get("l2", 1.0)), 0.0, 1.0)
    # the shipped mean cells rank the sets sharing labels when re-centring, as at answer time
    held = dataclasses.replace(held, mean_cells=shipped.mean_cells, info={**held.info, ADAPT_KEY: args.adapt})
    sets, levels = {}, {}
    with tempfile.TemporaryDirectory(prefix="weight_curve_") as tmp:
        for share in args.shares:
            sets[f"{share:g}"] = record_level(loaded, shipped, held, specs, share, args.seed, Path(tmp))
            levels[f"{share:g}"] = fit_level(sets[f"{share:g}"])
            logger.info("share %g: %s", share, levels[f"{share:g}"])
    loaded.readout = shipped
    skipped = [f"{name} at {share}" for share, s in sets.items() for name in (x.name for x in specs) if name not in s]
    for level in sets.values():
        for entry in level.values():
            entry.pop("groups")
    return {"meta": {**run_meta(shlex.join(cmd)), "checkpoint": str(args.checkpoint), "seed": args.seed,
                     "adapt": args.adapt,
                     "shares": args.shares, "shared": str(shared_root()), "skipped": skipped},
            "levels": levels, "sets": sets}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    cmd = [sys.executable.rsplit("/", 1)[-1], *sys.argv] if argv is None else ["readout_weight_curve.py", *argv]
    loaded = load_checkpoint(args.checkpoint, "cpu", precision="float32")
    if loaded.readout is None or not loaded.readout.mean_cells:
        raise SystemExit(f"{args.checkpoint} has no read-out with mean training cells (instructcell train-readout)")
    report = json.loads(args.from_report.read_text()) if args.from_report else measure(args, cmd, loaded)
    if args.from_report:
        report["meta"]["curve_command"] = shlex.join(cmd)
    fitted = monotone_curve([(r["coverage"], r["weight"], r["n_rows"]) for r in report["levels"].values()])
    report["fitted_curve"] = fitted
    report["curve"] = [(c, min(w, args.max_weight)) for c, w in fitted]
    report["meta"]["max_weight"] = args.max_weight
    path = write_report(report, render_markdown(report), args.out_dir, "readout_weight_curve")
    logger.info("wrote %s", path)
    if args.write is not None:
        target = load_readout(args.write, loaded.vocab)
        if target is None:
            raise SystemExit(f"{args.write} has no read-out to store the curve in")
        target.weight_curve, target.answer_weight = report["curve"], report["curve"][-1][1]
        target.info[ADAPT_KEY] = bool(report["meta"].get("adapt", False)) or args.adapt
        target.info["weight_curve_command"] = report["meta"].get("curve_command", report["meta"]["command"])
        if args.from_report:
            target.info["weight_curve_measured_by"] = report["meta"]["command"]
        save_readout(args.write, target, loaded.vocab)
        logger.info("stored the curve in %s/readout.json; refit its temperatures (instructcell calibrate)", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
