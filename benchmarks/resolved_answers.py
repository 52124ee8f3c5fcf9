"""`resolve_at` on the shared test splits: how many cells keep their label, how many climb to a
broader Cell Ontology type, how often each is right, against `unassigned_below` at the same bar.

Every cell-type set's split is answered through the Python API as a user calls it, with the set's
labels as candidates (`ica.annotate(cells, candidates=labels, resolve_at=...)`) and freely (no
candidates: the labels learned for the tissue, several training sets' spellings among them). A
resolved answer is right when it names the cell's known label, a synonym, or a type the known label
falls under (core_model/hierarchy.py, `consistent`). The peer, measured on the same answers: with
`unassigned_below` at the same bar a cell keeps its label or becomes 'Unassigned'.

    python benchmarks/resolved_answers.py                       # shipped checkpoint, test split
    python benchmarks/resolved_answers.py --split valid --stem resolved_answers_valid

The thresholds are the caller's choice, not fitted: 0.8, 0.9 and 0.95 are reported with candidates
(computed from one call's probabilities, checked against the API's own `resolved` at 0.9), 0.9 for
free answers (one call). The cost side: cells asked among candidates that lack their type (the
cases of missing_types.py), where a broader type is as wrong as the labels it sums.
Writes ``<stem>.md`` and ``<stem>.json`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import instructcell_agent as ica
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.hierarchy import BROADER, consistent, count_right, resolve
from instructcell_agent.core_model.io import get_labels, read_h5ad
from missing_types import missing_cases
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("resolved_answers")
API_AT = 0.9  # the bar the API is called with (free answers: the only one)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=ica.default_checkpoint_path())
    p.add_argument("--split", default="test")
    p.add_argument("--datasets", default="", help="comma-separated set names (default: every cell-type set)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--stem", default="resolved_answers")
    return p.parse_args(argv)


def tally(names, levels, confidence, labels, truth, at: float) -> dict[str, Any]:
    """Counts and right shares of resolved answers, and of `unassigned_below` at the same bar."""
    names, levels = np.asarray(names, dtype=object), np.asarray(levels, dtype=object)
    kept = np.asarray(confidence, dtype=float) >= at  # unassigned_below's cells
    kept_right = np.array([consistent(str(l), str(t)) for l, t in zip(labels, truth)]) & kept
    return {"at": at, **count_right(names, levels, truth),
            "broader_types": dict(Counter(map(str, names[levels == BROADER])).most_common()),
            "kept": int(kept.sum()), "kept_right": int(kept_right.sum())}


def run_set(model, spec, split: str, thresholds: Sequence[float]) -> dict[str, Any]:
    cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)[split], split)
    truth = np.asarray(get_labels(cells, spec.label_key)).astype(str)
    labels = list(model.label_set(spec.name)["labels"])
    with warnings.catch_warnings():  # context and atypical-cell warnings are not what is measured here
        warnings.simplefilter("ignore")
        scored = ica.annotate(cells, model=model, candidates=labels, resolve_at=API_AT)
        free = ica.annotate(cells, model=model, resolve_at=API_AT)
    probs = scored.probabilities.to_numpy()
    # the API's table is the one resolve gives on its probabilities
    check = resolve(probs, labels, API_AT)
    if list(check.names) != list(scored.resolved["resolved"]):
        raise RuntimeError(f"{spec.name}: the API's resolved answers differ from resolve() on its probabilities")
    rows = []
    for at in thresholds:
        found = resolve(probs, labels, at)
        rows.append(tally(found.names, found.levels, scored.confidence, scored.labels, truth, at))
    free_row = tally(free.resolved["resolved"], free.resolved["resolved_level"], free.confidence, free.labels,
                     truth, API_AT)
    plain = float(np.mean([consistent(str(l), t) for l, t in zip(scored.labels, truth)]))
    plain_free = float(np.mean([consistent(str(l), t) for l, t in zip(free.labels, truth)]))
    logger.info("%s: %s", spec.name, scored.resolved_line())
    return {"dataset": spec.name, "n_cells": cells.n_obs, "accuracy": plain, "accuracy_free": plain_free,
            "candidates": rows, "free": free_row}


def run_missing(model, thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """The cost side: cells asked among candidates that lack their type (missing_types.py's cases).
    A broader type summing wrong labels is as wrong as they are, and now sounds surer."""
    rows = []
    for what, cells, cands, fields in missing_cases({s.name: s for s in load_catalog(tasks=("annotation",))}):
        truth = np.asarray(get_labels(cells, "cell_type")).astype(str)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = ica.annotate(cells, model=model, candidates=cands, **fields)
        probs = result.probabilities.to_numpy()
        tallies = []
        for at in thresholds:
            found = resolve(probs, cands, at)
            tallies.append(tally(found.names, found.levels, result.confidence, result.labels, truth, at))
        rows.append({"cells": what, "n_cells": cells.n_obs, "at": tallies})
        logger.info("%s: at %g %s", what, thresholds[0], tallies[0])
    return rows


def _cell(r: dict[str, Any]) -> tuple[str, str, str, str]:
    def share(k: str, n: str) -> str:
        return f"{r[k] / r[n]:.3f}" if r[n] else "-"

    types = ", ".join(f"{t} {k}" for t, k in list(r["broader_types"].items())[:3])
    more = r["n_label"] + r["n_broader"] - r["kept"]  # its 'Unassigned' less resolve_at's
    return (f"{r['n_label']} ({share('right_label', 'n_label')})",
            f"{r['n_broader']} ({share('right_broader', 'n_broader')})" + (f": {types}" if types else ""),
            str(r["n_unassigned"]), f"{r['kept']} ({share('kept_right', 'kept')}); {more} more 'Unassigned'")


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "# `resolve_at`: the finest answer reaching a probability, against `unassigned_below` at the same bar", "",
        *meta_lines(meta),
        f"- checkpoint: `{report['checkpoint']}`; split: {report['split']}; float32",
        "- right: the answer names the cell's known label, a synonym, or a type the known label falls under "
        "(core_model/hierarchy.py, `consistent`); in brackets, the share right",
        "- `unassigned_below` column: cells whose label's confidence reaches the bar (share right), and how many "
        "more cells it leaves 'Unassigned' than `resolve_at` does", ""]
    for at_index, at in enumerate(report["thresholds"]):
        lines += [f"## With the set's labels as candidates, at {at:g}", "",
                  "| dataset | cells | accuracy | at their label | broader type | 'Unassigned' | unassigned_below |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in report["rows"]:
            lines.append(f"| {r['dataset']} | {r['n_cells']} | {r['accuracy']:.3f} | "
                         + " | ".join(_cell(r["candidates"][at_index])) + " |")
        lines.append(_totals(report["rows"], lambda r: r["candidates"][at_index]))
        lines.append("")
    lines += [f"## Free answers (no candidates), at {API_AT:g}", "",
              "| dataset | cells | accuracy | at their label | broader type | 'Unassigned' | unassigned_below |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        lines.append(f"| {r['dataset']} | {r['n_cells']} | {r['accuracy_free']:.3f} | " + " | ".join(_cell(r["free"]))
                     + " |")
    lines.append(_totals(report["rows"], lambda r: r["free"]))
    lines += ["", "## Cells of a type the candidates lack (the cost side)", "",
              "The cases of `missing_types.py`: no candidate is right for zheng2017's CD34+ cells or xin2016's "
              "cells, nor for bastidasponce2019's ductal cells, progenitors and epsilon cells (its alpha, beta and "
              "delta cells have a right candidate). A broader type summing wrong labels is wrong too.", "",
              "| cells | bar | at a label | broader type | 'Unassigned' | unassigned_below |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in report["missing"]:
        for t in r["at"]:
            lines.append(f"| {r['cells']} ({r['n_cells']}) | {t['at']:g} | " + " | ".join(_cell(t)) + " |")
    return "\n".join(lines) + "\n"


def _totals(rows, pick) -> str:
    t = {k: sum(pick(r)[k] for r in rows) for k in ("n_label", "right_label", "n_broader", "right_broader",
                                                     "n_unassigned", "kept", "kept_right")}
    n = sum(r["n_cells"] for r in rows)
    right = t["right_label"] + t["right_broader"]
    return (f"| all sets | {n} | | {t['n_label']} ({t['right_label'] / max(t['n_label'], 1):.3f}) | "
            f"{t['n_broader']} ({t['right_broader'] / max(t['n_broader'], 1):.3f}) | {t['n_unassigned']} | "
            f"{t['kept']} ({t['kept_right'] / max(t['kept'], 1):.3f}); right answers: {right} resolved against "
            f"{t['kept_right']} kept |")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model(args.checkpoint, precision="float32")
    wanted = [s for s in args.datasets.split(",") if s]
    specs = [s for s in load_catalog(tasks=("annotation",)) if not wanted or s.name in wanted]
    rows = [run_set(model, spec, args.split, args.thresholds) for spec in specs]
    missing = run_missing(model, args.thresholds) if args.split == "test" else []  # its cases are test cells
    report = {"meta": meta, "checkpoint": str(args.checkpoint), "split": args.split,
              "thresholds": list(args.thresholds), "rows": rows, "missing": missing}
    print(write_report(report, render(report), args.out_dir, args.stem))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
