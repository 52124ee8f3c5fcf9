"""Annotation benchmark: our checkpoint against CellTypist, HVG logistic regression and PCA-kNN.

What it measures, on the canonical split of every catalog dataset (9 annotation sets and the
erlotinib drug-response set):

* baselines (``benchmarks/baselines.py``) trained on train+valid, scored on test: accuracy, macro-F1
  over the dataset's label set, and predict-step throughput;
* our model via ``core_model.evaluation.evaluate``, twice: with the checkpoint's own validation
  phrasings and with the reference system's unseen test phrasings (shared/benchmarks/instructcell);
* throughput side by side: our model answering every test cell with one fixed instruction that
  lists the dataset's labels as candidates (each cell its own option order), and through the
  Python API (one prompt for all cells, end to end), against the baselines' predict step;
* the targets: macro-F1 within 0.02 of the best baseline everywhere and above it on four sets,
  unseen-phrasing accuracy within 0.02 of own-phrasing accuracy, invalid answers under 1%;
* how sure each gap to the best baseline is: a paired bootstrap interval over the test cells.

It writes ``annotation.md`` and ``annotation.json`` to ``--out-dir`` (default benchmarks/results).

Run (after ``pip install -e ".[bench]"``; shared data found through INSTRUCTCELL_SHARED)::

    python benchmarks/annotation_benchmark.py --checkpoint DIR
    python benchmarks/annotation_benchmark.py --skip-ours --out-dir /tmp/bench_baselines
    python benchmarks/annotation_benchmark.py --checkpoint DIR --datasets xin2016_pancreas_subset \
        --max-test-cells 20 --out-dir /tmp/bench_smoke     # smoke run: the table says so
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shlex
import sys
import tempfile
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # baselines.py sits beside this script

import numpy as np  # noqa: E402

from baselines import prepared_adata, run_baselines  # noqa: E402
from instructcell_agent.core_model.bootstrap import paired_f1_bootstrap  # noqa: E402
from instructcell_agent.core_model.checkpoint import LoadedModel, load_checkpoint  # noqa: E402
from instructcell_agent.core_model.corpus import load_split  # noqa: E402
from instructcell_agent.core_model.datasets import (  # noqa: E402
    DatasetSpec, load_catalog, read_split, shared_root, subset_by_names)
from instructcell_agent.core_model.evaluation import BANK_OF_TASK, evaluate, predict_split  # noqa: E402
from instructcell_agent.core_model.instructions import has_choices, load_bank, load_instruction_file  # noqa: E402
from instructcell_agent.core_model.io import get_labels, read_h5ad, write_json_atomic, write_text_atomic  # noqa: E402
from instructcell_agent.core_model.precision import cpu_has_fast_bf16  # noqa: E402
from instructcell_agent.core_model.readout import readout_name  # noqa: E402
from instructcell_agent.core_model.scoring import scoring_name, use_decisive  # noqa: E402

logger = logging.getLogger("annotation_benchmark")

TASK_CODE = {"annotation": "cta", "drug_response": "dsp"}
TEMPLATE_DIR = {"annotation": "cell_type_annotation", "drug_response": "drug_sensitivity_prediction"}
MUST_BEAT = ("zheng2017_pbmc_sorted", "bastidasponce2019_pancreas_e155", "kang2018_pbmc_ifnb",
             "aissa2021_pc9_erlotinib")
F1_MARGIN, PHRASING_MARGIN, MAX_INVALID = 0.02, 0.02, 0.01
THROUGHPUT_NOTE = (
    "Timed: our model answering every test cell (`predict_split`, gene alignment done before the clock starts) "
    "with one fixed instruction listing the dataset's labels as candidates, and its `evaluate` run with its own "
    "mixed phrasings (answers chosen among the learned labels where a phrasing lists no candidates), both scored "
    "as `evaluate` scores by default (decisive tokens of learned labels; the linear read-out beside the LM where "
    "the checkpoint has one); the baselines' predict step on log1p(CP10k). CellTypist `annotate` spends a fixed "
    "time matching gene names (numpy object-array `isin`, seconds on 20k genes), so the ratio uses its "
    "scale+predict steps timed alone on genes already in model order (same predictions, checked). On CPUs with "
    "bfloat16 units the fixed-instruction run is timed twice, with the language model in float32 (as in the "
    "accuracy table) and in bfloat16 (what `--precision auto` picks there), with the share of cells given the same "
    "answer; elsewhere bfloat16 is emulated and not timed (`--bf16`). The fixed instruction still lists each "
    "cell's candidates in its own random order (the evaluation protocol), so no two cells share a prompt; the "
    "Python API column is `ica.annotate(test_cells, candidates=labels)` (`predict_drug_response` for the drug "
    "set) as a user calls it, candidates in one order, so one prompt serves every cell, timed end to end "
    "including gene alignment, with its accuracy. Timings are wall-clock on a shared machine (see load average "
    "above).")
VERSIONED = ("instructcell-agent", "torch", "transformers", "scanpy", "anndata", "scikit-learn", "celltypist",
             "numpy")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="checkpoint directory (default: the shipped one)")
    p.add_argument("--datasets", help="comma-separated catalog names (default: all)")
    p.add_argument("--max-test-cells", type=int, help="first N test cells only (smoke runs)")
    p.add_argument("--skip-ours", action="store_true", help="baselines only")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="also time the fixed instruction with the LM in bfloat16 (auto: where the CPU has fast "
                        "bfloat16 units; elsewhere it is emulated, several times slower, and says nothing)")
    args = p.parse_args(argv)
    if args.max_test_cells is not None and args.max_test_cells < 1:
        p.error("--max-test-cells must be positive")
    if not args.skip_ours and args.checkpoint is None:
        try:
            from instructcell_agent.api import default_checkpoint_path
        except ImportError as exc:
            p.error(f"no shipped default checkpoint ({exc}); pass --checkpoint DIR")
        args.checkpoint = default_checkpoint_path()
    return args


def select_specs(names: str | None) -> list[DatasetSpec]:
    specs = load_catalog()
    if not names:
        return specs
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = sorted(set(wanted) - {s.name for s in specs})
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown}; catalog has {[s.name for s in specs]}")
    return [s for s in specs if s.name in wanted]


def effective_split(spec: DatasetSpec, max_test: int | None, tmp: Path) -> tuple[dict[str, list[str]], Path]:
    """The canonical split, its test list cut to `max_test` cells (written to `tmp`) for smoke runs."""
    if spec.split_path is None:
        raise ValueError(f"{spec.name} has no canonical split in the catalog")
    split = read_split(spec.split_path)
    if max_test is None or max_test >= len(split["test"]):
        return split, spec.split_path
    split = {**split, "test": split["test"][:max_test]}
    path = tmp / f"{spec.name}.json"
    path.write_text(json.dumps(split))  # evaluate() reads splits from files, so the cut one is a file too
    return split, path


def baseline_block(spec: DatasetSpec, split: dict[str, list[str]]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The baselines' report block, and the best baseline's answer per test cell (by obs name)."""
    adata = read_h5ad(spec.path)
    labels = sorted(set(get_labels(adata, spec.label_key)))
    # Value type is detected once on the whole file, so train and test share one decision.
    prepared = prepared_adata(adata)
    train = subset_by_names(prepared, split["train"] + split["valid"], "train+valid").copy()
    test = subset_by_names(prepared, split["test"], "test").copy()
    results = run_baselines(train, test, spec.label_key, labels)
    best = max(results.values(), key=lambda r: r.macro_f1)
    block = {"n_train": train.n_obs, "n_test": test.n_obs, "n_genes": prepared.n_vars, "labels": labels,
             "value_report": prepared.uns["value_report"],
             "baselines": {k: r.to_dict() for k, r in results.items()},
             "best_baseline": {"name": best.name, "macro_f1": best.macro_f1, "accuracy": best.accuracy}}
    cells = {"obs_names": test.obs_names.to_numpy(str), "truth": np.asarray(get_labels(test, spec.label_key), str),
             "predicted": np.asarray(best.predicted, str)}
    return block, cells


