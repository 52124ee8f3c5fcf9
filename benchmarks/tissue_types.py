"""A tissue's known cell types as the candidates: what a user gets from naming the tissue alone.

For cells of a tissue the model never learned, `ica.tissue_cell_types(tissue)` (CLI annotate
`--tissue-types`) names the candidates: PanglaoDB's types of the tissue's organ and the types most
tissues hold (interpret/tissue_types.py). This asks, for every shared cell-type set whose tissue
names an organ, and for the 20-cell liver file in the reference system's input format:

- `ica.annotate(cells, candidates=tissue_cell_types(tissue))`, as a user calls it (learned types
  among the candidates answered by the model, the others by their markers through the gate);
- `ica.annotate_by_markers(cells, same candidates)`, the markers alone;

and reads the answers against the set's labels through the Cell Ontology: named (the label, a
synonym or a finer type, as `agreement` reads answers), right at the answer's resolution (a
broader type counts: 'T cells' for 'CD4+ T Helper2'), and how many cells were given a type that
fits none of the set's labels (a type the file lacks, or a name the ontology table does not tie to
a label). Test splits; the liver file whole (no model was trained on it).

    python benchmarks/tissue_types.py [--precision float32] [--out-dir benchmarks/results]
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

import numpy as np

import instructcell_agent as ica
from instructcell_agent.agreement import agreement
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.hierarchy import consistent
from instructcell_agent.core_model.io import get_labels, read_h5ad
from instructcell_agent.interpret.tissue_types import UnknownTissueError, tissue_organs
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("tissue_types")
WHOLE_FILES = ("he2020_liver_instructcell_demo",)  # not training sets: every cell is asked


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def scores(answers: Sequence[str | None], truth: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Named / right at the answer's resolution / given a type that fits none of the set's labels."""
    named = agreement(list(answers), list(truth)).agreement
    answers = [a if a is not None else "" for a in answers]
    right = np.mean([bool(a) and consistent(a, t) for a, t in zip(answers, truth)])
    foreign = np.mean([bool(a) and not any(consistent(a, label) for label in labels) for a in answers])
    return {"named": float(named), "right": float(right), "foreign": float(foreign)}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model(precision=args.precision)
    rows: list[dict[str, Any]] = []
    for spec in load_catalog(tasks=("annotation", "compat")):
        if spec.task == "drug_response" or not spec.label_key or not spec.tissue:
            continue
        try:
            organs = tissue_organs(spec.tissue)
        except UnknownTissueError:
            logger.info("%s: tissue %r names no organ; skipped", spec.name, spec.tissue)
            continue
        cells = read_h5ad(spec.path)
        if spec.name not in WHOLE_FILES:
            cells = subset_by_names(cells, read_split(spec.split_path)["test"], "test")
        truth = np.asarray(get_labels(cells, spec.label_key), str)
        labels = sorted(set(truth))
        cands = ica.tissue_cell_types(spec.tissue)
        row: dict[str, Any] = {"dataset": spec.name, "tissue": spec.tissue, "organs": list(organs),
                               "n_cells": int(cells.n_obs), "n_labels": len(labels), "n_candidates": len(cands)}
        with warnings.catch_warnings():  # the notes on routes and atypical cells are the point of other reports
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            result = ica.annotate(cells, model=model, candidates=cands)
            row["annotate"] = {**scores(result.labels, truth, labels), "seconds": time.perf_counter() - started,
                               "route": result.provenance.get("candidate_route"),
                               "by_markers": list((result.provenance.get("marker_gate") or {}).get("unlearned", [])),
                               "top": {str(k): int(v) for k, v in result.label_counts().head(5).items()}}
            started = time.perf_counter()
            markers = ica.annotate_by_markers(cells, cands, model=model)
            row["markers"] = {**scores(markers.labels, truth, labels), "seconds": time.perf_counter() - started,
                              "top": {str(k): int(v) for k, v in markers.label_counts().head(5).items()}}
        rows.append(row)
        logger.info("%s: annotate named %.3f right %.3f; markers named %.3f right %.3f", spec.name,
                    row["annotate"]["named"], row["annotate"]["right"], row["markers"]["named"],
                    row["markers"]["right"])

    report = {"meta": meta, "precision": model.model.precision, "rows": rows}
    lines = ["# A tissue's known cell types as the candidates", "", *meta_lines(meta),
             f"- ours: `ica.annotate(cells, candidates=ica.tissue_cell_types(tissue))`, language model in "
             f"{model.model.precision}; beside it `ica.annotate_by_markers` with the same candidates",
             "- named: the answer is the label, a synonym or a finer type; right: also a broader type; foreign: "
             "a type that fits none of the set's labels", "",
             "| dataset (tissue) | cells | labels | candidates | annotate named / right / foreign | "
             "markers alone named / right / foreign | annotate: most given |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        a, m = row["annotate"], row["markers"]
        top = ", ".join(f"{k} {v}" for k, v in a["top"].items())
        lines.append(f"| {row['dataset']} ({row['tissue']}) | {row['n_cells']:,} | {row['n_labels']} | "
                     f"{row['n_candidates']} | {a['named']:.3f} / {a['right']:.3f} / {a['foreign']:.3f} | "
                     f"{m['named']:.3f} / {m['right']:.3f} / {m['foreign']:.3f} | {top} |")
    path = write_report(report, "\n".join(lines) + "\n", args.out_dir, "tissue_types")
    print(path)


if __name__ == "__main__":
    main()
