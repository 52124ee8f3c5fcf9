"""`explain` on a file without labels, with and without `fast` for the answers it gives first.

With `max_cells_per_label` and no labels, `explain` answers every cell first (no gradients) and
draws at most N cells of each answer to attribute; on a large file the answering is most of the
time. Here the held-out cells of each set are explained that way twice in one run, the answers
given first by the default and by `fast=True` (core_model/readout_first.py), the same seed and
settings otherwise (the LM in float32, as `instructcell explain` runs it). Reported per set: the
seconds spent answering and in all, the cells drawn (the same cells, or how many differ), and
the share of each label's top 10 genes the two runs share (mean over labels).

    python benchmarks/explain_fast.py [--cap 20] [--splits test] [--datasets zheng2017_pbmc_sorted ...]
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

import instructcell_agent as ica
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.io import read_h5ad
from instructcell_agent.interpret.api import explain
from explain_subsample import top_genes
from report_io import run_meta, write_report

logger = logging.getLogger("explain_fast")
DATASETS = ("zheng2017_pbmc_sorted", "kang2018_pbmc_ifnb", "pbmc3k_seurat")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cap", type=int, default=20, help="max_cells_per_label")
    p.add_argument("--splits", nargs="+", default=["test"], choices=["valid", "test"],
                   help="held-out splits whose cells are explained (pooled)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--stem", default="explain_fast", help="results file name")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def held_out(spec, splits: Sequence[str]) -> ad.AnnData:
    split = read_split(spec.split_path)
    names = [n for s in splits for n in split[s]]
    return subset_by_names(read_h5ad(spec.path), names, "+".join(splits))


def run(model, cells: ad.AnnData, cap: int, fast: bool) -> tuple[Any, float, float]:
    """The explanation, seconds spent answering first, and seconds in all."""
    marks: list[float] = []
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = explain(cells, model=model, max_cells_per_label=cap, seed=0, fast=fast,
                         answer_progress=lambda done, total: marks.append(time.perf_counter()))
    return result, marks[-1] - start, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    meta = run_meta(shlex.join(["python", *sys.argv]))
    specs = {s.name: s for s in load_catalog(tasks=("annotation",))}
    model = ica.load_model(precision="float32")  # as `instructcell explain` runs it
    rows = []
    for name in args.datasets:
        cells = held_out(specs[name], args.splits)
        run(model, cells[:8].copy(), args.cap, False)  # first-call costs outside the clock
        plain, plain_answer, plain_all = run(model, cells, args.cap, False)
        fast, fast_answer, fast_all = run(model, cells, args.cap, True)
        a, b = top_genes(plain), top_genes(fast)
        shared = [len(set(a[label]) & set(b.get(label, []))) / len(a[label]) for label in a]
        row = {"dataset": name, "n_cells": cells.n_obs,
               "by_readout_alone": next((n for n in fast.provenance["notes"] if "fast:" in n), ""),
               "answer_s": [plain_answer, fast_answer], "total_s": [plain_all, fast_all],
               "cells_drawn": [len(plain.obs_names), len(fast.obs_names)],
               "cells_drawn_differ": len(set(plain.obs_names) ^ set(fast.obs_names)),
               "top10_shared": sum(shared) / len(shared), "labels": len(a)}
        rows.append(row)
        logger.info("%s: answering %.1f -> %.1f s, in all %.1f -> %.1f s, top-10 shared %.3f", name, plain_answer,
                    fast_answer, plain_all, fast_all, row["top10_shared"])
    report = {"meta": meta, "cap": args.cap, "splits": args.splits, "rows": rows}
    lines = ["# `explain` without labels: answers given first by the default and by `fast`", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {meta['nproc']} CPU cores, load average at start {meta['loadavg']}, torch threads "
             f"{meta['torch_threads']}",
             f"- `explain(cells, max_cells_per_label={args.cap}, seed=0)`, LM in float32, cells of "
             f"{'+'.join(args.splits)}; the default and `fast=True` in turn in the same run", "",
             "| dataset | cells | answering first, s (default / fast) | in all, s (default / fast) | speed-up in all "
             "| cells drawn (default / fast; differing) | top-10 genes shared per label |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['n_cells']} | {r['answer_s'][0]:.1f} / {r['answer_s'][1]:.1f} | "
              f"{r['total_s'][0]:.1f} / {r['total_s'][1]:.1f} | {r['total_s'][0] / r['total_s'][1]:.2f}x | "
              f"{r['cells_drawn'][0]} / {r['cells_drawn'][1]}; {r['cells_drawn_differ']} | "
              f"{r['top10_shared']:.3f} over {r['labels']} labels |" for r in rows]
    lines += ["", "What the fast run's notes said:", ""] + [f"- {r['dataset']}: {r['by_readout_alone']}" for r in rows]
    print(write_report(report, "\n".join(lines) + "\n", args.out_dir, args.stem))


if __name__ == "__main__":
    main()
