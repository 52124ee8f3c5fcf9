"""Gene-saliency benchmark: marker precision, a deletion test, and speed, on three labelled sets.

What it measures, on the canonical test split of each dataset (default: zheng2017_pbmc_sorted,
xin2016_pancreas_subset, bastidasponce2019_pancreas_e155), with ``ica.explain``'s defaults
(saliency = gradient x (input - the checkpoint's mean training cell of the dataset's label set)
on log1p(CP10k), target = log-probability of a label among the dataset's candidates, per-cell
min-max scores averaged per label):

(a) mean PanglaoDB precision at 10 across labels (our label mapping, the dataset's species):
    ours with each cell's true label as target and group (the comparison), ours with the
    predicted label; beside them the same with raw (unscaled) means, with the language model
    alone, against zero expression (the default before 2026-12-04), and against the mean test
    cell; scanpy's wilcoxon on the same test cells (model genes), on the train split (model
    genes), and on the train split over all the file's genes (how the reference numbers 0.39 /
    0.60 / 0.15 were measured).
    Target: ours (true label) >= wilcoxon on the train split - 0.05 on every set, and >= 0.5 on
    xin2016_pancreas_subset. CellMarker 2.0 precision is reported beside it.
(b) deletion test: zeroing each cell's top-10 salient expressed genes (model input space) must
    lower the predicted label's probability >= 3x more than zeroing 10 random expressed genes;
    also reported in log-odds, which stays measurable when the model is sure (p near 1).
(c) seconds per 1,000 cells on this machine for saliency (all test cells) and Integrated
    Gradients (first --ig-cells test cells, 64 points refined to |delta| < 0.05), with IG deltas.
    With --ig-all, (a) also ranks by Integrated Gradients on every test cell (meant for a GPU:
    about 80 integration points per cell on the default checkpoint).

It writes ``explain.md`` and ``explain.json`` to ``--out-dir`` (default benchmarks/results).

    python benchmarks/explain_benchmark.py --checkpoint DIR
    python benchmarks/explain_benchmark.py --device cuda --ig-all      # on a GPU machine
    python benchmarks/explain_benchmark.py --checkpoint DIR --datasets xin2016_pancreas_subset \
        --max-cells 20 --out-dir /tmp/explain_smoke      # smoke run: the report says so
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shlex
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # baselines.py sits beside this script

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402

from baselines import prepared_adata  # noqa: E402
from instructcell_agent.core_model.alignment import align_to_vocab  # noqa: E402
from instructcell_agent.core_model.checkpoint import LoadedModel, load_checkpoint  # noqa: E402
from instructcell_agent.core_model.datasets import DatasetSpec, load_catalog, read_split, shared_root  # noqa: E402
from instructcell_agent.core_model.datasets import subset_by_names  # noqa: E402
from instructcell_agent.core_model.io import get_labels, read_h5ad, write_json_atomic, write_text_atomic  # noqa: E402
from instructcell_agent.core_model.precision import cpu_has_fast_bf16  # noqa: E402
from instructcell_agent.core_model.scoring import SCORINGS  # noqa: E402
from instructcell_agent.interpret.aggregate import cell_scores, label_means, rankings  # noqa: E402
from instructcell_agent.interpret.api import explain, json_ready  # noqa: E402
from instructcell_agent.interpret.faithfulness import deletion_test  # noqa: E402
from instructcell_agent.interpret.markers import load_marker_db, marker_report, wilcoxon_rankings  # noqa: E402

logger = logging.getLogger("explain_benchmark")

DATASETS = ("zheng2017_pbmc_sorted", "xin2016_pancreas_subset", "bastidasponce2019_pancreas_e155")
REFERENCE_WILCOXON = {"zheng2017_pbmc_sorted": 0.39, "xin2016_pancreas_subset": 0.60,
                      "bastidasponce2019_pancreas_e155": 0.15}
MARGIN, XIN_FLOOR, DELETION_RATIO, K = 0.05, 0.5, 3.0, 10
VERSIONED = ("instructcell-agent", "torch", "captum", "transformers", "scanpy", "anndata", "numpy")


def _positive(text: str) -> int:
    # the report's speed table needs at least one IG cell; say so before minutes of saliency
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="checkpoint directory (default: the shipped one)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated catalog names")
    p.add_argument("--max-cells", type=int, help="first N test cells only (smoke runs)")
    p.add_argument("--ig-cells", type=_positive, default=32, help="test cells timed with Integrated Gradients (>= 1)")
    p.add_argument("--ig-all", action="store_true",
                   help="also rank with Integrated Gradients on every test cell (slow on CPU; for a GPU run)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--scoring", choices=SCORINGS, default="auto",
                   help="candidate scoring explained (auto: decisive tokens of the learned labels, as annotate; "
                        "reports written before this option existed used full)")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="also time saliency with the LM in bfloat16: auto = on a GPU or a CPU with bfloat16 units "
                        "(elsewhere bfloat16 is emulated and several times slower, which would only lengthen the run)")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.max_cells is not None and args.max_cells < 1:
        p.error("--max-cells must be positive")
    if args.checkpoint is None:
        from instructcell_agent.api import default_checkpoint_path

        args.checkpoint = default_checkpoint_path()
    return args


def select_specs(names: str) -> list[DatasetSpec]:
    specs = {s.name: s for s in load_catalog(tasks=("annotation",))}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(specs))
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown}; catalog has {sorted(specs)}")
    return [specs[n] for n in wanted]


# ---------------------------------------------------------------- measurements

def _mean_precision(ranked: dict[str, list[str]], db: Any, species: str) -> dict[str, Any]:
    report = marker_report(ranked, db, species, K)
    values = report["precision_at_k"].astype(float)
    return {"mean": float(np.nanmean(values)) if values.notna().any() else None,
            "per_label": dict(zip(report["label"], [None if np.isnan(v) else float(v) for v in values])),
            "known_in_top": dict(zip(report["label"], report["known_in_top"]))}


def _our_rankings(result: Any, normalize: str, order: list[str]) -> dict[str, list[str]]:
    a = result.attributions
    means = label_means(cell_scores(a.values, a.above_reference, normalize), result.groups, result.genes, order=order)
    return {label: names for label, (names, _) in rankings(means, K, positive_only=True).items()}


def _wilcoxon_train(spec: DatasetSpec, adata: Any, train_names: list[str], vocab: list[str]) -> dict[str, Any]:
    """wilcoxon rankings on the train split: over the model's genes and over all the file's genes."""
    train = subset_by_names(adata, train_names, "train")
    truth = get_labels(train, spec.label_key)
    counts = align_to_vocab(train, vocab).X
    totals = np.asarray(counts.sum(1)).ravel().clip(min=1e-6)
    log_vocab = sp.csr_matrix(sp.diags(1e4 / totals) @ counts)
    log_vocab.data = np.log1p(log_vocab.data)
    # Detection on the whole file, as the annotation baselines do, so one scale decision holds.
    full = subset_by_names(prepared_adata(adata), train_names, "train")
    return {"vocab": wilcoxon_rankings(log_vocab, vocab, truth, n_genes=K),
            "all_genes": wilcoxon_rankings(full.X, [g.upper() for g in full.var_names], truth, n_genes=K),
            "n_train": int(train.n_obs)}


def _ig_block(loaded: LoadedModel, test: Any, cands: list[str], n_cells: int, batch_size: int,
              scoring: str) -> dict[str, Any]:
    sub = test[: min(n_cells, test.n_obs)].copy()
    start = time.perf_counter()
    result = explain(sub, model=loaded, candidates=cands, method="ig", batch_size=batch_size, compare_wilcoxon=False,
                     scoring=scoring)
    seconds = time.perf_counter() - start
    a = result.attributions
    delta = np.abs(a.delta)
    return {"n_cells": int(sub.n_obs), "seconds": seconds, "seconds_per_1000": 1000 * seconds / sub.n_obs,
            "delta_abs_median": float(np.median(delta)), "delta_abs_max": float(delta.max()),
            "points_per_cell_mean": float(np.mean(a.steps_used)), "settings": "n_steps 64, tolerance 0.05"}


def run_dataset(spec: DatasetSpec, loaded: LoadedModel, args: argparse.Namespace) -> dict[str, Any]:
    logger.info("== %s", spec.name)
    adata = read_h5ad(spec.path)
    split = read_split(spec.split_path)
    test_names = split["test"][: args.max_cells] if args.max_cells else split["test"]
    test = subset_by_names(adata, test_names, "test").copy()
    truth = get_labels(test, spec.label_key)
    known = loaded.label_sets.get(spec.name)
    cands = list(known["labels"]) if known else sorted(set(get_labels(adata, spec.label_key)))
    species = spec.species if spec.species in ("human", "mouse") else None
    db, db2 = load_marker_db("panglaodb"), load_marker_db("cellmarker2")
    row: dict[str, Any] = {"name": spec.name, "n_test": int(test.n_obs), "species": species, "candidates": cands,
                           "candidates_source": "checkpoint label set" if known else "dataset labels"}
    given = explain(test, model=loaded, labels=truth, candidates=cands, batch_size=args.batch_size,
                    compare_wilcoxon=False, scoring=args.scoring, species=species)
    start = time.perf_counter()
    predicted = explain(test, model=loaded, candidates=cands, batch_size=args.batch_size, compare_wilcoxon=False,
                        scoring=args.scoring, species=species)
    saliency_s = time.perf_counter() - start
    against_mean = explain(test, model=loaded, labels=truth, candidates=cands, batch_size=args.batch_size,
                           compare_wilcoxon=False, scoring=args.scoring, species=species, reference="mean")
    # The default before 2026-12-04: against zero expression (gradient x input).
    against_zero = explain(test, model=loaded, labels=truth, candidates=cands, batch_size=args.batch_size,
                           compare_wilcoxon=False, scoring=args.scoring, species=species, reference="zero")
    # The same true-label saliency with the language model alone (no read-out term), for comparison.
    alone = explain(test, model=loaded, labels=truth, candidates=cands, batch_size=args.batch_size,
                    compare_wilcoxon=False, scoring=args.scoring, species=species, readout=False)
    row["readout"] = given.provenance["readout"]
    row["reference_sets"] = given.provenance["reference_sets"]
    row["accuracy"] = float(np.mean(predicted.predicted.astype(str) == truth))
    wil_train = _wilcoxon_train(spec, adata, split["train"], loaded.vocab)
    wil_test = wilcoxon_rankings(sp.csr_matrix(given.attributions.inputs), loaded.vocab, truth, n_genes=K)
    rank_sets = {
        "ours_true_label": _our_rankings(given, "minmax", cands),
        "ours_true_label_lm_alone": _our_rankings(alone, "minmax", cands),
        "ours_true_label_raw": _our_rankings(given, "none", cands),
        "ours_true_label_zero_ref": _our_rankings(against_zero, "none", cands),
        "ours_true_label_zero_ref_minmax": _our_rankings(against_zero, "minmax", cands),
        "ours_true_label_mean_ref_minmax": _our_rankings(against_mean, "minmax", cands),
        "ours_predicted": _our_rankings(predicted, "minmax", cands),
        "ours_predicted_raw": _our_rankings(predicted, "none", cands),
        "wilcoxon_test_cells": wil_test, "wilcoxon_train_vocab": wil_train["vocab"],
        "wilcoxon_train_all_genes": wil_train["all_genes"]}
    if args.ig_all:
        ig_given = explain(test, model=loaded, labels=truth, candidates=cands, method="ig", batch_size=args.batch_size,
                           compare_wilcoxon=False, scoring=args.scoring, species=species)
        rank_sets["ours_ig_true_label"] = _our_rankings(ig_given, "minmax", cands)
        row["ig_all_delta_abs_max"] = float(np.abs(ig_given.attributions.delta).max())
    row["n_train"] = wil_train["n_train"]
    row["precision"] = {k: _mean_precision(v, db, species) for k, v in rank_sets.items()}
    row["precision_cellmarker2"] = {k: _mean_precision(v, db2, species)["mean"] for k, v in rank_sets.items()}
    row["top_genes"] = {k: rank_sets[k] for k in ("ours_true_label", "ours_true_label_zero_ref",
                                                  "wilcoxon_train_all_genes")}
    row["deletion"] = deletion_test(loaded.model, predicted.attributions, k=K, n_random=3).to_dict()
    row["saliency_timing"] = {"n_cells": int(test.n_obs), "seconds": saliency_s,
                              "seconds_per_1000": 1000 * saliency_s / test.n_obs,
                              **(_bf16_saliency(loaded, test, cands, args.batch_size, species,
                                                rank_sets["ours_predicted"], args.scoring)
                                 if _want_bf16(args, loaded) else {})}
    row["ig"] = _ig_block(loaded, test, cands, args.ig_cells, args.batch_size, args.scoring)
    row["targets"] = target_checks(spec.name, row)
    return row


def _want_bf16(args: argparse.Namespace, loaded: LoadedModel) -> bool:
    if args.bf16 != "auto":
        return args.bf16 == "on"
    # the device the model landed on (--device auto resolves to cpu on a machine without a GPU)
    return loaded.model.device.type != "cpu" or cpu_has_fast_bf16()


def _bf16_saliency(loaded: LoadedModel, test: Any, cands: list[str], batch_size: int, species: str | None,
                   float32_ranked: dict[str, list[str]], scoring: str) -> dict[str, Any]:
    """Saliency timed again with the LM in bfloat16 (`--precision auto` on CPUs with bfloat16
    units), and how many of each label's top-10 genes it shares with the float32 ranking."""
    import torch

    with loaded.model.lm_dtype_as(torch.bfloat16):  # the float32 weights come back exactly
        start = time.perf_counter()
        half = explain(test, model=loaded, candidates=cands, batch_size=batch_size, compare_wilcoxon=False,
                       scoring=scoring, species=species)
        seconds = time.perf_counter() - start
    ranked = _our_rankings(half, "minmax", cands)
    shared = [len(set(genes[:K]) & set(ranked.get(label, [])[:K])) / K
              for label, genes in float32_ranked.items() if genes]
    return {"bf16_seconds_per_1000": 1000 * seconds / test.n_obs,
            "bf16_top10_overlap": float(np.mean(shared)) if shared else None}


