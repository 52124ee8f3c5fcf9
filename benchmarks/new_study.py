"""Fine-tuning on a study the model never trained on, against baselines fitted on the same cells.

A user with labelled cells of their own study fine-tunes the shipped model on them (the commands of
docs/command-line.md, "Fine-tuning the shipped model on your own set") and asks: is it as good as a
classifier trained on the same cells, better than the model was before, and does it still answer
the studies it knew? All in one run:

1. the study's cells split per label (train / valid / test; `--valid`, `--test`, seed 42), written
   under `--work` with a catalog file, as `instructcell make-split` writes them;
2. CellTypist, logistic regression and PCA-kNN fitted on train+valid, scored on test
   (`baselines.py`);
3. the shipped model on the test cells: `ica.annotate(cells, candidates=the study's labels)` and
   `evaluate` with its own phrasings (free answers mapped to the labels);
4. `instructcell train --init-from <shipped> --catalog <study> --no-shared --fit-splits train+valid
   --lm-steps N --lr LR` (`--beside-shared`: without --no-shared, the shared sets trained beside it;
   `--no-replay`: without the shipped reference cells replayed, core_model/replay.py), timed;
5. the fine-tuned checkpoint on the same test cells, both ways, and copies of it whose read-out
   rows for labels the study spells as a learned set does were refitted otherwise (`READOUT_VARIANTS`:
   from zero on the study alone, what fine-tuning did before 2026-12-07; from zero with the
   inherited sets' replayed cells);
6. forgetting: the test cells of `--keep` shared sets asked among their own labels, shipped and
   fine-tuned checkpoints.

Default study: scanpy's bundled pbmc68k_reduced (700 PBMCs, 765 genes, log-normalized `.raw`,
labels `bulk_labels`): Zheng et al.'s fresh 68k PBMCs, same lab and platform as zheng2017's sorted
cells, labelled by correlation with those sorted profiles; 9 of its 10 labels are spelt as zheng2017's
and 'Dendritic' is new to the model. Any labelled file works: `--data H5AD --label-key KEY`.

    python benchmarks/new_study.py [--lm-steps 300] [--lr 2.5e-4] [--work /tmp/new_study]
    python benchmarks/new_study.py --beside-shared     # trained beside the shared sets (needs ../shared)
    python benchmarks/new_study.py --no-replay         # without the reference cells replayed (before 2026-12-07)
    python benchmarks/new_study.py --train-args='--freeze-encoder' --no-readout-variants --stem new_study_frozen_encoder
    python benchmarks/new_study.py --train-args='--anchor-weight 0.01' --no-readout-variants --stem new_study_anchor001
    python benchmarks/new_study.py --train-args='--distill-weight 1' --no-readout-variants --stem new_study_distill1
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import anndata as ad
import numpy as np
from safetensors.torch import load_file

import instructcell_agent as ica
from instructcell_agent.cli import main as instructcell
from instructcell_agent.core_model.bootstrap import paired_f1_bootstrap
from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.datasets import load_catalog, load_user_catalog, read_split, subset_by_names
from instructcell_agent.core_model.evaluation import evaluate, metrics
from instructcell_agent.core_model.io import get_labels, read_h5ad, write_h5ad_atomic, write_json_atomic
from instructcell_agent.core_model.readout_train import train_readout
from instructcell_agent.core_model.replay import inherited_sets, replay_splits
from instructcell_agent.core_model.splits import stratified_split
from baselines import prepared_adata, run_baselines
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("new_study")
STUDY_KEY = "cell_type"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="a labelled .h5ad (default: scanpy's pbmc68k_reduced)")
    p.add_argument("--label-key", default="bulk_labels")
    p.add_argument("--name", default="pbmc68k_reduced", help="the study's set name in the fine-tuned checkpoint")
    p.add_argument("--species", default="human")
    p.add_argument("--tissue", default="peripheral blood")
    p.add_argument("--sequencing-method", default="10x Chromium (v1)")
    p.add_argument("--valid", type=float, default=0.1)
    p.add_argument("--test", type=float, default=0.3)
    p.add_argument("--lm-steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=2.5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beside-shared", action="store_true", help="train beside the shared sets (no --no-shared)")
    p.add_argument("--no-replay", action="store_true",
                   help="fine-tune without replaying the shipped checkpoint's reference cells (core_model/replay.py)")
    p.add_argument("--train-args", default="",
                   help="more `instructcell train` options, one string: --train-args='--freeze-encoder'")
    p.add_argument("--no-readout-variants", action="store_true",
                   help="skip the read-out variants (step 5's refitted copies)")
    p.add_argument("--keep", default="zheng2017_pbmc_sorted,kang2018_pbmc_ifnb",
                   help="shared sets whose test cells check for forgetting (comma-separated; empty: none)")
    p.add_argument("--work", type=Path, default=Path("/tmp/new_study"))
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--stem", default=None, help="report name (default new_study[_beside_shared][_no_replay])")
    return p.parse_args(argv)


def study_cells(args: argparse.Namespace) -> ad.AnnData:
    """The study as a user's file: values as given, one label column named `STUDY_KEY`."""
    if args.data is not None:
        adata = read_h5ad(args.data)
    else:
        import scanpy as sc

        bundled = sc.datasets.pbmc68k_reduced()  # ships inside scanpy: no download
        # .X is scaled (negative values); .raw keeps the log-normalized values a user would pass
        adata = ad.AnnData(X=bundled.raw.X.copy(), obs=bundled.obs[[]].copy(), var=bundled.raw.var[[]].copy())
        adata.obs[args.label_key] = bundled.obs[args.label_key].to_numpy()
    labels = get_labels(adata, args.label_key)
    out = ad.AnnData(X=adata.X, obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    out.obs[STUDY_KEY] = np.asarray(labels, dtype=object).astype(str)
    return out


def write_study(args: argparse.Namespace, adata: ad.AnnData) -> tuple[Path, Path, Path, dict[str, list[str]]]:
    """The study's .h5ad, split and catalog under `args.work` (what a user's make-split leaves)."""
    args.work.mkdir(parents=True, exist_ok=True)
    data, split_path, catalog = args.work / "study.h5ad", args.work / "split.json", args.work / "catalog.json"
    write_h5ad_atomic(adata, data)
    split, report = stratified_split(adata.obs_names, adata.obs[STUDY_KEY], valid=args.valid, test=args.test,
                                     seed=42)
    write_json_atomic(split, split_path)
    logger.info("split: %s", report["n_cells"])
    write_json_atomic([{"name": args.name, "task": "cta", "path": data.name, "label": STUDY_KEY,
                        "split": split_path.name, "species": args.species, "tissue": args.tissue,
                        "sequencing_method": args.sequencing_method}], catalog)
    return data, split_path, catalog, split


def fine_tune(args: argparse.Namespace, catalog: Path) -> tuple[Path, float]:
    """`instructcell train` from the shipped checkpoint, as docs/command-line.md runs it; (checkpoint, seconds)."""
    out = args.work / ("run" + _suffix(args))
    argv = ["train", "--out", str(out), "--init-from", str(ica.default_checkpoint_path()), "--catalog", str(catalog),
            "--lm-steps", str(args.lm_steps), "--lr", str(args.lr), "--seed", str(args.seed),
            "--fit-splits", "train+valid", "--device", "cpu"]
    if not args.beside_shared:
        argv.append("--no-shared")
    if args.no_replay:
        argv.append("--no-replay")
    argv += shlex.split(args.train_args)
    logger.info("instructcell %s", shlex.join(argv))
    start = time.perf_counter()
    if instructcell(argv) != 0:
        raise RuntimeError(f"instructcell {shlex.join(argv)} failed")
    return out / "checkpoint", time.perf_counter() - start


# Read-outs refitted on copies of the fine-tuned checkpoint (same LM weights): a label the study
# spells as an inherited set does gets one row for both; how that row is fitted.
READOUT_VARIANTS = {
    "replace": "rows from zero on the study alone (the read-out fit before 2026-12-07)",
    "replayed_from_zero": "rows from zero on the study and the inherited sets' replayed cells",
}


def readout_variant(checkpoint: Path, catalog: Path, variant: str) -> Path:
    """A copy of the fine-tuned checkpoint with its read-out refitted as `variant` says."""
    copy = checkpoint.parent / f"checkpoint_{variant}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(checkpoint, copy)
    start = load_checkpoint(ica.default_checkpoint_path())
    specs = load_user_catalog(catalog)
    replayed = replay_splits(start, inherited_sets(start, specs)) if variant == "replayed_from_zero" else []
    train_readout(copy, specs, split="train+valid", inherit_from=start, inherited_rows="replace", replayed=replayed,
                  command=f"benchmarks/new_study.py: {variant} variant")
    return copy


def asked(model, cells: ad.AnnData, truth: np.ndarray, labels: list[str], **fields: str) -> dict[str, Any]:
    """`ica.annotate` with the labels as candidates, scored against `truth`."""
    result = ica.annotate(cells, model=model, candidates=labels, **fields)
    answers = np.asarray(result.labels, dtype=object).astype(str)
    return {**metrics(truth, answers, labels), "answers": answers}


def free(model, data: Path, split_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`evaluate` with the checkpoint's own phrasings: answers with and without the labels listed."""
    out = evaluate(model, data, split_path, "cta", STUDY_KEY, seed=args.seed)
    keys = ("accuracy", "macro_f1", "invalid_rate", "n_cells")
    return {k: out[k] for k in keys} | {part: {k: out[part].get(k) for k in keys}
                                        for part in ("with_options", "without_options")}


def weight_drift(start: Path, tuned: Path) -> dict[str, dict[str, float]]:
    """How far fine-tuning moved the weights, per part (encoder, the backbone's adapters, projection):
    root-mean-square change, sum of squared changes (`--anchor-weight W` adds W/2 times their total
    to the loss) and the part's root-mean-square weight, for scale."""
    a, b = (load_file(str(d / "weights.safetensors")) for d in (start, tuned))
    parts: dict[str, list[float]] = {}
    for name, w in a.items():
        if name not in b or not w.is_floating_point():
            continue
        part = "adapters" if ".lora_" in name else name.split(".")[0]
        delta = b[name].float() - w.float()
        acc = parts.setdefault(part, [0.0, 0, 0.0])
        acc[0] += float((delta ** 2).sum())
        acc[1] += delta.numel()
        acc[2] += float((w.float() ** 2).sum())
    return {part: {"rms_change": (sq / n) ** 0.5, "sum_sq_change": sq, "rms_weight": (w / n) ** 0.5}
            for part, (sq, n, w) in sorted(parts.items()) if sq > 0}


# Which half forgot: the same checkpoints without their read-out (the language model's answers alone).
LM_ALONE = {"shipped": "shipped, LM alone", "fine-tuned": "fine-tuned, LM alone"}


def lm_alone(model):
    """`model` answering without its read-out."""
    return dataclasses.replace(model, readout=None)


def forgetting(models: dict[str, Any], keep: list[str]) -> list[dict[str, Any]]:
    """Each kept shared set's test cells asked among its own labels, by every model."""
    specs = {s.name: s for s in load_catalog()}
    unknown = [name for name in keep if name not in specs]
    if unknown:
        raise ValueError(f"--keep names sets the shared catalog lacks: {unknown}")
    rows = []
    for name in keep:
        spec = specs[name]
        cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)["test"], "test")
        truth = np.asarray(get_labels(cells, spec.label_key), dtype=object).astype(str)
        labels = list(spec.classes) or sorted(set(truth))
        row: dict[str, Any] = {"set": name, "n": len(truth)}
        answers = {}
        for what, model in models.items():
            scored = asked(model, cells, truth, labels)
            answers[what] = scored["answers"]
            row[what] = {"accuracy": scored["accuracy"], "macro_f1": scored["macro_f1"]}
            logger.info("%s, %s: macro-F1 %.3f", name, what, scored["macro_f1"])
        # how much of a drop the set's few hundred test cells can resolve
        row["fine_tuned_minus_shipped"] = paired_f1_bootstrap(truth, answers["fine-tuned"], answers["shipped"],
                                                              labels).to_dict()
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    meta = run_meta(shlex.join(["python", *sys.argv]))
    keep = [k for k in args.keep.split(",") if k]
    adata = study_cells(args)
    data, split_path, catalog, split = write_study(args, adata)
    labels = sorted(set(adata.obs[STUDY_KEY]))
    test = subset_by_names(adata, split["test"], "test")
    truth = test.obs[STUDY_KEY].to_numpy().astype(str)

    prepared = prepared_adata(adata)
    fitted_on = subset_by_names(prepared, split["train"] + split["valid"], "train+valid").copy()
    baselines = run_baselines(fitted_on, subset_by_names(prepared, split["test"], "test").copy(), STUDY_KEY, labels)
    best = max(baselines.values(), key=lambda r: r.macro_f1)

    shipped = ica.load_model(precision=args.precision)
    fields = {"species": args.species, "tissue": args.tissue}
    before = {"asked": asked(shipped, test, truth, labels, **fields), "free": free(shipped, data, split_path, args)}
    checkpoint, train_seconds = fine_tune(args, catalog)
    tuned = ica.load_model(checkpoint, precision=args.precision)
    after = {"asked": asked(tuned, test, truth, labels, **fields), "free": free(tuned, data, split_path, args)}
    # beside the shared sets every row is fitted on its sets' data: nothing inherited to refit otherwise
    variants = [] if args.beside_shared or args.no_readout_variants else [
        v for v in READOUT_VARIANTS if v == "replace" or not args.no_replay]
    refitted = {v: ica.load_model(readout_variant(checkpoint, catalog, v), precision=args.precision) for v in variants}
    after_variants = {v: _plain(asked(m, test, truth, labels, **fields)) for v, m in refitted.items()}
    gap = paired_f1_bootstrap(truth, after["asked"]["answers"], best.predicted, labels)
    gain = paired_f1_bootstrap(truth, after["asked"]["answers"], before["asked"]["answers"], labels)
    kept = forgetting({"shipped": shipped, "fine-tuned": tuned, **refitted,
                       LM_ALONE["shipped"]: lm_alone(shipped), LM_ALONE["fine-tuned"]: lm_alone(tuned)}, keep)

    report = {"meta": meta, "args": {k: str(v) for k, v in vars(args).items()}, "labels": labels,
              "n_cells": {k: len(v) for k, v in split.items()}, "train_seconds": train_seconds,
              "baselines": {k: v.to_dict() for k, v in baselines.items()},
              "shipped": {"asked": _plain(before["asked"]), "free": before["free"]},
              "fine_tuned": {"asked": _plain(after["asked"]), "free": after["free"], "checkpoint": str(checkpoint)},
              "readout_variants": after_variants,
              "fine_tuned_minus_best_baseline": gap.to_dict(), "fine_tuned_minus_shipped": gain.to_dict(),
              "forgetting": kept, "weight_drift": weight_drift(ica.default_checkpoint_path(), checkpoint)}
    stem = args.stem or "new_study" + _suffix(args)
    path = write_report(report, markdown(report, meta, args, best.name), args.out_dir, stem)
    print(path)