def unseen_phrasings(task: str) -> tuple[list[str], Path]:
    path = shared_root() / "benchmarks" / "instructcell" / "test_templates" / TEMPLATE_DIR[task] / "templates.json"
    return load_instruction_file(path), path


def fixed_phrasing(task: str) -> str:
    """The first own validation phrasing that lists candidates: one instruction for every cell."""
    return next(t for t in load_bank(BANK_OF_TASK[TASK_CODE[task]]).valid if has_choices(t))


def ours_block(loaded: LoadedModel, spec: DatasetSpec, split_path: Path) -> dict[str, Any]:
    code = TASK_CODE[spec.task]
    unseen, unseen_path = unseen_phrasings(spec.task)
    out: dict[str, Any] = {"unseen_source": str(unseen_path)}
    runs = [("own", None, True), ("unseen", unseen, True)]
    if loaded.readout is not None:  # the language model's own answers, same cells and phrasings
        runs.append(("lm_alone", None, False))
    for key, phrasings, readout in runs:
        # Own-phrasing answers per cell feed the interval on the gap to the best baseline.
        result = evaluate(loaded, spec.path, split_path, code, spec.label_key, instructions=phrasings, seed=0,
                          keep_predictions=key == "own", readout=readout)
        result.pop("labels", None)  # already stored once per dataset
        out[key] = result
        logger.info("ours (%s phrasings): acc %.3f macro-F1 %.3f invalid %.3f", key,
                    result["accuracy"], result["macro_f1"], result["invalid_rate"])
    return out