def target_checks(name: str, row: dict[str, Any]) -> dict[str, Any]:
    """Each target as a bool; `met` is their conjunction (None-valued precisions fail)."""
    p = {k: v["mean"] for k, v in row["precision"].items()}
    ours = p["ours_true_label"]
    checks = {
        "precision_vs_wilcoxon_train": ours is not None and p["wilcoxon_train_all_genes"] is not None
        and ours >= p["wilcoxon_train_all_genes"] - MARGIN,
        "precision_vs_wilcoxon_train_model_genes": ours is not None and p["wilcoxon_train_vocab"] is not None
        and ours >= p["wilcoxon_train_vocab"] - MARGIN,
        "precision_vs_reference": ours is not None and ours >= REFERENCE_WILCOXON.get(name, 0.0) - MARGIN,
        "deletion_3x": _deletion_ok(row["deletion"]["mean_drop_top"], row["deletion"]["mean_drop_random"]),
        "deletion_3x_logodds": _deletion_ok(row["deletion"]["mean_logodds_drop_top"],
                                            row["deletion"]["mean_logodds_drop_random"]),
    }
    if name == "xin2016_pancreas_subset":
        checks["precision_at_least_0.5"] = ours is not None and ours >= XIN_FLOOR
    return {"checks": checks, "met": all(checks.values())}


