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
each cell's weight at answer time (core_model/readout.py). Each label set also gets a curve of its
own, its bins shrunk toward the pooled ones by a prior counted as `--prior-rows` rows, by default
the size with the lowest log loss on held-out halves of the valid cells (benchmarks/depth_curve_fit.py).
Refit the confidence temperatures afterwards (`instructcell calibrate`): the answer scores they
divide have changed.

    python benchmarks/readout_depth_curve.py --out-dir /tmp/depth --save-rows /tmp/depth/rows.json.gz
    python benchmarks/readout_depth_curve.py --from-rows /tmp/depth/rows.json.gz \
        --write instructcell_agent/checkpoints/default
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import logging
import math
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import anndata as ad
import numpy as np

from compare_checkpoints import split_specs
from depth_curve_fit import PRIOR_ROWS, Surfaces, bins_of, chosen_prior_rows, groups_of, held_out
from file_copies import thinned
from instructcell_agent import default_checkpoint_path
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.datasets import shared_root, split_names, subset_by_names
from instructcell_agent.core_model.io import read_h5ad, write_h5ad_atomic
from instructcell_agent.core_model.readout import Readout, SetDepthCurve, load_readout, save_readout
from instructcell_agent.core_model.readout_weight import T_GRID, fit_weight, label_nll
from instructcell_agent.core_model.temperature import calibration_error, confidences, fit_temperature
from instructcell_agent.core_model.thinning import umi_counts
from readout_variants import fit_blocks, fit_variant
from readout_weight_curve import at_weights_1_and_2
from report_io import run_meta, write_report

logger = logging.getLogger("readout_depth_curve")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=default_checkpoint_path())
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.25, 0.08, 0.03],
                   help="shares of each valid cell's counts kept (binomial thinning; 1: as they are)")
    p.add_argument("--datasets", help="comma-separated catalog names (default: every annotation and drug set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-weight", type=float, default=1.0, help="the cap the shipped weight curve has")
    p.add_argument("--min-rows", type=int, default=30, help="fewest rows a bin needs to place a curve point")
    p.add_argument("--prior-rows", type=float,
                   help="rows the pooled bin counts as in a set's own curve (default: the size with the lowest "
                        f"held-out log loss among {', '.join(f'{k:g}' for k in PRIOR_ROWS)}; inf: the pooled curve)")
    p.add_argument("--save-rows", type=Path, help="keep the split score rows in this .json.gz for --from-rows")
    p.add_argument("--from-rows", type=Path, help="fit from rows an earlier run saved instead of answering cells")
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


def rows_of(one: dict[str, Any], two: dict[str, Any], genes: np.ndarray, name: str) -> list[dict[str, Any]]:
    """Each scored row holding its true label, split into the language model's scores and the
    read-out's log-probabilities (from the same answers at weights 1 and 2), with its cell's genes,
    its set and its cell."""
    out = []
    for r1, r2, col, cell in zip(one["score_rows"], two["score_rows"], one["truth_columns"], one["scored_cells"]):
        r1, r2 = np.asarray(r1, np.float64), np.asarray(r2, np.float64)
        if col < 0 or not np.isfinite(r1).all():  # across label sets the other sets' labels are ruled out
            continue
        out.append({"lm": r1 - (r2 - r1), "ro": r2 - r1, "truth": int(col), "genes": int(genes[cell]),
                    "set": name, "cell": int(cell)})
    return out