def throughput_block(loaded: LoadedModel, spec: DatasetSpec, split_path: Path, labels: list[str],
                     bf16: bool) -> dict[str, Any]:
    """Fixed-instruction answering, scored as `evaluate` scores by default (decisive tokens for
    learned labels, the read-out where the checkpoint has one), timed with the LM in float32 (as
    loaded) and, if `bf16`, in bfloat16."""
    import torch

    data = load_split(spec, loaded.vocab, "test", split_path=split_path)
    phrasing = fixed_phrasing(spec.task)
    decisive = use_decisive("auto", set(labels) <= set(loaded.labels_for_task(spec.task)))

    def run():
        return predict_split(loaded, data.X, data.fields, data.labels, labels, [phrasing], seed=0,
                             decisive=decisive, readout=loaded.readout, label_lists=loaded.label_lists)

    preds = run()
    out = {"phrasing": phrasing, "n_cells": data.n_cells, "seconds": preds.seconds,
           "cells_per_second": data.n_cells / max(preds.seconds, 1e-9), "scoring": scoring_name(decisive),
           "readout": readout_name(loaded.readout, labels),
           "accuracy": float(np.mean(preds.predicted == data.labels))}
    if not bf16:
        return out
    with loaded.model.lm_dtype_as(torch.bfloat16):  # the float32 weights come back exactly
        half = run()
    return {**out, "bf16_cells_per_second": data.n_cells / max(half.seconds, 1e-9),
            "bf16_accuracy": float(np.mean(half.predicted == data.labels)),
            "bf16_same_answer": float(np.mean(half.predicted == preds.predicted))}


def api_block(loaded: LoadedModel, spec: DatasetSpec, split: dict[str, list[str]], labels: list[str]) -> dict[str, Any]:
    """The Python API as a user calls it on the test cells, candidates listed in one order (so one
    prompt serves every cell and its prefix and the candidates' shared tokens are run once per
    batch), timed end to end: gene alignment, prompt fields, scoring, the result object."""
    import time

    import instructcell_agent as ica

    test = subset_by_names(read_h5ad(spec.path), split["test"], "test").copy()
    fields = {"species": spec.species, "tissue": spec.tissue, "sequencing_method": spec.sequencing_method}
    start = time.perf_counter()
    if spec.task == "drug_response":
        result = ica.predict_drug_response(test, drug=spec.drug, model=loaded, candidates=labels, **fields)
    else:
        result = ica.annotate(test, model=loaded, candidates=labels, **fields)
    seconds = time.perf_counter() - start
    truth = dict(zip(test.obs_names, get_labels(test, spec.label_key)))
    right = [label == truth[name] for name, label in zip(result.obs_names, result.labels)]
    return {"n_cells": test.n_obs, "n_answered": len(right), "seconds": seconds,
            "cells_per_second": test.n_obs / max(seconds, 1e-9), "accuracy": float(np.mean(right)),
            "instruction": result.provenance["instruction"], "scoring": result.provenance["scoring"],
            "readout": result.provenance["readout"]}


