"""Decisive-token scoring against full scoring, on the same cells in the same run.

`scoring="auto"` (the default of `annotate`, `predict_drug_response` and `evaluate`) scores labels
the checkpoint learned on their decisive tokens only: up to the first token no other candidate
shares. This asks what that costs and buys, per test split:

- `evaluate` with the checkpoint's own valid phrasings (a random phrasing per cell, seed 0), run
  with `scoring="full"` (the peer) and `scoring="decisive"`: macro-F1 of each, a paired bootstrap
  of the difference (core_model/bootstrap.py), the share of cells given the same answer, cells/s;
- the API's setting (one fixed instruction listing the set's labels, `api.DEFAULT_INSTRUCTIONS`):
  cells/s, accuracy, same top answer, how far the top label's probability moves, and the
  expected calibration error (10 equal-width bins) of each.

    python benchmarks/decisive_scoring.py [--datasets zheng2017_pbmc_sorted,kang2018_pbmc_ifnb]

Writes ``decisive_scoring.md`` and ``.json`` to ``--out-dir`` (default benchmarks/results). The
language model runs in float32 (the accuracy tables' precision) on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compare_checkpoints import answers, compare, split_specs
from instructcell_agent import default_checkpoint_path
from instructcell_agent.api import DEFAULT_INSTRUCTIONS, _choose, _prompt, _score
from instructcell_agent.core_model.checkpoint import LoadedModel, load_checkpoint
from instructcell_agent.core_model.corpus import load_split
from instructcell_agent.core_model.datasets import shared_root
from report_io import run_meta, write_report

logger = logging.getLogger("decisive_scoring")
BATCH = 64  # the API's default batch size


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=default_checkpoint_path())
    p.add_argument("--datasets", help="comma-separated catalog names (default: every annotation and drug set)")
    p.add_argument("--seed", type=int, default=0, help="phrasing draw and bootstrap seed")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the bins' cells."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * np.mean(which == b)
                     for b in range(bins) if np.any(which == b)))


def fixed_instruction(loaded: LoadedModel, spec: Any) -> dict[str, Any]:
    """Both scorings in the API's setting: one instruction listing the labels, for every test cell."""
    data = load_split(spec, loaded.vocab, "test")
    labels = loaded.label_set(spec.name)["labels"]
    fields = {**data.fields[0], "drug": spec.drug or ""}
    text = _prompt(loaded, DEFAULT_INSTRUCTIONS[(spec.task, True)], fields, labels)
    out: dict[str, Any] = {"n_cells": data.n_cells}
    picked = {}
    for name, decisive in (("full", False), ("decisive", True)):
        _score(loaded, data.X[:4], [text] * 4, labels, BATCH, decisive)  # warm the prompt and trie memos
        start = time.perf_counter()
        loglik, _ = _score(loaded, data.X, [text] * data.n_cells, labels, BATCH, decisive)
        seconds = time.perf_counter() - start
        chosen, conf, _ = _choose(loglik, labels, calibrate=False)
        correct = np.asarray(chosen) == data.labels
        picked[name] = (np.asarray(chosen), np.asarray(conf))
        out[name] = {"cells_per_second": data.n_cells / seconds, "accuracy": float(correct.mean()),
                     "mean_confidence": float(np.mean(conf)), "ece": expected_calibration_error(np.asarray(conf), correct)}
    out["speedup"] = out["decisive"]["cells_per_second"] / out["full"]["cells_per_second"]
    out["same_answer"] = float(np.mean(picked["full"][0] == picked["decisive"][0]))
    out["mean_abs_confidence_change"] = float(np.mean(np.abs(picked["full"][1] - picked["decisive"][1])))
    return out


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = ["# Decisive-token scoring against full scoring", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {meta['nproc']} CPU cores, torch threads {meta['torch_threads']}, load average at start "
             f"{meta['loadavg']}; LM in float32",
             f"- checkpoint: `{meta['checkpoint']}`; test splits; shared data: {meta['shared']}",
             "- peer: `scoring=\"full\"` (every token of every candidate), run on the same cells in the same process",
             f"- interval: paired bootstrap of macro-F1 (decisive - full) over 2,000 resamples of the cells, seed {meta['seed']}",
             "", "## `evaluate`, own valid phrasings (a random phrasing per cell)", "",
             "| dataset | n | full F1 | decisive F1 | difference [95% interval] | same answer | full cells/s | "
             "decisive cells/s | x full |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report["evaluate"]["datasets"].items():
        lines.append(f"| {name} | {r['n_cells']} | {r['reference_f1']:.3f} | {r['candidate_f1']:.3f} | "
                     f"{r['delta']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | {r['same_answer']:.3f} | "
                     f"{r['full_cells_per_second']:.1f} | {r['decisive_cells_per_second']:.1f} | {r['speedup']:.2f}x |")
    m = report["evaluate"]["mean_over_sets"]
    lines += [f"| mean over sets | {m['n_cells']} | | | {m['delta']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}] | | | | |",
              "", "## One fixed instruction listing the labels (the API's default with candidates)", "",
              "| dataset | n | full cells/s | decisive cells/s | x full | same answer | accuracy full / decisive | "
              "mean confidence full / decisive | mean abs change of confidence | ECE full / decisive |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report["fixed_instruction"].items():
        f, d = r["full"], r["decisive"]
        lines.append(f"| {name} | {r['n_cells']} | {f['cells_per_second']:.1f} | {d['cells_per_second']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['same_answer']:.3f} | {f['accuracy']:.3f} / {d['accuracy']:.3f} | "
                     f"{f['mean_confidence']:.3f} / {d['mean_confidence']:.3f} | {r['mean_abs_confidence_change']:.3f} | "
                     f"{f['ece']:.3f} / {d['ece']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    specs = split_specs(args.datasets)
    loaded = load_checkpoint(args.checkpoint, "cpu")  # float32
    cmd = [sys.executable.rsplit("/", 1)[-1], *sys.argv] if argv is None else ["decisive_scoring.py", *argv]
    report: dict[str, Any] = {"meta": {**run_meta(shlex.join(cmd)), "seed": args.seed, "shared": str(shared_root()),
                                       "checkpoint": str(args.checkpoint)}}
    full = answers(args.checkpoint, specs, "test", args.seed, "full", loaded)
    decisive = answers(args.checkpoint, specs, "test", args.seed, "decisive", loaded)
    report["evaluate"] = compare(full, decisive, args.seed)
    for name, row in report["evaluate"]["datasets"].items():
        row["full_cells_per_second"] = full[name]["cells_per_second"]
        row["decisive_cells_per_second"] = decisive[name]["cells_per_second"]
        row["speedup"] = row["decisive_cells_per_second"] / row["full_cells_per_second"]
    report["fixed_instruction"] = {}
    for spec in specs:
        report["fixed_instruction"][spec.name] = fixed_instruction(loaded, spec)
        logger.info("%s: %s", spec.name, report["fixed_instruction"][spec.name])
    logger.info("wrote %s", write_report(report, render_markdown(report), args.out_dir, "decisive_scoring"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
