"""Saliency in one pass against the two-pass layout it replaced (test splits, same run).

`explain` with saliency used to run each batch twice: a no-gradient pass for every candidate's
probability (and the predicted label), then Captum's Saliency, which runs the same forward again
with gradients. It now takes the probabilities and the target from Captum's own forward
(`interpret/attribution.py::_TargetLogProb`). This script runs `explain` as shipped and with
the old two-pass batch function put back, alternately (repeats interleaved, so machine load
hits both alike), on the same cells, and checks that both give the same attributions, targets
and probabilities before reporting the time ratio.

    python benchmarks/saliency_passes.py --out-dir benchmarks/results

Writes ``saliency_passes.md`` and ``saliency_passes.json``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from captum.attr import Saliency

import instructcell_agent as ica
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.io import read_h5ad
from instructcell_agent.interpret import attribution
from report_io import run_meta, write_report

DATASETS = ("zheng2017_pbmc_sorted", "bastidasponce2019_pancreas_e155", "xin2016_pancreas_subset")


def two_pass_batch(forward, expr, rows, target, method, reference):
    """The layout before 2026-12-05: probabilities without gradients, then Captum with the target."""
    with torch.no_grad():
        probs = forward(expr, rows).exp()
    chosen = probs.argmax(1) if target is None else target
    expr = expr.detach().requires_grad_()
    with torch.enable_grad():
        grads = Saliency(forward).attribute(expr, target=chosen, abs=False, additional_forward_args=(rows,))
    attr = grads * (expr.detach() - reference) if method == "saliency" else grads
    return attr, probs, chosen


def run_explain(cells, model, label_key: str | None, layout: str):
    one_pass = attribution._gradient_batch
    if layout == "two_pass":
        attribution._gradient_batch = two_pass_batch
    try:
        started = time.perf_counter()
        result = ica.explain(cells, model=model, labels=label_key)
        return result, time.perf_counter() - started
    finally:
        attribution._gradient_batch = one_pass


def same_answers(a, b) -> dict[str, Any]:
    x, y = a.attributions, b.attributions
    return {"targets_equal": bool(np.array_equal(x.target, y.target)),
            "max_abs_prob_diff": float(np.abs(x.probabilities - y.probabilities).max()),
            "max_abs_attr_diff": float(np.abs(x.values - y.values).max()),
            "max_abs_attr": float(np.abs(x.values).max())}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each layout per set, interleaved")
    p.add_argument("--max-cells", type=int, default=128, help="test cells per set (the first N of the split)")
    p.add_argument("--label-mode", choices=["given", "predicted"], default="given",
                   help="explain the true labels (label key) or the predicted ones")
    args = p.parse_args(argv)
    model = ica.load_model(precision="float32")
    specs = {s.name: s for s in load_catalog()}
    rows, report = [], {**run_meta("python benchmarks/saliency_passes.py " + shlex.join(sys.argv[1:])),
                        "checkpoint": str(model.path), "sets": {}}
    for name in DATASETS:
        spec = specs[name]
        cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)["test"], "test")[: args.max_cells].copy()
        key = spec.label_key if args.label_mode == "given" else None
        run_explain(cells[:8].copy(), model, key, "one_pass")  # warm-up: caches, first-call costs
        times: dict[str, list[float]] = {"one_pass": [], "two_pass": []}
        results = {}
        for _ in range(args.repeats):
            for layout in ("two_pass", "one_pass"):
                results[layout], seconds = run_explain(cells, model, key, layout)
                times[layout].append(seconds)
        check = same_answers(results["one_pass"], results["two_pass"])
        best = {k: min(v) for k, v in times.items()}
        entry = {"n_cells": cells.n_obs, "seconds": times, **check, "ratio_two_over_one": best["two_pass"] / best["one_pass"]}
        report["sets"][name] = entry
        rows.append(f"| {name} | {cells.n_obs} | {1000 * best['two_pass'] / cells.n_obs:.0f} | "
                    f"{1000 * best['one_pass'] / cells.n_obs:.0f} | {entry['ratio_two_over_one']:.2f}x | "
                    f"{'yes' if check['targets_equal'] else 'NO'} | {check['max_abs_prob_diff']:.1e} | "
                    f"{check['max_abs_attr_diff']:.1e} (of {check['max_abs_attr']:.1e}) |")
        print(rows[-1], flush=True)
    md = "\n".join([
        "# Saliency: one pass against two", "",
        f"- command: `{report['command']}`", f"- date: {report['date']}",
        f"- machine: {report['nproc']} CPU cores, load average at start {report['loadavg']}, "
        f"torch threads {report['torch_threads']}; LM in float32",
        f"- checkpoint: `{report['checkpoint']}`; `ica.explain(cells, labels={args.label_mode!r} labels)`, "
        f"saliency against the mean training cell (the defaults), the first {args.max_cells} test cells",
        f"- each layout timed {args.repeats} times, interleaved; the fastest of each is reported", "",
        "| dataset | cells | two passes (s/1k cells) | one pass (s/1k cells) | two / one | same targets | "
        "max prob. difference | max attribution difference |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows, ""])
    print(write_report(report, md, args.out_dir, "saliency_passes"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
