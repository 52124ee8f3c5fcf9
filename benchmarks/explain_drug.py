"""Which genes drive the drug-response answers, and are those attributions faithful?

On each drug-response set's test cells (aissa2021_pc9_erlotinib in the shared data), `explain`
runs with the set's drug in the question (`drug=`, the LM in float32 as `instructcell explain`
runs it), once with the true responses as targets and once with the model's own answers. Each run
gets the deletion test (`interpret/faithfulness.py`: zeroing every cell's 10 most salient
expressed genes against 10 random expressed genes, 3 draws) and, as a peer measured on the same
cells, scanpy's wilcoxon ranking of the responses: the share of its top 10 genes per response in
ours. There is no marker database for drug responses, so no precision is reported.

    python benchmarks/explain_drug.py [--split test] [--out-dir benchmarks/results]
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
import scanpy as sc

import instructcell_agent as ica
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.io import get_labels, read_h5ad
from instructcell_agent.interpret.api import explain
from instructcell_agent.interpret.faithfulness import deletion_test
from report_io import run_meta, write_report

logger = logging.getLogger("explain_drug")
K = 10


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--stem", default="explain_drug")
    return p.parse_args(argv)


def wilcoxon_top(cells, labels: np.ndarray) -> dict[str, list[str]]:
    x = cells.copy()
    x.obs["_response"] = labels
    sc.pp.normalize_total(x, target_sum=1e4)
    sc.pp.log1p(x)
    sc.tl.rank_genes_groups(x, "_response", method="wilcoxon", n_genes=K)
    names = x.uns["rank_genes_groups"]["names"]
    return {str(label): [str(g) for g in names[label]] for label in names.dtype.names}


def run_set(model, spec, split_name: str) -> dict[str, Any]:
    cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)[split_name], split_name).copy()
    truth = get_labels(cells, spec.label_key)
    drug = model.label_sets[spec.name]["drug"]
    peer = wilcoxon_top(cells, truth)
    row: dict[str, Any] = {"name": spec.name, "drug": drug, "n_cells": int(cells.n_obs),
                           "labels": {str(l): int(n) for l, n in zip(*np.unique(truth, return_counts=True))},
                           "wilcoxon_top": peer, "runs": []}
    for target in ("true responses", "model's answers"):
        started = time.perf_counter()
        result = explain(cells, model=model, labels=truth if target == "true responses" else None,
                         dataset=spec.name, top_k=K, compare_wilcoxon=False)
        seconds = time.perf_counter() - started
        ours = {str(label): group.sort_values("rank")["gene"].tolist()
                for label, group in result.top_genes.groupby("label")}
        deletion = deletion_test(model.model, result.attributions, k=K, n_random=3).to_dict()
        row["runs"].append({"target": target, "seconds": seconds, "top": ours, "deletion": deletion,
                            "shared_with_wilcoxon": {l: len(set(ours.get(l, [])) & set(peer[l])) / K for l in peer},
                            "instruction": result.provenance["instruction"], "notes": result.provenance["notes"]})
        logger.info("%s %s: %.1f s, deletion %s", spec.name, target, seconds, deletion)
    return row


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model(precision="float32")
    specs = [s for s in load_catalog(tasks=("drug_response",)) if s.name in model.label_sets]
    rows = [run_set(model, spec, args.split) for spec in specs]
    report = {**meta, "split": args.split, "rows": rows}
    print(write_report(report, markdown(report), args.out_dir, args.stem))


def _ratio(top: float, random: float) -> str:
    return f"{top / random:.0f}x" if random > 0 else "- (random drop not positive)"


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Gene saliency of drug-response answers", "", f"- command: `{report['command']}`",
             f"- date: {report['date']}",
             f"- machine: {report['nproc']} CPU cores, load average at start {report['loadavg']}",
             f"- `explain(..., dataset=<the drug set>)` on the {report['split']} split: the question names the "
             "set's drug; LM in float32; saliency against the set's mean training cell, per-cell min-max",
             f"- deletion: zeroing each cell's top {K} salient expressed genes against {K} random expressed genes "
             "(3 draws); drops of the explained response's probability and log-odds, and their ratio",
             f"- wilcoxon: scanpy's ranking of the true responses on log1p(CP10k) of the same cells; share of its "
             f"top {K} in ours", ""]
    for r in report["rows"]:
        lines += [f"## {r['name']} ({r['drug']}; {r['n_cells']} cells: "
                  f"{', '.join(f'{l} {n}' for l, n in r['labels'].items())})", "",
                  "| target | s | mean p | drop of p: top / random (ratio) | drop of log-odds: top / random (ratio) "
                  "| shared with wilcoxon top 10 |", "|---|---|---|---|---|---|"]
        for run in r["runs"]:
            d = run["deletion"]
            shared = ", ".join(f"{l} {v:.1f}" for l, v in run["shared_with_wilcoxon"].items())
            lines.append(f"| {run['target']} | {run['seconds']:.1f} | {d['mean_probability']:.3f} | "
                         f"{d['mean_drop_top']:.3f} / {d['mean_drop_random']:.4f} "
                         f"({_ratio(d['mean_drop_top'], d['mean_drop_random'])}) | "
                         f"{d['mean_logodds_drop_top']:.2f} / {d['mean_logodds_drop_random']:.3f} "
                         f"({_ratio(d['mean_logodds_drop_top'], d['mean_logodds_drop_random'])}) | {shared} |")
        lines += ["", f"Top {K} genes (ours, true responses; wilcoxon):", ""]
        ours = r["runs"][0]["top"]
        for label, genes in r["wilcoxon_top"].items():
            lines.append(f"- {label}: {', '.join(ours.get(label, []))}; wilcoxon {', '.join(genes)}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