def _deletion_ok(top: float, random: float) -> bool:
    """Top-10 deletion lowers the score, and by at least 3x what random deletion does (a random
    drop that is negative, i.e. a rise, is met by any positive top drop)."""
    return bool(top > 0 and top >= DELETION_RATIO * random)


# ---------------------------------------------------------------- report

def _f(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.2f}"


def _bf16_cell(timing: dict[str, Any]) -> str:
    if "bf16_seconds_per_1000" not in timing:
        return "n/a"
    return f"{timing['bf16_seconds_per_1000']:.0f} ({_f(timing['bf16_top10_overlap'])})"


def _tables(rows: list[dict[str, Any]]) -> list[str]:
    cols = ["ours_true_label", "ours_true_label_lm_alone", "ours_true_label_raw", "ours_true_label_zero_ref",
            "ours_true_label_zero_ref_minmax", "ours_true_label_mean_ref_minmax",
            "ours_predicted", "ours_predicted_raw",
            "wilcoxon_test_cells", "wilcoxon_train_vocab", "wilcoxon_train_all_genes"]
    if any("ours_ig_true_label" in r["precision"] for r in rows):
        cols.insert(4, "ours_ig_true_label")
    head = ["dataset", "n_test", "acc"] + cols + ["reference wilcoxon", "CellMarker2 ours / wilcoxon train"]
    lines = ["## (a) Mean PanglaoDB precision at 10 across labels", "", _md_head(head)]
    for r in rows:
        p = r["precision"]
        cm = r["precision_cellmarker2"]
        cells = [r["name"], str(r["n_test"]), _f(r["accuracy"])] + [_f(p[c]["mean"]) if c in p else "n/a" for c in cols]
        cells += [_f(REFERENCE_WILCOXON.get(r["name"])),
                  f"{_f(cm['ours_true_label'])} / {_f(cm['wilcoxon_train_all_genes'])}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## (b) Deletion test and (c) speed", "",
              _md_head(["dataset", "p drop top-10", "p drop random-10", "ratio", "log-odds drop top-10",
                        "log-odds drop random-10", "ratio", "mean p(pred)", "saliency s/1k cells",
                        "saliency s/1k cells, LM in bfloat16 (top-10 shared)", "IG s/1k cells", "IG cells",
                        "IG points/cell", "IG max abs delta", "targets met"])]
    for r in rows:
        d, ig, t = r["deletion"], r["ig"], r["targets"]
        failed = [k for k, ok in t["checks"].items() if not ok]
        lines.append("| " + " | ".join([
            r["name"], f"{d['mean_drop_top']:.4f}", f"{d['mean_drop_random']:.5f}", _f(d["ratio"]),
            f"{d['mean_logodds_drop_top']:.3f}", f"{d['mean_logodds_drop_random']:.3f}", _f(d["logodds_ratio"]),
            f"{d['mean_probability']:.3f}", f"{r['saliency_timing']['seconds_per_1000']:.0f}",
            _bf16_cell(r["saliency_timing"]), f"{ig['seconds_per_1000']:.0f}", str(ig["n_cells"]),
            f"{ig['points_per_cell_mean']:.0f}",
            f"{ig['delta_abs_max']:.4f}", "yes" if t["met"] else "no: " + ", ".join(failed)]) + " |")
    return lines


