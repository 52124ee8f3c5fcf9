"""Do answer confidences mean what they say? Calibration of the checkpoint on the test splits.

For each annotation and drug set, the test cells are asked as `evaluate` asks them (own valid
phrasings, seed 0), once with the linear read-out beside the language model and once without
it, and as the Python API asks them (`annotate(cells, candidates=labels)`, one instruction).
From the same answers it reports accuracy, mean confidence, expected calibration error (10
equal-width bins) and the confidences' log loss, unscaled (temperature 1) and at the
checkpoint's fitted temperatures (`instructcell calibrate`, core_model/temperature.py). The
temperature does not move any answer, so one pass per setting serves both columns.

    python benchmarks/calibration.py --out-dir benchmarks/results
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compare_checkpoints import TASK_CODE, split_specs
from instructcell_agent import default_checkpoint_path
from instructcell_agent.api import annotate, predict_drug_response
from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.datasets import read_split, shared_root, subset_by_names
from instructcell_agent.core_model.evaluation import evaluate
from instructcell_agent.core_model.io import get_labels, read_h5ad
from instructcell_agent.core_model.temperature import summary
from report_io import run_meta, write_report

logger = logging.getLogger("calibration")
SETTINGS = ("evaluate, with read-out", "evaluate, LM alone", "Python API, with read-out")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=default_checkpoint_path())
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--datasets", help="comma-separated catalog names (default: every annotation and drug set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def api_rows(loaded, spec, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Score rows (up to a constant per cell, unscaled) and correctness of the API's answers."""
    adata = read_h5ad(spec.path)
    labels = sorted(set(get_labels(adata, spec.label_key)))
    cells = subset_by_names(adata, read_split(spec.split_path)[split], split)
    truth = get_labels(cells, spec.label_key)
    if spec.task == "drug_response":
        result = predict_drug_response(cells, drug=loaded.label_sets[spec.name].get("drug", ""), model=loaded)
    else:
        result = annotate(cells, model=loaded, candidates=labels)
    t = result.provenance["confidence_temperature"]
    # log-probabilities at temperature t are the scores / t up to a constant per cell
    with np.errstate(divide="ignore"):
        rows = list(np.log(result.probabilities.to_numpy()) * t)
    return rows, np.asarray(result.labels) == truth


def pool(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-set summaries combined, each weighted by its cells (the low-confidence accuracies by
    their low-confidence cells)."""
    n = sum(p["n_cells"] for p in parts)
    out = {k: sum(p[k] * p["n_cells"] for p in parts) / max(n, 1)
           for k in ("accuracy", "mean_confidence", "calibration_error", "log_loss", "share_below_half")}
    low = [(p["share_below_half"] * p["n_cells"], p["accuracy_below_half"]) for p in parts]
    high = [((1 - p["share_below_half"]) * p["n_cells"], p["accuracy_from_half"]) for p in parts]
    for key, groups in (("accuracy_below_half", low), ("accuracy_from_half", high)):
        m = sum(k for k, a in groups if a is not None)
        out[key] = sum(k * a for k, a in groups if a is not None) / m if m else None
    return out


def run(args: argparse.Namespace, cmd: str) -> dict[str, Any]:
    loaded = load_checkpoint(args.checkpoint, "cpu", precision=args.precision)
    temps = dict(loaded.temperatures)
    if not temps:
        logger.warning("%s has no temperature.json: fitted columns equal the unscaled ones", args.checkpoint)
    specs = [s for s in split_specs(args.datasets) if s.name in loaded.label_sets]
    sets: dict[str, dict[str, Any]] = {}
    for spec in specs:
        per: dict[str, Any] = {}
        for setting, with_readout in zip(SETTINGS[:2], (True, False)):
            r = evaluate(loaded, spec.path, spec.split_path, TASK_CODE[spec.task], spec.label_key, seed=args.seed,
                         split=args.split, readout=with_readout, keep_scores=True)
            expert = loaded.readout if with_readout else None
            per[setting] = (r["score_rows"], np.asarray(r["correct"]), loaded.temperature(expert))
        rows, correct = api_rows(loaded, spec, args.split)
        per[SETTINGS[2]] = (rows, correct, loaded.temperature(loaded.readout))
        sets[spec.name] = {s: {"unscaled": summary(r, c, 1.0), "fitted": summary(r, c, t)}
                           for s, (r, c, t) in per.items()}
        logger.info("%s: %s", spec.name, ", ".join(
            f"{s}: ECE {v['unscaled']['calibration_error']:.3f} -> {v['fitted']['calibration_error']:.3f}"
            for s, v in sets[spec.name].items()))
    pooled = {setting: {which: pool([sets[name][setting][which] for name in sets]) for which in ("unscaled", "fitted")}
              for setting in SETTINGS}
    meta = {**run_meta(cmd), "checkpoint": str(args.checkpoint), "split": args.split, "seed": args.seed,
            "precision": args.precision, "temperatures": temps, "shared": str(shared_root())}
    return {"meta": meta, "datasets": sets, "cell_weighted_mean": pooled}


def _value(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = ["# Confidence calibration", "", f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- checkpoint: `{meta['checkpoint']}`; split `{meta['split']}`, own valid phrasings, "
             f"seed {meta['seed']}, LM in {meta['precision']}; shared data: {meta['shared']}",
             "- temperatures (temperature.json, fitted on valid by `instructcell calibrate`): "
             f"{meta['temperatures'] or 'none'}",
             "- confidence: the answer's probability (softmax over the labels it was chosen among, scores / T); "
             "ECE: cell-weighted mean |confidence - accuracy| over 10 equal-width bins; log loss of the confidence "
             "against right / wrong; decoded answers (LM alone, no options) carry no score row and are left out",
             "- fitted = the checkpoint's temperature for the setting; the answers, so the accuracy, are the same "
             "in both", ""]
    for setting in SETTINGS:
        lines += [f"## {setting}", "",
                  "| dataset | n | accuracy | mean confidence, unscaled / fitted | ECE, unscaled / fitted | "
                  "log loss, unscaled / fitted | confidence < 0.5, fitted: share of cells, their accuracy / "
                  "accuracy of the rest |", "| --- | --- | --- | --- | --- | --- | --- |"]
        rows = [(name, sets[setting]) for name, sets in report["datasets"].items()]
        rows.append(("cell-weighted mean", report["cell_weighted_mean"][setting]))
        for name, v in rows:
            u, f = v["unscaled"], v["fitted"]
            n = u.get("n_cells", "")
            lines.append(f"| {name} | {n} | {u['accuracy']:.3f} | "
                         f"{u['mean_confidence']:.3f} / {f['mean_confidence']:.3f} | "
                         f"{u['calibration_error']:.3f} / {f['calibration_error']:.3f} | "
                         f"{u['log_loss']:.3f} / {f['log_loss']:.3f} | {f['share_below_half']:.3f}, "
                         f"{_value(f['accuracy_below_half'])} / {_value(f['accuracy_from_half'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    cmd = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(["calibration.py", *argv])
    report = run(args, cmd)
    path = write_report(report, render_markdown(report), args.out_dir, f"calibration_{args.split}")
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