def f1_gap_interval(ours: dict[str, Any], best: dict[str, np.ndarray], labels: list[str]) -> dict[str, Any]:
    """Paired bootstrap of macro-F1 (ours, own phrasings) - macro-F1 (best baseline) over the test cells."""
    index = {name: i for i, name in enumerate(best["obs_names"])}
    order = np.asarray([index[name] for name in ours["obs_names"]])
    if not np.array_equal(best["truth"][order], np.asarray(ours["truth"], str)):
        raise RuntimeError("our model and the baselines read different labels for the same test cells")
    return paired_f1_bootstrap(ours["truth"], ours["predicted"], best["predicted"][order], labels).to_dict()


def f1_checks(name: str, delta_f1: float) -> dict[str, bool]:
    """The macro-F1 targets for one set, given our macro-F1 minus the best baseline's."""
    checks = {"f1_within_0.02": delta_f1 >= -F1_MARGIN}
    if name in MUST_BEAT:
        checks["f1_above_best"] = delta_f1 > 0
    return checks


def target_checks(name: str, row: dict[str, Any]) -> dict[str, Any]:
    """Each target as a bool; `met` is their conjunction."""
    own, unseen, best = row["ours"]["own"], row["ours"]["unseen"], row["best_baseline"]["macro_f1"]
    delta_f1 = own["macro_f1"] - best
    checks = {
        **f1_checks(name, delta_f1),
        "phrasing_within_0.02": unseen["accuracy"] - own["accuracy"] >= -PHRASING_MARGIN,
        "invalid_below_1pct": max(own["invalid_rate"], unseen["invalid_rate"]) < MAX_INVALID,
    }
    return {"delta_f1_vs_best": delta_f1, "delta_acc_unseen_minus_own": unseen["accuracy"] - own["accuracy"],
            "checks": checks, "met": all(checks.values())}


def run_dataset(spec: DatasetSpec, loaded: LoadedModel | None, max_test: int | None, tmp: Path,
                bf16: bool = False) -> dict[str, Any]:
    logger.info("== %s (%s)", spec.name, spec.task)
    split, split_path = effective_split(spec, max_test, tmp)
    row: dict[str, Any] = {"name": spec.name, "task": spec.task, "label_key": spec.label_key,
                           "test_truncated": split_path != spec.split_path}
    block, best_cells = baseline_block(spec, split)
    row.update(block)
    if loaded is not None:
        row["ours"] = ours_block(loaded, spec, split_path)
        row["throughput"] = throughput_block(loaded, spec, split_path, row["labels"], bf16)
        row["throughput"]["api"] = api_block(loaded, spec, split, row["labels"])
        row["targets"] = target_checks(spec.name, row)
        # Per-cell answers are only needed here; the report keeps the interval, not n_test labels.
        own_cells = row["ours"]["own"].pop("cells")
        row["targets"]["f1_vs_best_bootstrap"] = f1_gap_interval(own_cells, best_cells, row["labels"])
    return row


# ---------------------------------------------------------------- report

def _af(acc: float, f1: float) -> str:
    return f"{acc:.3f} / {f1:.3f}"


def _ours_cell(r: dict[str, Any]) -> str:
    return f"{r['accuracy']:.3f} / {r['macro_f1']:.3f} / {100 * r['invalid_rate']:.1f}%"


def _gap_cell(targets: dict[str, Any]) -> str:
    ci = targets.get("f1_vs_best_bootstrap")
    gap = f"{targets['delta_f1_vs_best']:+.3f}"
    return f"{gap} [{ci['low']:+.3f}, {ci['high']:+.3f}]" if ci else gap


