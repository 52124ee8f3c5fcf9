"""`marker_check` on the shared test splits: what known markers say about labels, right and wrong.

For every cell-type set's test split, the check runs twice on the same cells: with the known
labels (what the markers say when every label is right) and with the model's answers
(`ica.annotate(cells, candidates=the set's labels)`, float32). Per answered label it reports the
check's AUROC and verdict beside the answers' precision (the share of the cells given the label
that carry it), so one can see whether labels the check does not support are the ones the model
got wrong. Then the cases of `missing_types.py`, where no candidate is right for some or all of
the cells, and scanpy's bundled pbmc68k_reduced with its own `bulk_labels` (the demo's file).

    python benchmarks/marker_check.py                   # shipped checkpoint, test split, PanglaoDB
    python benchmarks/marker_check.py --marker-db cellmarker2 --stem marker_check_cellmarker2

Writes ``<stem>.md`` and ``<stem>.json`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.stats import spearmanr

import instructcell_agent as ica
from instructcell_agent.core_model.datasets import load_catalog
from instructcell_agent.core_model.io import get_labels
from instructcell_agent.interpret.marker_check import marker_check
from missing_types import missing_cases, test_cells
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("marker_check")
VERDICTS = ("supported", "weak", "not supported", "no known markers", "no other label")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=ica.default_checkpoint_path())
    p.add_argument("--marker-db", default="panglaodb")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--stem", default="marker_check")
    return p.parse_args(argv)


def label_rows(check, answers: np.ndarray | None = None, truth: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The check's table as dicts, with each label's precision when answers and truth are given."""
    rows = []
    for r in check.table.itertuples(index=False):
        row = {"label": r.label, "n_cells": r.n_cells, "auroc": None if np.isnan(r.auroc) else float(r.auroc),
               "support": r.support, "top_markers": r.top_markers}
        if answers is not None:
            mine = answers == r.label
            row["precision"] = float((truth[mine] == r.label).mean())
        rows.append(row)
    return rows


def verdict_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {v: sum(r["support"] == v for r in rows) for v in VERDICTS if any(r["support"] == v for r in rows)}


def run_sets(model, marker_db: str) -> list[dict[str, Any]]:
    out = []
    for spec in load_catalog(tasks=("annotation",)):
        cells = test_cells(spec)
        truth = np.asarray(get_labels(cells, spec.label_key), str)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = ica.annotate(cells, model=model, candidates=list(spec.classes) or sorted(set(truth)))
        answers = np.asarray(result.labels, str)
        known = label_rows(marker_check(cells, list(truth), model=model, marker_db=marker_db))
        given = label_rows(marker_check(cells, list(answers), model=model, marker_db=marker_db), answers, truth)
        out.append({"dataset": spec.name, "n_cells": cells.n_obs, "accuracy": float((answers == truth).mean()),
                    "known": known, "answers": given})
        logger.info("%s: known %s; answers %s", spec.name, verdict_counts(known), verdict_counts(given))
    return out


