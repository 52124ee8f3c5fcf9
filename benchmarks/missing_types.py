"""Cells of a type the candidates lack: does the confidence tell them from cells the candidates cover?

A file may hold a type no candidate names (progenitors in a blood sample asked among mature
types, cells of another tissue). The model still names a candidate; `unassigned_below` sets the
least confident answers aside. This reports, for thresholds 0.4 to 0.7, the share of cells
answered below each:

- in-set: each cell-type set's test cells asked among its own labels (and the accuracy of the
  answers kept);
- missing types: zheng2017's CD34+ test cells and xin2016's pancreas test cells asked among
  kang2018's seven blood labels (no progenitors, no islet cells), and bastidasponce2019's mouse
  pancreas test cells among xin2016's four islet labels (no ductal cells or progenitors).

Answers as users get them: `ica.annotate` with the candidates in one order, the default
instruction, calibrated confidences.

    python benchmarks/missing_types.py [--precision bfloat16] [--out-dir benchmarks/results]
    python benchmarks/missing_types.py --fast   # the same with fast=True (missing_types_fast.md): do cells
        # the read-out answers alone, at its own confidence of 0.98 or more, hide the missing types?
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import instructcell_agent as ica
from instructcell_agent.core_model.datasets import DatasetSpec, load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.io import get_labels, read_h5ad
from report_io import run_meta, write_report

logger = logging.getLogger("missing_types")
THRESHOLDS = (0.4, 0.5, 0.6, 0.7)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--fast", action="store_true", help="answer with fast=True (core_model/readout_first.py)")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def test_cells(spec: DatasetSpec):
    return subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)["test"], "test")


def below(confidence: np.ndarray) -> dict[str, float]:
    return {f"{t:g}": float((confidence < t).mean()) for t in THRESHOLDS}


def missing_cases(specs: dict[str, DatasetSpec]) -> list[tuple[str, Any, list[str], dict[str, str]]]:
    """(what, cells, candidates, prompt fields) of each case where the candidates lack the cells' type."""
    labels = {name: list(spec.classes) for name, spec in specs.items()}  # the catalog's classes, sorted
    kang, xin = labels["kang2018_pbmc_ifnb"], labels["xin2016_pancreas_subset"]
    zheng = test_cells(specs["zheng2017_pbmc_sorted"])
    cd34 = zheng[np.asarray(get_labels(zheng, "cell_type"), str) == "CD34+"].copy()
    return [("zheng2017's CD34+ test cells, kang2018's labels", cd34, kang, {}),
            ("xin2016's pancreas test cells, kang2018's labels (tissue given as blood)",
             test_cells(specs["xin2016_pancreas_subset"]), kang, {"tissue": "peripheral blood"}),
            ("bastidasponce2019's mouse pancreas test cells, xin2016's labels",
             test_cells(specs["bastidasponce2019_pancreas_e155"]), xin, {})]


def by_readout_alone(result) -> int | None:
    """Cells the read-out answered alone (`fast`), None without it."""
    fast = result.provenance.get("fast")
    return None if fast is None else fast["cells_answered_by_readout_alone"]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model(precision=args.precision)
    specs = {s.name: s for s in load_catalog(tasks=("annotation",))}
    labels = {name: list(spec.classes) for name, spec in specs.items()}  # the catalog's classes, sorted

    rows: list[dict[str, Any]] = []
    pooled_conf, pooled_right = [], []
    for name, spec in specs.items():
        cells = test_cells(spec)
        truth = np.asarray(get_labels(cells, spec.label_key), str)
        result = ica.annotate(cells, model=model, candidates=labels[name] or sorted(set(truth)), fast=args.fast)
        conf, right = np.asarray(result.confidence, float), np.asarray(result.labels, str) == truth
        pooled_conf.append(conf)
        pooled_right.append(right)
        rows.append({"cells": f"{name} test cells, own labels", "kind": "in-set", "n": len(conf),
                     "by_readout_alone": by_readout_alone(result),
                     "accuracy": float(right.mean()), "below": below(conf),
                     "kept_accuracy": {f"{t:g}": float(right[conf >= t].mean()) for t in THRESHOLDS}})
        logger.info("%s: accuracy %.3f, below 0.6 %.3f", name, right.mean(), (conf < 0.6).mean())
    conf, right = np.concatenate(pooled_conf), np.concatenate(pooled_right)
    rows.insert(0, {"cells": f"all {len(specs)} cell-type sets' test cells, own labels", "kind": "in-set",
                    "n": len(conf), "accuracy": float(right.mean()), "below": below(conf),
                    "kept_accuracy": {f"{t:g}": float(right[conf >= t].mean()) for t in THRESHOLDS}})

    for what, cells, cands, fields in missing_cases(specs):
        result = ica.annotate(cells, model=model, candidates=cands, fast=args.fast, **fields)
        conf = np.asarray(result.confidence, float)
        rows.append({"cells": what, "kind": "missing types", "n": len(conf), "below": below(conf),
                     "by_readout_alone": by_readout_alone(result),
                     "median_confidence": float(np.median(conf)),
                     "most_common": {str(k): int(v) for k, v in result.label_counts().head(3).items()}})
        logger.info("%s: below 0.6 %.3f", what, (conf < 0.6).mean())

    report = {"meta": meta, "precision": model.model.precision, "thresholds": list(THRESHOLDS), "rows": rows}
    lines = ["# Cells of a type the candidates lack", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {meta['nproc']} CPU cores, load average at start {meta['loadavg']}",
             f"- ours: `ica.annotate` with the candidates in one order, default instruction, calibrated confidences, "
             f"language model in {model.model.precision}" + (", fast=True" if args.fast else ""), "",
             "Share of cells answered below each confidence (in parentheses, for in-set cells: accuracy of the "
             "answers kept).", "",
             "| cells | n | " + " | ".join(f"< {t:g}" for t in THRESHOLDS) + " |",
             "|---|---|" + "---|" * len(THRESHOLDS)]
    for row in rows:
        cells = [f"{row['below'][f'{t:g}']:.3f}" + (f" ({row['kept_accuracy'][f'{t:g}']:.3f})"
                                                   if "kept_accuracy" in row else "") for t in THRESHOLDS]
        name = row["cells"] + (f" (accuracy {row['accuracy']:.3f})" if "accuracy" in row else
                               f" (median confidence {row['median_confidence']:.2f})")
        if row.get("by_readout_alone") is not None:
            name += f"; {row['by_readout_alone']} by the read-out alone"
        lines.append(f"| {name} | {row['n']:,} | " + " | ".join(cells) + " |")
    stem = "missing_types_fast" if args.fast else "missing_types"
    path = write_report(report, "\n".join(lines) + "\n", args.out_dir, stem)
    print(path)


if __name__ == "__main__":
    main()