def _accuracy_row(row: dict[str, Any]) -> str:
    b = row["baselines"]
    cells = [row["name"], str(row["n_test"])]
    cells += [_af(b[k]["accuracy"], b[k]["macro_f1"]) for k in ("celltypist", "logreg", "knn")]
    cells.append(f"{row['best_baseline']['macro_f1']:.3f} ({row['best_baseline']['name']})")
    if "ours" in row:
        t = row["targets"]
        failed = [k for k, ok in t["checks"].items() if not ok]
        alone = row["ours"].get("lm_alone")
        cells += [_ours_cell(row["ours"]["own"]), _af(alone["accuracy"], alone["macro_f1"]) if alone else "-",
                  _ours_cell(row["ours"]["unseen"]),
                  _gap_cell(t), f"{t['delta_acc_unseen_minus_own']:+.3f}",
                  "yes" if t["met"] else "no: " + ", ".join(failed)]
    return "| " + " | ".join(cells) + " |"


def _throughput_row(row: dict[str, Any]) -> str:
    b = row["baselines"]
    cps = {k: b[k]["cells_per_second"] for k in b}
    core = b["celltypist"].get("core_cells_per_second") or cps["celltypist"]
    cells = [row["name"], str(row["n_test"])]
    if "throughput" in row:
        t = row["throughput"]
        ours, half = t["cells_per_second"], t.get("bf16_cells_per_second")
        cells += [f"{ours:.1f}", f"{row['ours']['own']['cells_per_second']:.1f}"]
        cells += [f"{half:.1f} ({half / ours:.2f}x fp32; same answer {t['bf16_same_answer']:.3f})" if half else "-"]
        api = t.get("api")
        cells += [f"{api['cells_per_second']:.1f} (acc {api['accuracy']:.3f})" if api else "-"]
    cells += [f"{cps['celltypist']:.0f}", f"{core:.0f}", f"{cps['logreg']:.0f}", f"{cps['knn']:.0f}"]
    if "throughput" in row:
        best = max(ours, half or 0.0, api["cells_per_second"] if api else 0.0)
        cells += [f"{best / core:.3g}x", f"{best / cps['knn']:.3g}x"]
    return "| " + " | ".join(cells) + " |"


def _tables(rows: list[dict[str, Any]], with_ours: bool) -> list[str]:
    head = ["dataset", "n_test", "CellTypist acc / F1", "logreg acc / F1", "kNN acc / F1", "best baseline F1"]
    if with_ours:
        head += ["ours, own phrasings acc / F1 / invalid", "ours, LM alone (no read-out), own phrasings acc / F1",
                 "ours, unseen phrasings acc / F1 / invalid",
                 "F1 - best baseline [95% interval]", "acc unseen - own", "target met?"]
    thead = ["dataset", "n_test"]
    if with_ours:
        thead += ["ours, fixed instruction (cells/s)", "ours, evaluate own phrasings (cells/s)",
                  "ours, fixed instruction, LM in bfloat16 (cells/s)",
                  "ours, Python API, one prompt for all cells, end to end (cells/s)"]
    thead += ["CellTypist annotate (cells/s)", "CellTypist scale+predict (cells/s)", "logreg (cells/s)",
              "kNN (cells/s)"] + (["ours (fastest) / CellTypist scale+predict", "ours (fastest) / kNN"]
                                  if with_ours else [])
    ok = [r for r in rows if "error" not in r]
    lines = ["## Accuracy / macro-F1 (test split)", "", _md_head(head)] + [_accuracy_row(r) for r in ok]
    lines += ["", "## Throughput (predict step only, test cells)", "", THROUGHPUT_NOTE, "", _md_head(thead)]
    return lines + [_throughput_row(r) for r in ok]


def _md_head(cols: list[str]) -> str:
    return "| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols)


