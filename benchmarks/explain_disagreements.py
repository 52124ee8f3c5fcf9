"""Why the model's answer rather than the known label: `explain(..., versus=<obs column>)` on the
test cells where the two differ.

Each set's test cells are annotated with the set's labels as candidates (LM in float32); `explain`
then attributes log p(answer) - log p(known label) on every cell whose answer differs from its
known label (`labels="instructcell_label"`, `versus=` the set's label column; the cells that agree
are left out by `explain` itself). Reported per set: the cells, how many of them zeroing their top
10 genes turns towards the known label (the pair's probability below 0.5; `deletion_test`'s
`flipped_top`) against 10 random expressed genes, and per answer / known-label pair of at least
`--min-cells` cells the top 5 genes and their precision at 10 against the genes that tell the
answer's type from the known one in the train split (scanpy's wilcoxon, top 50, true labels).

    python benchmarks/explain_disagreements.py [--datasets zheng2017_pbmc_sorted ...] [--min-cells 3]
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import instructcell_agent as ica
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.io import read_h5ad
from instructcell_agent.interpret.aggregate import rankings
from instructcell_agent.interpret.api import explain
from instructcell_agent.interpret.faithfulness import deletion_test
from instructcell_agent.interpret.markers import precision_at_k
from explain_versus import K, train_pair_genes
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("explain_disagreements")
DATASETS = ("zheng2017_pbmc_sorted", "kang2018_pbmc_ifnb", "pbmc3k_seurat", "bastidasponce2019_pancreas_e155")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--min-cells", type=int, default=3, help="pairs with fewer cells are left out of the table")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--stem", default="explain_disagreements")
    return p.parse_args(argv)


def run_set(model, spec, min_cells: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)["test"], "test")
    labels = list(model.label_set(spec.name)["labels"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        annotated = ica.annotate(cells, model=model, candidates=labels).to_adata(cells.copy())
        why = explain(annotated, model=model, labels="instructcell_label", dataset=spec.name, versus=spec.label_key,
                      compare_wilcoxon=False)
    deletion = deletion_test(model.model, why.attributions, k=K, n_random=3)
    train = train_pair_genes(model, spec, why.contrasts)
    top = {name: genes for name, (genes, _) in rankings(why.means, K, positive_only=True).items()}
    pairs = []
    for name, pair in why.contrasts.items():
        n = int((why.groups == name).sum())
        if n >= min_cells:
            wanted = {g.upper() for g in train.get(name, [])}
            pairs.append({"dataset": spec.name, "pair": name, "n_cells": n, "top_genes": top.get(name, []),
                          "train_precision": precision_at_k(top.get(name, []), wanted, K) if wanted else float("nan"),
                          "train_wilcoxon_top": train.get(name, [])[:K]})
    summary = {"dataset": spec.name, "n_test": cells.n_obs, "n_disagreeing": len(why.obs_names),
               "flipped_top": deletion.flipped_top, "flipped_random": deletion.flipped_random,
               "logodds_drop_top": deletion.mean_logodds_drop_top,
               "logodds_drop_random": deletion.mean_logodds_drop_random}
    logger.info("%s: %d of %d cells disagree; top 10 genes flip %.2f, random %.2f", spec.name,
                summary["n_disagreeing"], cells.n_obs, deletion.flipped_top, deletion.flipped_random)
    return summary, pairs


def render(report: dict[str, Any]) -> str:
    lines = ["# Why the model's answer rather than the known label (`explain(..., versus=<label column>)`)", "",
             *meta_lines(report["meta"]),
             "- test cells answered with each set's labels as candidates (LM in float32); explained: the cells whose "
             "answer differs from the known label, log p(answer) - log p(known label)",
             f"- flipped: of those cells, the share that prefer the known label once their top {K} genes (or {K} "
             "random expressed genes, 3 draws) are zeroed; train wilcoxon: top 50 genes of the train split's "
             "answer-type cells against its known-type cells", "",
             "| dataset | test cells | disagreeing | flipped, top 10 / random 10 | pair log-odds drop, top 10 / random |",
             "| --- | --- | --- | --- | --- |"]
    for s in report["sets"]:
        lines.append(f"| {s['dataset']} | {s['n_test']} | {s['n_disagreeing']} | {s['flipped_top']:.2f} / "
                     f"{s['flipped_random']:.2f} | {s['logodds_drop_top']:.2f} / {s['logodds_drop_random']:.2f} |")
    lines += ["", f"Pairs (answer vs known label) of at least {report['min_cells']} cells:", "",
              "| dataset | answer vs known | cells | P@10 train wilcoxon | top 5 genes | train wilcoxon top 5 |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in report["pairs"]:
        precision = "-" if r["train_precision"] != r["train_precision"] else f"{r['train_precision']:.1f}"
        lines.append(f"| {r['dataset']} | {r['pair'].replace('|', '/')} | {r['n_cells']} | {precision} | "
                     f"{', '.join(r['top_genes'][:5])} | {', '.join(r['train_wilcoxon_top'][:5])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model(precision="float32")
    specs = {s.name: s for s in load_catalog(tasks=("annotation",))}
    sets, pairs = [], []
    for name in args.datasets:
        summary, rows = run_set(model, specs[name], args.min_cells)
        sets.append(summary)
        pairs += rows
    report = {"meta": meta, "min_cells": args.min_cells, "sets": sets, "pairs": pairs}
    print(write_report(report, render(report), args.out_dir, args.stem))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