def _md_head(cols: list[str]) -> str:
    return "| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols)


def _per_label_lines(rows: list[dict[str, Any]], key: str, title: str) -> list[str]:
    lines = ["", f"## Top genes per label ({title}) and their known PanglaoDB markers", ""]
    for r in rows:
        if key not in r["top_genes"]:
            continue
        known = r["precision"][key]["known_in_top"]
        lines.append(f"### {r['name']}")
        for label, genes in r["top_genes"][key].items():
            lines.append(f"- {label}: {', '.join(genes)} (known: {known.get(label) or 'none'})")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    meta, rows = report["meta"], report["datasets"]
    lines = ["# Gene-saliency benchmark", "", f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {meta['nproc']} CPU cores, load average at start {meta['loadavg']}, torch threads "
             f"{meta['torch_threads']}, device {meta['device']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
             f"- checkpoint: `{meta['checkpoint']}`", f"- shared data: {meta['shared']}",
             f"- scoring: {meta.get('scoring', 'full')} (the log-probability explained: of the labels' decisive "
             "tokens under auto, as `annotate` scores them, or of every token under full)",
             "- method: saliency = gradient x input of the label's log-probability (softmax over the dataset's "
             "candidates of the language model's score plus, where the checkpoint has one, the linear gene "
             "read-out's weighted log-probability, as `annotate` answers; '_lm_alone' = the language model's "
             "alone) w.r.t. log1p(CP10k) over the model's genes, measured against the checkpoint's mean "
             "training cell of the dataset's label set (`reference=\"train\"`, the default; genes counted where "
             "a cell expresses them above it); per-label mean of per-cell min-max scores (each cell's supporting "
             "attributions scaled to [0, 1], the default); '_raw' = mean of the raw attributions; '_zero_ref' = "
             "gradient x input (`reference=\"zero\"`, the default before 2026-12-04; genes counted where "
             "expressed); '_mean_ref' = against the mean test cell (`reference=\"mean\"`); "
             "precision at 10 against PanglaoDB entries of "
             "the dataset's species "
             "through interpret/marker_map.json",
             f"- targets: ours (true label) >= wilcoxon on the train split - {MARGIN} on every set (checked against "
             f"all genes, model genes and the reference numbers), >= {XIN_FLOOR} on xin2016_pancreas_subset; "
             f"deletion: mean drop of p(predicted) after zeroing the top-10 salient genes > 0 and >= {DELETION_RATIO}x "
             "the drop after zeroing 10 random expressed genes (ratio n/a when the random drop is not positive); "
             "the same in log-odds log(p/(1-p)), which still moves when p is saturated near 1"]
    if meta["max_cells"]:
        lines.append(f"- **SMOKE RUN: only the first {meta['max_cells']} test cells of each set; not comparable to "
                     "full-split numbers**")
    ok = [r for r in rows if "error" not in r]
    lines += [""] + _tables(ok) + _per_label_lines(ok, "ours_true_label", "ours, true label")
    lines += _per_label_lines(ok, "ours_true_label_zero_ref", "ours, true label, against zero expression, raw")
    lines += [f"- **{r['name']} failed**: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines) + "\n"


def _versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_meta(args: argparse.Namespace, argv: Sequence[str] | None, loaded: LoadedModel) -> dict[str, Any]:
    cmd = [sys.executable.rsplit("/", 1)[-1], *sys.argv] if argv is None else ["explain_benchmark.py", *argv]
    return {"command": shlex.join(cmd), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "torch_threads": torch.get_num_threads(), "device": str(loaded.model.device), "versions": _versions(),
            "shared": str(shared_root()), "checkpoint": str(args.checkpoint), "max_cells": args.max_cells,
            "ig_all": args.ig_all, "scoring": args.scoring}


def write_outputs(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(json_ready(report), out_dir / "explain.json")
    write_text_atomic(render_markdown(report), out_dir / "explain.md")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    specs = select_specs(args.datasets)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    loaded = load_checkpoint(args.checkpoint, device)
    report: dict[str, Any] = {"meta": build_meta(args, argv, loaded), "datasets": []}
    for spec in specs:
        try:
            report["datasets"].append(run_dataset(spec, loaded, args))
        except Exception as exc:  # one broken set must not lose the others' numbers
            logger.error("%s failed:\n%s", spec.name, traceback.format_exc())
            report["datasets"].append({"name": spec.name, "error": f"{type(exc).__name__}: {exc}"})
        # Written after every set: a run stopped later (time, memory) keeps the sets it finished.
        write_outputs(report, args.out_dir)
    logger.info("wrote %s", args.out_dir / "explain.md")
    return 1 if any("error" in r for r in report["datasets"]) else 0


if __name__ == "__main__":
    sys.exit(main())