def render_markdown(report: dict[str, Any]) -> str:
    meta, rows = report["meta"], report["datasets"]
    with_ours = meta["checkpoint"] is not None
    lines = ["# Annotation benchmark", "", f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {meta['nproc']} CPU cores (nproc), load average at start {meta['loadavg']}, "
             f"torch threads {meta['torch_threads']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
             f"- shared data: {meta['shared']}"]
    lines += ["- baselines: trained on train+valid, log1p(CP10k) of each set's own genes; CellTypist 1.7.1 "
              "(all genes, no majority voting), logistic regression on 2,000 seurat HVGs, 15-NN on 50 PCs; "
              "macro-F1 over the dataset's full label set"]
    if with_ours:
        lines += [f"- checkpoint: `{meta['checkpoint']}` ({meta['checkpoint_summary']})",
                  "- ours: `evaluate(..., seed=0)`; each test cell gets one phrasing drawn at random; an invalid "
                  "answer counts as wrong",
                  "- interval: paired bootstrap of macro-F1 (ours, own phrasings) - macro-F1 (best baseline) "
                  "over the test cells (2,000 resamples, seed 0; `core_model/bootstrap.py`): a target whose "
                  "threshold lies inside it is missed or met within the noise of the split's size",
                  f"- targets: macro-F1 (own phrasings) >= best baseline - {F1_MARGIN} on every set and > best on "
                  f"{', '.join(MUST_BEAT)}; unseen-phrasing accuracy >= own - {PHRASING_MARGIN}; "
                  f"invalid < {MAX_INVALID:.0%} (both phrasing sets)"]
    else:
        lines.append("- our model: skipped (--skip-ours), baselines only")
    if meta["max_test_cells"]:
        lines.append(f"- **SMOKE RUN: only the first {meta['max_test_cells']} test cells of each set; not comparable "
                     "to full-split numbers**")
    lines.append("")
    lines += _tables(rows, with_ours)
    lines += _summary_lines(rows, with_ours)
    return "\n".join(lines) + "\n"


def _summary_lines(rows: list[dict[str, Any]], with_ours: bool) -> list[str]:
    out = [""]
    if with_ours:
        scored = [r for r in rows if "targets" in r]
        met = sum(r["targets"]["met"] for r in scored)
        out.append(f"Targets met on {met} of {len(scored)} datasets.")
    for r in rows:
        if "error" in r:
            out.append(f"- **{r['name']} failed**: {r['error']}")
    return out


# ---------------------------------------------------------------- run

def _versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def checkpoint_summary(loaded: LoadedModel) -> str:
    cfg, info = loaded.model.cfg, loaded.info
    enc, bb = cfg.encoder, cfg.backbone
    trained_on = info.get("data", [])  # train_config.datasets is empty when every catalog set was used
    return (f"backbone {bb.name} ({bb.kind}), encoder {enc.n_genes} genes / {enc.n_queries} queries x {enc.dim} / "
            f"{enc.n_layers} layers, trained on {len(trained_on)} sets, created {info.get('created', '?')}")


def build_meta(args: argparse.Namespace, argv: Sequence[str] | None, loaded: LoadedModel | None) -> dict[str, Any]:
    import torch

    cmd = [sys.executable.rsplit("/", 1)[-1], *sys.argv] if argv is None else ["annotation_benchmark.py", *argv]
    return {"command": shlex.join(cmd), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "torch_threads": torch.get_num_threads(), "versions": _versions(), "shared": str(shared_root()),
            "checkpoint": str(args.checkpoint) if loaded is not None else None,
            "checkpoint_summary": checkpoint_summary(loaded) if loaded is not None else None,
            "max_test_cells": args.max_test_cells}


def write_outputs(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report, out_dir / "annotation.json")
    write_text_atomic(render_markdown(report), out_dir / "annotation.md")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    specs = select_specs(args.datasets)
    loaded = None if args.skip_ours else load_checkpoint(args.checkpoint)
    report: dict[str, Any] = {"meta": build_meta(args, argv, loaded), "datasets": []}
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and cpu_has_fast_bf16())
    with tempfile.TemporaryDirectory(prefix="annotation_bench_") as tmp:
        for spec in specs:
            try:
                report["datasets"].append(run_dataset(spec, loaded, args.max_test_cells, Path(tmp), bf16))
            except Exception as exc:  # one broken set must not lose the others' numbers
                logger.error("%s failed:\n%s", spec.name, traceback.format_exc())
                report["datasets"].append({"name": spec.name, "error": f"{type(exc).__name__}: {exc}"})
    write_outputs(report, args.out_dir)
    logger.info("wrote %s", args.out_dir / "annotation.md")
    return 1 if any("error" in r for r in report["datasets"]) else 0


if __name__ == "__main__":
    sys.exit(main())
