"""Candidate lists that leave out a type the file holds: are its cells flagged?

`ica.annotate` with candidates reads, per cell, the linear read-out's probability that the cell
is a type the checkpoint learned but the candidates lack (instructcell_agent/lacking_types.py),
flags a cell above 0.5 and adds a note naming the type where at least 2% of the cells (and 3)
are flagged. On each annotation set's split, with the set's own labels as candidates:

- complete: every label listed; flagged cells and notes here are false alarms;
- one type left out at a time: the share of its cells flagged (and named as it), the share of
  the other cells flagged, the AUC of the probability for telling its cells from the others,
  and whether the note fired and named it;
- another set's labels (blood sets among each other, pancreas sets among each other): the share
  flagged of the cells whose type that list lacks (zheng2017's CD34+ cells among kang2018's
  labels) and of the others.

Beside it, the cost: the seconds of `annotate` and of the check alone on the same cells.

    python benchmarks/lacking_types.py [--split test] [--sets a,b] [--out-dir benchmarks/results]
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
from sklearn.metrics import roc_auc_score

import instructcell_agent as ica
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.datasets import load_catalog
from instructcell_agent.lacking_types import LACKING_AT, lacking_labels, lacking_types
from marker_annotation import split_cells
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("lacking_types")
# sets of one tissue and species, each set's cells asked among the others' labels
FOREIGN = (("zheng2017_pbmc_sorted", "kang2018_pbmc_ifnb", "pbmc3k_seurat"),
           ("xin2016_pancreas_subset", "wang2016_pancreas_subset", "baron2016_pancreas_human_mouse"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="test")
    p.add_argument("--sets", default="", help="comma-separated set names (default: every annotation set)")
    p.add_argument("--checkpoint", type=Path, default=ica.default_checkpoint_path())
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--stem", default="")
    return p.parse_args(argv)


def annotated(cells, model, candidates):
    """(result, seconds, the lacking-type note or '')."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ica.annotate(cells, model=model, candidates=candidates)
    seconds = time.perf_counter() - start
    return result, seconds, next((n for n in result.provenance["notes"] if "candidates lack" in n), "")


def run_set(model, spec, split: str) -> dict[str, Any]:
    own = sorted(set(model.label_set(spec.name)["labels"]))
    cells, truth = split_cells(spec, split)
    result, seconds, note = annotated(cells, model, own)
    flagged = np.asarray(result.outside, float) > LACKING_AT
    aligned = align_to_vocab(cells, model.vocab)
    start = time.perf_counter()
    lacking_types(model, aligned.X, aligned.matched, own, list(result.answers))
    row: dict[str, Any] = {"dataset": spec.name, "n_cells": int(cells.n_obs), "labels": own,
                           "complete": {"flagged": float(flagged.mean()), "note": bool(note), "seconds": seconds,
                                        "check_seconds": time.perf_counter() - start},
                           "left_out": []}
    for label in own:
        left = truth == label
        if not left.any():
            continue
        result, seconds, note = annotated(cells, model, [l for l in own if l != label])
        outside = np.asarray(result.outside, float)
        flagged = outside > LACKING_AT
        named = flagged & (np.asarray(result.outside_type, object) == label)
        both = 0 < left.sum() < len(left)
        row["left_out"].append({
            "label": label, "n_cells": int(left.sum()), "flagged": float(flagged[left].mean()),
            "named": float(named[left].mean()), "others_flagged": float(flagged[~left].mean()),
            "auc": float(roc_auc_score(left, np.nan_to_num(outside))) if both else float("nan"),
            "note": bool(note), "note_names_it": repr(label) in note, "seconds": seconds})
        t = row["left_out"][-1]
        logger.info("%s, %s left out (%d cells): flagged %.2f, others %.3f, note %s", spec.name, label,
                    t["n_cells"], t["flagged"], t["others_flagged"], t["note_names_it"])
    return row


def run_foreign(model, specs, split: str) -> list[dict[str, Any]]:
    """Each set's cells asked among another set of the same tissue's labels."""
    by_name = {s.name: s for s in specs}
    rows = []
    for group in FOREIGN:
        for cells_of in group:
            for labels_of in group:
                if cells_of == labels_of or not {cells_of, labels_of} <= set(by_name):
                    continue
                cells, truth = split_cells(by_name[cells_of], split)
                cands = sorted(set(model.label_set(labels_of)["labels"]))
                result, seconds, note = annotated(cells, model, cands)
                flagged = np.asarray(result.outside, float) > LACKING_AT
                lacks = np.array([bool(lacking_labels(cands, [t])) for t in truth])
                rows.append({"cells": cells_of, "labels": labels_of, "n_cells": int(cells.n_obs),
                             "lacked_types": sorted(set(truth[lacks])), "n_lacked": int(lacks.sum()),
                             "lacked_flagged": float(flagged[lacks].mean()) if lacks.any() else float("nan"),
                             "others_flagged": float(flagged[~lacks].mean()) if (~lacks).any() else float("nan"),
                             "note": note, "seconds": seconds})
                logger.info("%s among %s: %d cells of types the list lacks, flagged %.2f; others %.3f", cells_of,
                            labels_of, rows[-1]["n_lacked"], rows[-1]["lacked_flagged"], rows[-1]["others_flagged"])
    return rows


