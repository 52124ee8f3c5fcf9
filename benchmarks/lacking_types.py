"""Candidate lists that leave out a type the file holds: are its cells flagged?

`ica.annotate` with candidates reads, per cell, the linear read-out's probability that the cell
is a type the checkpoint learned but the candidates lack (instructcell_agent/lacking_types.py),
flags a cell above 0.5 and adds a note naming the type where at least 2% of the cells (and 3)
are flagged. On each annotation set's split, with the set's own labels as candidates:

- complete: every label listed; flagged cells and notes here are false alarms;
- one type left out at a time: the share of its cells flagged (and named as it), the share of
  the other cells flagged, the AUC of the probability for telling its cells from the others,
  and whether the note fired and named it;
- another set's labels (blood and immune sets among each other, pancreas sets among each other):
  the share flagged of the cells whose type that list lacks (zheng2017's CD34+ cells among
  kang2018's labels) and of the others.

Each measure under three rules on the same answers (`RULES`): cells read within the largest label
set that learned the answer (the default), within the one of those spelling the most candidates,
and also within the other sets that learned the answer. Beside it, the cost: the seconds of
`annotate` and of the check alone.

    python benchmarks/lacking_types.py [--split test] [--sets a,b] [--pair-labels c,d] [--out-dir benchmarks/results]
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
from instructcell_agent.lacking_types import LACKING_AT, lacking_labels, lacking_note, lacking_types
from marker_annotation import split_cells
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("lacking_types")
# sets of one tissue and species, each set's cells asked among the others' labels
FOREIGN = (("zheng2017_pbmc_sorted", "kang2018_pbmc_ifnb", "pbmc3k_seurat", "tabulamuris_immune_actinn"),
           ("xin2016_pancreas_subset", "wang2016_pancreas_subset", "baron2016_pancreas_human_mouse",
            "bastidasponce2019_pancreas_e155"))
# name -> lacking_types' keywords; the first is the default. A third rule, shallow cells read at the weight
# the depth curve gives them, was measured on 2026-12-07 and dropped (benchmarks/EXPERIMENTS.md).
RULES = {"own set": {}, "home by candidates": {"home_by": "candidates"}, "across sets": {"across_sets": True}}
NAMES_IT = "note_names_it"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="test")
    p.add_argument("--sets", default="", help="comma-separated set names (default: every annotation set)")
    p.add_argument("--pair-labels", default="",
                   help="comma-separated label sets: only pairs asked among these, with every set's cells (default: "
                        "every pair of the --sets)")
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


def by_rule(model, aligned, candidates, result) -> dict[str, dict[str, Any]]:
    """Each rule's per-cell probability, type and note on the same answers (and the check's seconds)."""
    out = {}
    for name, keywords in RULES.items():
        start = time.perf_counter()
        lacking = lacking_types(model, aligned.X, aligned.matched, candidates, list(result.answers), **keywords)
        seconds = time.perf_counter() - start
        out[name] = {"p": np.asarray(lacking.probability, float), "type": np.asarray(lacking.label, object),
                     "note": lacking_note(lacking) or "", "seconds": seconds}
    return out


def run_set(model, spec, split: str) -> dict[str, Any]:
    own = sorted(set(model.label_set(spec.name)["labels"]))
    cells, truth = split_cells(spec, split)
    aligned = align_to_vocab(cells, model.vocab)
    result, seconds, _ = annotated(cells, model, own)
    rules = by_rule(model, aligned, own, result)
    row: dict[str, Any] = {"dataset": spec.name, "n_cells": int(cells.n_obs), "labels": own, "seconds": seconds,
                           "complete": {k: {"flagged": float((r["p"] > LACKING_AT).mean()), "note": bool(r["note"]),
                                            "check_seconds": r["seconds"]} for k, r in rules.items()},
                           "left_out": []}
    for label in own:
        left = truth == label
        if not left.any():
            continue
        cands = [l for l in own if l != label]
        result, seconds, _ = annotated(cells, model, cands)
        trial: dict[str, Any] = {"label": label, "n_cells": int(left.sum()), "seconds": seconds}
        for name, r in by_rule(model, aligned, cands, result).items():
            flagged = r["p"] > LACKING_AT
            named = flagged & (r["type"] == label)
            both = 0 < left.sum() < len(left)
            trial[name] = {"flagged": float(flagged[left].mean()), "named": float(named[left].mean()),
                           "others_flagged": float(flagged[~left].mean()),
                           "auc": float(roc_auc_score(left, np.nan_to_num(r["p"]))) if both else float("nan"),
                           "note": bool(r["note"]), NAMES_IT: repr(label) in r["note"]}
        row["left_out"].append(trial)
        logger.info("%s, %s left out (%d cells): flagged %s", spec.name, label, trial["n_cells"],
                    ", ".join(f"{k} {trial[k]['flagged']:.2f} (others {trial[k]['others_flagged']:.3f})" for k in RULES))
    return row


def run_foreign(model, specs, split: str, label_sets: set[str] | None = None) -> list[dict[str, Any]]:
    """Each set's cells asked among another set of the same tissue's labels (only those of
    `label_sets`, where given)."""
    by_name = {s.name: s for s in specs}
    rows = []
    for group in FOREIGN:
        for cells_of in group:
            for labels_of in group:
                if cells_of == labels_of or not {cells_of, labels_of} <= set(by_name):
                    continue
                if label_sets and labels_of not in label_sets:
                    continue
                cells, truth = split_cells(by_name[cells_of], split)
                aligned = align_to_vocab(cells, model.vocab)
                cands = sorted(set(model.label_set(labels_of)["labels"]))
                result, seconds, _ = annotated(cells, model, cands)
                lacks = np.array([bool(lacking_labels(cands, [t])) for t in truth])
                row = {"cells": cells_of, "labels": labels_of, "n_cells": int(cells.n_obs),
                       "lacked_types": sorted(set(truth[lacks])), "n_lacked": int(lacks.sum()), "seconds": seconds}
                for name, r in by_rule(model, aligned, cands, result).items():
                    flagged = r["p"] > LACKING_AT
                    row[name] = {"lacked_flagged": float(flagged[lacks].mean()) if lacks.any() else float("nan"),
                                 "others_flagged": float(flagged[~lacks].mean()) if (~lacks).any() else float("nan"),
                                 "note": r["note"]}
                rows.append(row)
                logger.info("%s among %s: %d cells of types the list lacks, flagged %s", cells_of, labels_of,
                            row["n_lacked"], ", ".join(f"{k} {row[k]['lacked_flagged']:.2f} (others "
                                                       f"{row[k]['others_flagged']:.3f})" for k in RULES))
    return rows


def note_said(trial: dict[str, Any]) -> str:
    return "names it" if trial[NAMES_IT] else ("fired" if trial["note"] else "no")


def _short(note: str) -> str:
    return note[:note.find(" (the read-out")] if note else "-"


def render(report: dict[str, Any]) -> str:
    rows = report["sets"]
    trials = [t for r in rows for t in r["left_out"]]
    order = " / ".join(RULES)

    def mean(rule: str, key: str) -> float:
        return float(np.nanmean([t[rule][key] for t in trials]))

    def each(fmt: str, value) -> str:  # the rules' values of one measure, in RULES' order
        return " / ".join(format(value(rule), fmt) for rule in RULES)

    lines = ["# Candidate lists that leave out a type: flagged cells", "", *meta_lines(report["meta"]),
             f"- checkpoint: `{report['checkpoint']}`, float32; split: {report['split']}",
             f"- candidates: each set's own labels; a cell is flagged where the read-out's probability on learned types "
             f"the candidates lack is above {LACKING_AT:g} (`AnnotationResult.outside`); the note fires where at least "
             "2% of the cells and 3 are flagged",
             "- rules, on the same answers: 'own set' (the default): each cell read within the largest label set "
             "that learned its answer, cells too shallow for the read-out's depth curve to give it weight 0.5 not "
             "measured; 'home by candidates' (`home_by='candidates'`): read within the set that learned the "
             "answer and spells the most candidates (ties: the largest); 'across sets' (`across_sets=True`): also "
             "read within every other set that learned the answer or a finer type, for its types the candidates "
             "lack that share no learned type's lineage with a candidate", "",
             f"## One type left out at a time: mean over {len(trials)} trials", "",
             "| rule | left-out type's cells flagged | flagged and named as it | other cells flagged | AUC "
             "| note named it | note fired | complete lists: cells flagged | complete lists: note fired |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rule in RULES:
        lines.append(f"| {rule} | {mean(rule, 'flagged'):.3f} | {mean(rule, 'named'):.3f} | "
                     f"{mean(rule, 'others_flagged'):.4f} | {mean(rule, 'auc'):.3f} | "
                     f"{sum(t[rule][NAMES_IT] for t in trials)} of {len(trials)} | "
                     f"{sum(t[rule]['note'] for t in trials)} | "
                     f"{np.mean([r['complete'][rule]['flagged'] for r in rows]):.4f} | "
                     f"{sum(r['complete'][rule]['note'] for r in rows)} of {len(rows)} sets |")
    lines += ["", f"## Per set ({order})", "",
              "| dataset | cells | complete: flagged | complete: note | trials | left-out cells flagged "
              "| others flagged | AUC | note named it | annotate s | check s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        t, c = r["left_out"], r["complete"]
        lines.append(f"| {r['dataset']} | {r['n_cells']} | {each('.3f', lambda k: c[k]['flagged'])} | "
                     f"{each('', lambda k: 'yes' if c[k]['note'] else 'no')} | {len(t)} | "
                     f"{each('.3f', lambda k: np.mean([x[k]['flagged'] for x in t]))} | "
                     f"{each('.4f', lambda k: np.mean([x[k]['others_flagged'] for x in t]))} | "
                     f"{each('.3f', lambda k: np.nanmean([x[k]['auc'] for x in t]))} | "
                     f"{each('', lambda k: f'{sum(x[k][NAMES_IT] for x in t)}/{len(t)}')} | "
                     f"{r['seconds']:.1f} | {each('.3f', lambda k: c[k]['check_seconds'])} |")
    lines += ["", f"## Another set's labels ({order})", "",
              "Cells of types the list lacks: those whose own label is neither listed, nor under a listed type, nor "
              "broader than one (by Cell Ontology term). The note is the default's.", "",
              "| cells | labels | cells | of types the list lacks | lacked types | their cells flagged | others flagged "
              "| note |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    default = next(iter(RULES))
    for r in report["foreign"]:
        lines.append(f"| {r['cells']} | {r['labels']} | {r['n_cells']} | {r['n_lacked']} | "
                     f"{', '.join(r['lacked_types']) or '-'} | {each('.2f', lambda k: r[k]['lacked_flagged'])} | "
                     f"{each('.3f', lambda k: r[k]['others_flagged'])} | {_short(r[default]['note'])} |")
    lines += ["", f"## Every trial ({order})", "",
              "| dataset | left out | cells | flagged | named | others flagged | AUC | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        for t in r["left_out"]:
            lines.append(f"| {r['dataset']} | {t['label']} | {t['n_cells']} | {each('.2f', lambda k: t[k]['flagged'])} "
                         f"| {each('.2f', lambda k: t[k]['named'])} | {each('.3f', lambda k: t[k]['others_flagged'])} "
                         f"| {each('.3f', lambda k: t[k]['auc'])} | "
                         f"{each('', lambda k: note_said(t[k]))} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    meta = run_meta(shlex.join(["python", *sys.argv]))
    wanted, pair_labels = (set(filter(None, a.split(","))) for a in (args.sets, args.pair_labels))
    every = load_catalog(tasks=("annotation",))
    specs = [s for s in every if not wanted or s.name in wanted]
    model = ica.load_model(args.checkpoint, precision="float32")
    report = {"meta": meta, "checkpoint": str(args.checkpoint), "split": args.split,
              "sets": [run_set(model, spec, args.split) for spec in specs],
              "foreign": run_foreign(model, every if pair_labels else specs, args.split, pair_labels)}
    path = write_report(report, render(report), args.out_dir, args.stem or f"lacking_types_{args.split}")
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
