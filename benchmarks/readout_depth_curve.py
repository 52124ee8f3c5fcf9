"""The read-out's weight and the confidence temperature by each cell's depth, fitted on valid.

A shallow cell (few counts, so few of the vocabulary's genes detected) is read differently by the
two experts: the linear read-out sums what it sees, the language model reads eight query tokens.
At 5% of pbmc3k's test counts our answers carried a mean confidence of 0.868 at accuracy 0.490
(benchmarks/results/sequencing_depth.md): the confidence did not fall with the answers. Here every
valid file is thinned binomially (benchmarks/file_copies.py), answered at read-out weights 1 and 2
with the language model's part recorded once and replayed (readout_variants.py), so each score row
splits into the language model's scores and the read-out's log-probabilities; the rows are then
binned by their cell's detected vocabulary genes, and per bin we fit

- the weight and temperature minimising the true label's log loss (core_model/readout_weight.py),
  against weight 1 at its best temperature;
- the confidence temperature of the answers at the weight the checkpoint would use (capped at
  `--max-weight`), against the shipped one (core_model/temperature.py), with the ECE of each.

The read-out is refitted on train so that the valid cells are new to it. The curve stored with
`--write DIR` places each bin's weight (bins of at least `--min-rows` rows) at its median genes,
made non-decreasing in genes (pool-adjacent-violators) and capped as the coverage curve is; it caps
each cell's weight at answer time (core_model/readout.py). Refit the confidence temperatures
afterwards (`instructcell calibrate`): the answer scores they divide have changed.

    python benchmarks/readout_depth_curve.py --out-dir /tmp/depth
    python benchmarks/readout_depth_curve.py --write instructcell_agent/checkpoints/default
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

import anndata as ad
import numpy as np

from compare_checkpoints import split_specs
from file_copies import thinned, umi_counts
from instructcell_agent import default_checkpoint_path
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.datasets import shared_root, split_names, subset_by_names
from instructcell_agent.core_model.io import read_h5ad, write_h5ad_atomic
from instructcell_agent.core_model.readout import Readout, load_readout, save_readout
from instructcell_agent.core_model.readout_weight import T_GRID, fit_weight, label_nll, monotone_curve
from instructcell_agent.core_model.temperature import calibration_error, confidences, fit_temperature
from readout_variants import fit_blocks, fit_variant
from readout_weight_curve import at_weights_1_and_2
from report_io import run_meta, write_report

logger = logging.getLogger("readout_depth_curve")
EDGES = (0, 25, 50, 100, 200, 400, 800, 1600)  # detected vocabulary genes per cell, bin lower edges


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=default_checkpoint_path())
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.25, 0.08, 0.03],
                   help="shares of each valid cell's counts kept (binomial thinning; 1: as they are)")
    p.add_argument("--datasets", help="comma-separated catalog names (default: every annotation and drug set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-weight", type=float, default=1.0, help="the cap the shipped weight curve has")
    p.add_argument("--min-rows", type=int, default=30, help="fewest rows a bin needs to place a curve point")
    p.add_argument("--from-report", type=Path,
                   help="take the fitted bins from this script's earlier JSON instead of answering cells again")
    p.add_argument("--write", type=Path, help="store the curve in this checkpoint's read-out")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def thinned_file(spec: Any, fraction: float, seed: int, out_dir: Path) -> Any | None:
    """A copy of the set's file with every cell thinned to `fraction` of its counts (None: the
    file's values give no counts back)."""
    adata = read_h5ad(spec.path)
    try:
        counts = umi_counts(adata.X)
    except ValueError as err:
        logger.info("%s: skipped (%s)", spec.name, err)
        return None
    copy = ad.AnnData(X=thinned(counts, fraction, np.random.default_rng([seed, int(fraction * 1e4)])).astype(np.float32),
                      obs=adata.obs.copy(), var=adata.var.copy())
    path = out_dir / f"{fraction:g}" / Path(spec.path).name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_h5ad_atomic(copy, path)
    return dataclasses.replace(spec, path=path)


def detected_genes(path: Path, split_path: Path, vocab: Sequence[str]) -> np.ndarray:
    """Each valid cell's number of vocabulary genes with a non-zero value, as the model reads it."""
    adata = subset_by_names(read_h5ad(path), split_names(split_path, "valid"), "valid")
    return np.asarray((align_to_vocab(adata, vocab).X > 0).sum(1)).ravel()