def render(report: dict[str, Any]) -> str:
    rows = report["sets"]
    trials = [t for r in rows for t in r["left_out"]]

    def mean(key: str) -> float:
        return float(np.nanmean([t[key] for t in trials]))

    lines = ["# Candidate lists that leave out a type: flagged cells", "", *meta_lines(report["meta"]),
             f"- checkpoint: `{report['checkpoint']}`, float32; split: {report['split']}",
             f"- candidates: each set's own labels; a cell is flagged where the read-out's probability on learned types "
             f"the candidates lack is above {LACKING_AT:g} (`AnnotationResult.outside`); the note fires where at least "
             "2% of the cells and 3 are flagged", "",
             f"## One type left out at a time: mean over {len(trials)} trials", "",
             f"- left-out type's cells flagged: {mean('flagged'):.3f} (flagged and named as that type "
             f"{mean('named'):.3f}); other cells flagged: {mean('others_flagged'):.4f}; AUC {mean('auc'):.3f}",
             f"- the note fired and named the left-out type in {sum(t['note_names_it'] for t in trials)} of "
             f"{len(trials)} trials (fired at all in {sum(t['note'] for t in trials)})",
             f"- every label listed: cells flagged {np.mean([r['complete']['flagged'] for r in rows]):.4f} on "
             f"average; the note fired on {sum(r['complete']['note'] for r in rows)} of {len(rows)} sets", "",
             "## Per set", "",
             "| dataset | cells | complete: flagged / note | trials | left-out cells flagged | others flagged | AUC "
             "| note named it | annotate s | check s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        t, c = r["left_out"], r["complete"]
        lines.append(f"| {r['dataset']} | {r['n_cells']} | {c['flagged']:.3f} / {'yes' if c['note'] else 'no'} | "
                     f"{len(t)} | {np.mean([x['flagged'] for x in t]):.3f} | "
                     f"{np.mean([x['others_flagged'] for x in t]):.4f} | {np.nanmean([x['auc'] for x in t]):.3f} | "
                     f"{sum(x['note_names_it'] for x in t)}/{len(t)} | {c['seconds']:.1f} | {c['check_seconds']:.3f} |")
    lines += ["", "## Another set's labels", "",
              "Cells of types the list lacks: those whose own label is neither listed, nor under a listed type, nor "
              "broader than one (by Cell Ontology term).", "",
              "| cells | labels | cells | of types the list lacks | lacked types | their cells flagged | others flagged "
              "| note |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["foreign"]:
        lines.append(f"| {r['cells']} | {r['labels']} | {r['n_cells']} | {r['n_lacked']} | "
                     f"{', '.join(r['lacked_types']) or '-'} | {r['lacked_flagged']:.2f} | {r['others_flagged']:.3f} | "
                     f"{r['note'][:r['note'].find(' (the read-out')] if r['note'] else '-'} |")
    lines += ["", "## Every trial", "", "| dataset | left out | cells | flagged | named | others flagged | AUC | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        for t in r["left_out"]:
            lines.append(f"| {r['dataset']} | {t['label']} | {t['n_cells']} | {t['flagged']:.2f} | {t['named']:.2f} | "
                         f"{t['others_flagged']:.3f} | {t['auc']:.3f} | "
                         f"{'names it' if t['note_names_it'] else ('fired' if t['note'] else 'no')} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    meta = run_meta(shlex.join(["python", *sys.argv]))
    wanted = set(filter(None, args.sets.split(",")))
    specs = [s for s in load_catalog(tasks=("annotation",)) if not wanted or s.name in wanted]
    model = ica.load_model(args.checkpoint, precision="float32")
    report = {"meta": meta, "checkpoint": str(args.checkpoint), "split": args.split,
              "sets": [run_set(model, spec, args.split) for spec in specs],
              "foreign": run_foreign(model, specs, args.split)}
    path = write_report(report, render(report), args.out_dir, args.stem or f"lacking_types_{args.split}")
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
