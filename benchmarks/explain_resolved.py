"""Explaining `resolve_at`'s answers: do the broader types' gene lists name their lineage's markers?

Each set's test cells are annotated with the set's labels as candidates and `resolve_at` (the
LM in float32), then `explain` attributes each cell's resolved answer over the same candidates
(`labels="instructcell_resolved"`, `dataset=` the set; at most `--cap` cells per answer, seed 0):
a label as before, a broader type ('T cell', 'lymphocyte') as the log of the summed probability
of the candidates under it. Reported per answer: cells explained, the top 10 genes, and precision
at 10 against PanglaoDB (a broader type maps to the union of its members' entries,
interpret/marker_map.json) beside scanpy's wilcoxon ranking of the same cells against the rest.

    python benchmarks/explain_resolved.py [--resolve-at 0.9] [--cap 20] [--datasets zheng2017_pbmc_sorted ...]
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
from instructcell_agent.interpret.api import explain
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("explain_resolved")
DATASETS = ("zheng2017_pbmc_sorted", "kang2018_pbmc_ifnb", "pbmc3k_seurat")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolve-at", type=float, default=0.9)
    p.add_argument("--cap", type=int, default=20, help="max_cells_per_label")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--stem", default="explain_resolved")
    return p.parse_args(argv)


def run_set(model, spec, at: float, cap: int) -> list[dict[str, Any]]:
    cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)["test"], "test")
    labels = list(model.label_set(spec.name)["labels"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        annotated = ica.annotate(cells, model=model, candidates=labels, resolve_at=at).to_adata(cells.copy())
        why = explain(annotated, model=model, labels="instructcell_resolved", dataset=spec.name,
                      max_cells_per_label=cap, seed=0)
    broader = why.provenance["broader_types"]
    report = why.marker_report.set_index("label")
    n_cells = {label: int((why.groups == label).sum()) for label in why.labels}
    rows = []
    for label in why.labels:
        genes = why.top_genes.loc[why.top_genes["label"] == label].sort_values("rank")["gene"].tolist()
        rows.append({"dataset": spec.name, "answer": label, "broader": label in broader, "n_cells": n_cells[label],
                     "top_genes": genes, "precision_at_10": float(report.loc[label, "precision_at_k"]),
                     "wilcoxon_precision_at_10": float(report.loc[label, "wilcoxon_precision_at_k"])})
    logger.info("%s: %d answers, %d broader", spec.name, len(rows), len(broader))
    return rows


def render(report: dict[str, Any]) -> str:
    lines = ["# Explaining `resolve_at`'s answers: labels and broader types", "", *meta_lines(report["meta"]),
             f"- resolve_at {report['resolve_at']:g}; test cells; at most {report['cap']} cells per answer (seed 0); "
             "LM in float32; PanglaoDB precision at 10 (ours / scanpy wilcoxon on the same cells)", "",
             "| dataset | answer | broader? | cells | P@10 ours / wilcoxon | top 10 genes |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        lines.append(f"| {r['dataset']} | {r['answer'].replace('|', '/')} | {'yes' if r['broader'] else ''} | "
                     f"{r['n_cells']} | {r['precision_at_10']:.1f} / {r['wilcoxon_precision_at_10']:.1f} | "
                     f"{', '.join(r['top_genes'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model(precision="float32")
    specs = {s.name: s for s in load_catalog(tasks=("annotation",))}
    rows = [row for name in args.datasets for row in run_set(model, specs[name], args.resolve_at, args.cap)]
    report = {"meta": meta, "resolve_at": args.resolve_at, "cap": args.cap, "rows": rows}
    print(write_report(report, render(report), args.out_dir, args.stem))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