def run_missing(model, marker_db: str) -> list[dict[str, Any]]:
    specs = {s.name: s for s in load_catalog(tasks=("annotation",))}
    out = []
    for what, cells, cands, fields in missing_cases(specs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = ica.annotate(cells, model=model, candidates=cands, **fields)
        answers = np.asarray(result.labels, str)
        rows = label_rows(marker_check(cells, list(answers), model=model, marker_db=marker_db))
        out.append({"cells": what, "n_cells": cells.n_obs, "answers": rows})
        logger.info("%s: %s", what, verdict_counts(rows))
    return out


def run_demo_file(model, marker_db: str) -> list[dict[str, Any]]:
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()  # X is scaled; adata.raw holds log-normalized values
    return label_rows(marker_check(adata, "bulk_labels", model=model, marker_db=marker_db, use_raw=True))


def pooled(sets: list[dict[str, Any]]) -> dict[str, Any]:
    """Answer precision by verdict over every set's answered labels, and its rank correlation with
    the AUROC."""
    rows = [r for s in sets for r in s["answers"] if r["auroc"] is not None]
    by = {}
    for v in ("supported", "weak", "not supported"):
        mine = [r for r in rows if r["support"] == v]
        cells = sum(r["n_cells"] for r in mine)
        right = sum(r["precision"] * r["n_cells"] for r in mine)
        by[v] = {"labels": len(mine), "cells": cells, "precision": right / cells if cells else None}
    rho = spearmanr([r["auroc"] for r in rows], [r["precision"] for r in rows])
    return {"by_verdict": by, "spearman_auroc_precision": float(rho.statistic), "p": float(rho.pvalue),
            "n_labels": len(rows)}


def _fmt(auroc: float | None) -> str:
    return "-" if auroc is None else f"{auroc:.2f}"


def render(report: dict[str, Any]) -> str:
    p = report["pooled"]
    lines = [
        "# `marker_check`: known markers against the labels, right and wrong", "",
        *meta_lines(report["meta"]),
        f"- checkpoint: `{report['checkpoint']}`; test split; float32; marker database {report['marker_db']}",
        "- AUROC: the label's marker score (mean z-scored log1p(CP10k) over its known markers), its cells against "
        "the cells of the file's other labels (synonyms of its Cell Ontology type left out); supported >= 0.8, "
        "weak >= 0.6, not supported below",
        "- precision: of the cells answered with the label, the share whose known label it is", "",
        "## Pooled over the nine sets' answered labels", "",
        "| verdict | labels | cells | answers' precision |", "| --- | --- | --- | --- |"]
    for v, t in p["by_verdict"].items():
        prec = "-" if t["precision"] is None else f"{t['precision']:.3f}"
        lines.append(f"| {v} | {t['labels']} | {t['cells']} | {prec} |")
    lines += ["", f"Rank correlation of a label's AUROC with its answers' precision over {p['n_labels']} labels: "
              f"{p['spearman_auroc_precision']:+.2f} (p = {p['p']:.2g}).", "",
              "## Per set and label", "",
              "| dataset | label | AUROC, known labels | AUROC, answers | verdict on answers | answers' precision "
              "| cells answered | top known markers (answers; share of its cells / of the others expressing) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in report["sets"]:
        known = {r["label"]: r for r in s["known"]}
        for r in s["answers"]:
            k = known.get(r["label"], {})
            lines.append(f"| {s['dataset']} | {r['label']} | {_fmt(k.get('auroc'))} | {_fmt(r['auroc'])} | "
                         f"{r['support']} | {r['precision']:.3f} | {r['n_cells']} | {r['top_markers']} |")
    lines += ["", "## Cells of a type the candidates lack (`missing_types.py`'s cases)", "",
              "| cells | answer | cells answered | AUROC | verdict | top known markers |",
              "| --- | --- | --- | --- | --- | --- |"]
    for m in report["missing"]:
        for r in m["answers"]:
            lines.append(f"| {m['cells']} ({m['n_cells']}) | {r['label']} | {r['n_cells']} | {_fmt(r['auroc'])} | "
                         f"{r['support']} | {r['top_markers']} |")
    lines += ["", "## scanpy's pbmc68k_reduced, its own `bulk_labels` (the demo's file; 765 genes, log-normalized raw)",
              "", "| label | cells | AUROC | verdict | top known markers |", "| --- | --- | --- | --- | --- |"]
    for r in report["demo_file"]:
        lines.append(f"| {r['label']} | {r['n_cells']} | {_fmt(r['auroc'])} | {r['support']} | {r['top_markers']} |")
    return "\n".join(lines).replace("|  |", "| |") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model(args.checkpoint, precision="float32")
    sets = run_sets(model, args.marker_db)
    report = {"meta": meta, "checkpoint": str(args.checkpoint), "marker_db": args.marker_db, "sets": sets,
              "pooled": pooled(sets), "missing": run_missing(model, args.marker_db),
              "demo_file": run_demo_file(model, args.marker_db)}
    path = write_report(report, render(report), args.out_dir, args.stem)
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