def _suffix(args: argparse.Namespace) -> str:
    return ("_beside_shared" if args.beside_shared else "") + ("_no_replay" if args.no_replay else "")


def _plain(scored: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scored.items() if k != "answers"}


def _interval(d: dict[str, Any]) -> str:
    return f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def markdown(report: dict[str, Any], meta: dict[str, Any], args: argparse.Namespace, best: str) -> str:
    study = str(args.data) if args.data else "scanpy's pbmc68k_reduced (`.raw`, labels `bulk_labels`)"
    n = report["n_cells"]
    lines = ["# Fine-tuning on a study the model never trained on", "", *meta_lines(meta),
             f"- study: {study}; split per label, seed 42: train {n['train']}, valid {n['valid']}, test {n['test']}",
             f"- fine-tune: `instructcell train --init-from <shipped> --catalog <study> "
             f"{'' if args.beside_shared else '--no-shared '}{'--no-replay ' if args.no_replay else ''}"
             f"--fit-splits train+valid --lm-steps {args.lm_steps} "
             f"--lr {args.lr}{' ' + args.train_args if args.train_args else ''}`, "
             f"{report['train_seconds'] / 60:.1f} min on this machine",
             "- baselines fitted on the same train+valid cells (log1p CP10k of the study's genes); "
             f"language model in {args.precision}",
             "- asked: `ica.annotate(test_cells, candidates=the study's labels)`; free: `evaluate` with the "
             "checkpoint's own phrasings (a phrasing without options answers freely, mapped to the labels)", "",
             "| model | asked: accuracy / macro-F1 | free: accuracy / macro-F1 / invalid |", "|---|---|---|"]
    for name, r in report["baselines"].items():
        lines.append(f"| {name} | {r['accuracy']:.3f} / {r['macro_f1']:.3f} | - |")
    for what in ("shipped", "fine_tuned"):
        a, f = report[what]["asked"], report[what]["free"]
        lines.append(f"| ours, {what.replace('_', '-')} | {a['accuracy']:.3f} / {a['macro_f1']:.3f} | "
                     f"{f['accuracy']:.3f} / {f['macro_f1']:.3f} / {f['invalid_rate']:.1%} |")
    for variant, r in report["readout_variants"].items():
        lines.append(f"| ours, fine-tuned, read-out {READOUT_VARIANTS[variant]} | {r['accuracy']:.3f} / "
                     f"{r['macro_f1']:.3f} | - |")
    lines += ["", f"Macro-F1, fine-tuned (asked) - best baseline ({best}): "
              f"{_interval(report['fine_tuned_minus_best_baseline'])}; fine-tuned - shipped: "
              f"{_interval(report['fine_tuned_minus_shipped'])} (paired bootstrap over the test cells, 95%)."]
    drift = report["weight_drift"]
    lines += ["", "Weights moved by the fine-tune (root-mean-square change / weight): " + "; ".join(
        f"{part} {d['rms_change']:.4f} / {d['rms_weight']:.4f}" for part, d in drift.items()) +
        f"; summed squared change {sum(d['sum_sq_change'] for d in drift.values()):.3g}."]
    if report["forgetting"]:
        models = ["shipped", "fine-tuned", *report["readout_variants"],
                  *(m for m in LM_ALONE.values() if m in report["forgetting"][0])]
        lines += ["", "Forgetting: shared sets' test cells asked among their own labels (accuracy / macro-F1).", "",
                  "| set | n | " + " | ".join(READOUT_VARIANTS.get(m, m) for m in models) + " |",
                  "|---|---|" + "---|" * len(models)]
        for row in report["forgetting"]:
            cells = " | ".join(f"{row[m]['accuracy']:.3f} / {row[m]['macro_f1']:.3f}" for m in models)
            lines.append(f"| {row['set']} | {row['n']} | {cells} |")
        lines += ["", "Macro-F1, fine-tuned - shipped on those cells (paired bootstrap, 95%): " + "; ".join(
            f"{row['set']} {_interval(row['fine_tuned_minus_shipped'])}" for row in report["forgetting"]) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