def rows_of(one: dict[str, Any], two: dict[str, Any], genes: np.ndarray) -> list[dict[str, Any]]:
    """Each scored row holding its true label, split into the language model's scores and the
    read-out's log-probabilities (from the same answers at weights 1 and 2), with its cell's genes."""
    out = []
    for r1, r2, col, cell in zip(one["score_rows"], two["score_rows"], one["truth_columns"], one["scored_cells"]):
        r1, r2 = np.asarray(r1, np.float64), np.asarray(r2, np.float64)
        if col < 0 or not np.isfinite(r1).all():  # across label sets the other sets' labels are ruled out
            continue
        out.append({"lm": r1 - (r2 - r1), "ro": r2 - r1, "truth": int(col), "genes": int(genes[cell])})
    return out


def groups_of(rows: list[dict[str, Any]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    by_width: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_width.setdefault(len(r["lm"]), []).append(r)
    return [(np.stack([r["lm"] for r in rs]), np.stack([r["ro"] for r in rs]), np.array([r["truth"] for r in rs]))
            for rs in by_width.values()]


def record(loaded, held: Readout, specs: list[Any], fraction: float, seed: int, tmp: Path) -> dict[str, Any]:
    """One depth: per set, the split score rows and macro-F1 at weight 1."""
    out = {}
    for spec in specs:
        copy = spec if fraction >= 1 else thinned_file(spec, fraction, seed, tmp)
        if copy is None:
            continue
        genes = detected_genes(copy.path, copy.split_path, loaded.vocab)
        answers = at_weights_1_and_2(loaded, held, spec, copy, seed)
        out[spec.name] = {"rows": rows_of(*answers, genes), "macro_f1_weight_1": answers[0]["macro_f1"],
                          "median_genes": float(np.median(genes))}
        logger.info("fraction %g, %s: %d rows, median genes %d, macro-F1 %.3f", fraction, spec.name,
                    len(out[spec.name]["rows"]), out[spec.name]["median_genes"], answers[0]["macro_f1"])
    return out


def fit_bin(rows: list[dict[str, Any]], shipped_t: float, max_weight: float) -> dict[str, Any]:
    groups = groups_of(rows)
    weight, label_t, loss = fit_weight(groups)
    at_one = min(float(label_nll(groups, 1.0, t).mean()) for t in T_GRID)
    used = min(weight, max_weight)
    scores = [r["lm"] + used * r["ro"] for r in rows]
    correct = np.array([int(np.argmax(s)) == r["truth"] for s, r in zip(scores, rows)])
    conf_t = fit_temperature(scores, correct)
    shipped_conf, fitted_conf = confidences(scores, shipped_t), confidences(scores, conf_t)
    at_one_scores = [r["lm"] + r["ro"] for r in rows]
    correct_at_one = np.array([int(np.argmax(s)) == r["truth"] for s, r in zip(at_one_scores, rows)])
    conf_at_one = confidences(at_one_scores, shipped_t)
    return {"n_rows": len(rows), "median_genes": float(np.median([r["genes"] for r in rows])), "weight": weight,
            "label_temperature": label_t, "log_loss": loss,
            "log_loss_weight_1": at_one, "weight_used": used, "accuracy": float(correct.mean()),
            "accuracy_weight_1": float(correct_at_one.mean()), "mean_confidence_weight_1": float(conf_at_one.mean()),
            "ece_weight_1": calibration_error(conf_at_one, correct_at_one),
            "confidence_temperature": conf_t, "mean_confidence_shipped": float(shipped_conf.mean()),
            "ece_shipped": calibration_error(shipped_conf, correct),
            "mean_confidence_fitted": float(fitted_conf.mean()), "ece_fitted": calibration_error(fitted_conf, correct)}


def bins_of(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for lo, hi in zip(EDGES, (*EDGES[1:], None)):
        inside = [r for r in rows if r["genes"] >= lo and (hi is None or r["genes"] < hi)]
        if inside:
            out[f"{lo}+" if hi is None else f"{lo}-{hi - 1}"] = inside
    return out


def depth_curve(bins: dict[str, Any], min_rows: int, max_weight: float) -> list[tuple[float, float]]:
    """(genes, weight) points from the bins with enough rows, non-decreasing and capped."""
    points = [(b["median_genes"], b["weight"], b["n_rows"]) for b in bins.values() if b["n_rows"] >= min_rows]
    return [(max(g, 1.0), min(w, max_weight)) for g, w in monotone_curve(points)]


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = ["# The read-out's weight and the confidence temperature by cell depth, fitted on valid", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             *([f"- curve taken from that run's bins by: `{meta['curve_command']}`"] if meta.get("curve_command") else []),
             f"- checkpoint: `{meta['checkpoint']}`; read-out refitted on train; valid splits thinned binomially to "
             f"{meta['fractions']} of their counts (seed {meta['seed']}), pooled; shared data: {meta['shared']}",
             f"- rows binned by their cell's detected vocabulary genes; shipped confidence temperature "
             f"{meta['shipped_temperature']:.3f}; weight used: the fitted one capped at {meta['max_weight']:g}",
             "- mean conf / ECE: at the shipped temperature with weight 1 (as answered before a depth curve), and with "
             "the weight used at the shipped and at the bin's own fitted temperature",
             "", "| genes | rows | weight | label T | log loss | log loss, w 1 | acc, w used | acc, w 1 | "
             "conf / ECE, w 1 | conf T | conf / ECE, w used | conf / ECE, w used, fitted T |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, b in report["bins"].items():
        lines.append(f"| {name} | {b['n_rows']} | {b['weight']:.2f} | {b['label_temperature']:.2f} | "
                     f"{b['log_loss']:.4f} | {b['log_loss_weight_1']:.4f} | {b['accuracy']:.3f} | "
                     f"{b['accuracy_weight_1']:.3f} | {b['mean_confidence_weight_1']:.3f} / {b['ece_weight_1']:.3f} | "
                     f"{b['confidence_temperature']:.2f} | "
                     f"{b['mean_confidence_shipped']:.3f} / {b['ece_shipped']:.3f} | "
                     f"{b['mean_confidence_fitted']:.3f} / {b['ece_fitted']:.3f} |")
    lines += ["", f"Stored curve (median genes of bins with at least {meta['min_rows']} rows, weight), non-decreasing "
              f"and capped at {meta['max_weight']:g}: " + ", ".join(f"({g:.0f}, {w:.2f})" for g, w in report["curve"])]
    lines += ["", "## Per set and depth", "", "| fraction | dataset | median genes | scored rows | macro-F1, weight 1 |",
              "| --- | --- | --- | --- | --- |"]
    for fraction, sets in report["sets"].items():
        for name, e in sets.items():
            lines.append(f"| {fraction} | {name} | {e['median_genes']:.0f} | {e['n_rows']} | "
                         f"{e['macro_f1_weight_1']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    cmd = [sys.executable.rsplit("/", 1)[-1], *sys.argv] if argv is None else ["readout_depth_curve.py", *argv]
    loaded = load_checkpoint(args.checkpoint, "cpu", precision="float32")
    if loaded.readout is None:
        raise SystemExit(f"{args.checkpoint} has no read-out (instructcell train-readout)")
    if args.from_report:
        report = json.loads(args.from_report.read_text())
        report["meta"]["curve_command"] = shlex.join(cmd)
    else:
        report = measure(args, cmd, loaded)
    report["meta"].update(min_rows=args.min_rows, max_weight=args.max_weight)
    report["curve"] = depth_curve(report["bins"], args.min_rows, args.max_weight)
    logger.info("wrote %s", write_report(report, render_markdown(report), args.out_dir, "readout_depth_curve"))
    if args.write is not None:
        target = load_readout(args.write, loaded.vocab)
        if target is None:
            raise SystemExit(f"{args.write} has no read-out to store the curve in")
        target.depth_curve = report["curve"]
        target.info["depth_curve_command"] = report["meta"].get("curve_command", report["meta"]["command"])
        if args.from_report:
            target.info["depth_curve_measured_by"] = report["meta"]["command"]
        save_readout(args.write, target, loaded.vocab)
        logger.info("stored the curve in %s/readout.json; refit its temperatures (instructcell calibrate)", args.write)
    return 0


def measure(args: argparse.Namespace, cmd: list[str], loaded) -> dict[str, Any]:
    """Answer the thinned valid cells at every depth and fit each bin of detected genes."""
    shipped_t = loaded.temperatures.get("readout", 1.0)
    order = list(loaded.label_sets)
    specs = sorted((s for s in split_specs(args.datasets) if s.name in loaded.label_sets),
                   key=lambda s: order.index(s.name))
    held = fit_variant(fit_blocks(loaded, specs, "train"), len(loaded.vocab), "raw",
                       float(loaded.readout.info.get("l2", 1.0)), 0.0, 1.0)
    sets, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="depth_curve_") as tmp:
        for fraction in args.fractions:
            level = record(loaded, held, specs, fraction, args.seed, Path(tmp))
            rows += [r for e in level.values() for r in e["rows"]]
            sets[f"{fraction:g}"] = {name: {"n_rows": len(e.pop("rows")), **e} for name, e in level.items()}
    bins = {name: fit_bin(inside, shipped_t, args.max_weight) for name, inside in bins_of(rows).items()}
    return {"meta": {**run_meta(shlex.join(cmd)), "checkpoint": str(args.checkpoint), "seed": args.seed,
                     "fractions": args.fractions, "shared": str(shared_root()), "shipped_temperature": shipped_t},
            "bins": bins, "sets": sets}


if __name__ == "__main__":
    sys.exit(main())