def record(loaded, held: Readout, specs: list[Any], fraction: float, seed: int, tmp: Path) -> dict[str, Any]:
    """One depth: per set, the split score rows and macro-F1 at weight 1."""
    out = {}
    for spec in specs:
        copy = spec if fraction >= 1 else thinned_file(spec, fraction, seed, tmp)
        if copy is None:
            continue
        genes = detected_genes(copy.path, copy.split_path, loaded.vocab)
        answers = at_weights_1_and_2(loaded, held, spec, copy, seed)
        out[spec.name] = {"rows": rows_of(*answers, genes, spec.name), "macro_f1_weight_1": answers[0]["macro_f1"],
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


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = ["# The read-out's weight and the confidence temperature by cell depth, fitted on valid", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             *([f"- curves fitted from that run's saved rows by: `{meta['curve_command']}`"]
               if meta.get("curve_command") else []),
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
    lines += held_out_lines(report)
    lines += ["", "## Per set and depth", "", "| fraction | dataset | median genes | scored rows | macro-F1, weight 1 |",
              "| --- | --- | --- | --- | --- |"]
    for fraction, sets in report["sets"].items():
        for name, e in sets.items():
            lines.append(f"| {fraction} | {name} | {e['median_genes']:.0f} | {e['n_rows']} | "
                         f"{e['macro_f1_weight_1']:.3f} |")
    return "\n".join(lines) + "\n"


def held_out_lines(report: dict[str, Any]) -> list[str]:
    """The prior sizes compared on held-out halves, and the curves stored per set."""
    table, k = report["held_out"], report["prior_rows"]
    chosen = "inf" if math.isinf(k) else f"{k:g}"
    lines = ["", "## A curve per label set, on held-out cells", "",
             "Each set's valid cells split in halves (seeded); curves fitted on one half answer the other at the "
             "shipped temperature, then the halves swap. Prior rows: how many rows the pooled bin's loss counts as "
             "in a set's own fit (0: the set alone; inf: the pooled curve for every set).", "",
             "| prior rows | rows | log loss | accuracy | ECE |", "| --- | --- | --- | --- | --- |"]
    for name, e in table.items():
        a = e["all"]
        lines.append(f"| {name} | {a['n_rows']} | {a['log_loss']:.4f} | {a['accuracy']:.3f} | {a['ece']:.3f} |")
    lines += ["", f"Per set and per bin, prior rows {chosen} against inf (the pooled curve):", "",
              "| set or bin | rows | log loss | accuracy | ECE |", "| --- | --- | --- | --- | --- |"]
    for part in ("sets", "bins"):
        for name, e in table[chosen][part].items():
            p = table["inf"][part][name]
            if e["n_rows"]:
                lines.append(f"| {name} | {e['n_rows']} | {p['log_loss']:.4f} -> {e['log_loss']:.4f} | "
                             f"{p['accuracy']:.3f} -> {e['accuracy']:.3f} | {p['ece']:.3f} -> {e['ece']:.3f} |")
    lines += ["", f"Stored per-set curves (prior rows {chosen}; all rows):", ""]
    lines += [f"- {name}: " + ", ".join(f"({g:.0f}, {w:.2f})" for g, w in points)
              for name, points in report["set_curves"].items()] or ["- none: every set on the pooled curve"]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    cmd = [sys.executable.rsplit("/", 1)[-1], *sys.argv] if argv is None else ["readout_depth_curve.py", *argv]
    loaded = load_checkpoint(args.checkpoint, "cpu", precision="float32")
    if loaded.readout is None:
        raise SystemExit(f"{args.checkpoint} has no read-out (instructcell train-readout)")
    if args.from_rows:
        meta, sets, rows = load_rows(args.from_rows)
        meta["curve_command"] = shlex.join(cmd)
    else:
        meta, sets, rows = measure(args, cmd, loaded)
        if args.save_rows:
            save_rows(args.save_rows, meta, sets, rows)
    meta.update(min_rows=args.min_rows, max_weight=args.max_weight)
    report = fit(rows, meta, sets, args)
    logger.info("wrote %s", write_report(report, render_markdown(report), args.out_dir, "readout_depth_curve"))
    if args.write is not None:
        store(args.write, loaded, report)
    return 0


def fit(rows: list[dict[str, Any]], meta: dict[str, Any], sets: dict[str, Any], args: argparse.Namespace
        ) -> dict[str, Any]:
    """The pooled bins and curve, the held-out comparison of prior sizes and each set's curve."""
    shipped_t = meta["shipped_temperature"]
    bins = {name: fit_bin(inside, shipped_t, args.max_weight) for name, inside in bins_of(rows).items()}
    table = held_out(rows, PRIOR_ROWS, args.min_rows, args.max_weight, shipped_t, args.seed)
    prior_rows = args.prior_rows if args.prior_rows is not None else float(chosen_prior_rows(table))
    curve, by_set = Surfaces(rows, args.min_rows).curves(prior_rows, args.max_weight)
    return {"meta": meta, "bins": bins, "sets": sets, "curve": curve, "held_out": table,
            "prior_rows": prior_rows, "set_curves": {} if math.isinf(prior_rows) else by_set}


def store(root: Path, loaded, report: dict[str, Any]) -> None:
    """The curves into the read-out of the checkpoint at `root` (its labels from `loaded`)."""
    target = load_readout(root, loaded.vocab)
    if target is None:
        raise SystemExit(f"{root} has no read-out to store the curve in")
    unknown = sorted(set(report["set_curves"]) - set(loaded.label_sets))
    if unknown:
        raise SystemExit(f"{root}: the rows hold label sets its checkpoint lacks: {', '.join(unknown)}")
    meta = report["meta"]
    target.depth_curve = report["curve"]
    target.set_depth_curves = {name: SetDepthCurve(frozenset(loaded.label_sets[name]["labels"]), points)
                               for name, points in report["set_curves"].items()}
    target.info["depth_curve_command"] = meta.get("curve_command", meta["command"])
    target.info["depth_curve_prior_rows"] = report["prior_rows"]
    target.info.pop("depth_curve_measured_by", None)
    if meta.get("curve_command"):
        target.info["depth_curve_measured_by"] = meta["command"]
    save_readout(root, target, loaded.vocab)
    logger.info("stored the curves in %s/readout.json; refit its temperatures (instructcell calibrate)", root)


def save_rows(path: Path, meta: dict[str, Any], sets: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = [{**r, "lm": np.asarray(r["lm"]).tolist(), "ro": np.asarray(r["ro"]).tolist()} for r in rows]
    tmp = path.with_name(path.name + ".part")
    with gzip.open(tmp, "wt") as f:
        json.dump({"meta": meta, "sets": sets, "rows": plain}, f)
    tmp.replace(path)
    logger.info("kept %d rows in %s", len(rows), path)


def load_rows(path: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    with gzip.open(path, "rt") as f:
        saved = json.load(f)
    rows = [{**r, "lm": np.asarray(r["lm"], np.float64), "ro": np.asarray(r["ro"], np.float64)} for r in saved["rows"]]
    return saved["meta"], saved["sets"], rows


def measure(args: argparse.Namespace, cmd: list[str], loaded
            ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Answer the thinned valid cells at every depth: the run's metadata, each set's figures per
    depth and the split score rows."""
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
    meta = {**run_meta(shlex.join(cmd)), "checkpoint": str(args.checkpoint), "seed": args.seed,
            "fractions": args.fractions, "shared": str(shared_root()), "shipped_temperature": shipped_t}
    return meta, sets, rows


if __name__ == "__main__":
    sys.exit(main())
