"""Candidates named the user's way: accuracy when the labels are not the training set's spelling.

A user rarely types 'CD14+Mono'; they write 'CD14-positive monocyte' or 'classical monocyte'.
On each annotation set's test split, with the API's fixed instruction, this scores:

- `own`: the set's own labels as candidates (what the model was trained to pick from);
- `cl_names_as_text`: the labels renamed to their Cell Ontology names and scored as strings,
  the only route before `core_model/candidate_route.py` (kept here as the peer);
- `cl_names`: the same names through `ica.annotate`, which routes them through the ontology;
- `synonyms`: another spelling of each label from the package's synonym table, also routed.

Sets with a label that has no Cell Ontology term (bastidasponce2019's Ngn3 progenitors) and the
drug-response set are left out: there is nothing to rename them to.

    python benchmarks/renamed_candidates.py [--split test] [--sets a,b] [--out-dir benchmarks/results]
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
from sklearn.metrics import f1_score

import instructcell_agent as ica
from instructcell_agent.api import DEFAULT_INSTRUCTIONS, _choose, _prompt, _score
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.datasets import load_catalog, prompt_fields, read_split, subset_by_names
from instructcell_agent.core_model.io import get_labels, read_h5ad
from instructcell_agent.core_model.labels import normalize_label, ontology_id, ontology_name, ontology_synonyms
from report_io import run_meta, write_report

logger = logging.getLogger("renamed_candidates")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="test")
    p.add_argument("--sets", default="", help="comma-separated set names (default: every annotation set)")
    p.add_argument("--precision", default="float32")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def renamings(own: list[str], learned: set[str]) -> dict[str, list[str]] | None:
    """CL names and another synonym for each label; None when a label has no CL term."""
    terms = [ontology_id(label) for label in own]
    if None in terms:
        return None
    names = [ontology_name(t) for t in terms]
    others = []
    for label, term in zip(own, terms):
        spellings = [s for s in ontology_synonyms(term) if normalize_label(s) != normalize_label(label)]
        # prefer a spelling no training set uses: the user's own words
        fresh = [s for s in spellings if s not in learned]
        others.append((fresh or spellings or [ontology_name(term)])[-1])
    return {"cl_names": names, "synonyms": others}


def scored_as_text(model, cells, cands: list[str], fields: dict[str, str]) -> tuple[list[str], float]:
    """Each cell's candidate, the strings listed in the prompt and scored as they are (no routing:
    what the model does with names it never learned), and the seconds it took."""
    start = time.perf_counter()
    aligned = align_to_vocab(cells, model.vocab)
    texts = [_prompt(model, DEFAULT_INSTRUCTIONS[("annotation", True)], f, cands)
             for f in prompt_fields(cells, None, **fields)]
    picked, _, _ = _choose(_score(model, aligned.X, texts, cands, 64)[0], cands, False)
    return picked, time.perf_counter() - start


def scores(truth_idx: np.ndarray, picked: Sequence[str], cands: list[str], seconds: float) -> dict[str, Any]:
    pred = np.array([cands.index(p) for p in picked])
    return {"accuracy": float((pred == truth_idx).mean()),
            "macro_f1": float(f1_score(truth_idx, pred, average="macro", labels=range(len(cands)))),
            "cells_per_second": len(pred) / seconds}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model(precision=args.precision)
    learned = set(model.labels_for_task("annotation"))
    wanted = [s for s in args.sets.split(",") if s]
    rows: list[dict[str, Any]] = []
    for spec in load_catalog(tasks=("annotation",)):
        if wanted and spec.name not in wanted:
            continue
        cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)[args.split], args.split)
        truth = get_labels(cells, spec.label_key)
        own = sorted(set(model.label_set(spec.name)["labels"]))
        renamed = renamings(own, learned)
        if renamed is None:
            logger.info("%s: skipped (a label without a Cell Ontology term)", spec.name)
            continue
        truth_idx = np.array([own.index(t) for t in truth])
        row: dict[str, Any] = {"set": spec.name, "n_cells": int(cells.n_obs), "candidates": {"own": own, **renamed}}
        kwargs = {"species": spec.species, "tissue": spec.tissue, "sequencing_method": spec.sequencing_method}
        for variant, cands in [("own", own), ("cl_names", renamed["cl_names"]), ("synonyms", renamed["synonyms"])]:
            start = time.perf_counter()
            result = ica.annotate(cells, model=model, candidates=cands, **kwargs)
            row[variant] = {**scores(truth_idx, result.labels, cands, time.perf_counter() - start),
                            "route": result.provenance["candidate_route"]}
        # the peer: the same CL names scored as strings listed in the prompt (no routing)
        picked, seconds = scored_as_text(model, cells, renamed["cl_names"], kwargs)
        row["cl_names_as_text"] = {**scores(truth_idx, picked, renamed["cl_names"], seconds), "route": "text"}
        logger.info("%s: %s", spec.name, {k: round(row[k]["macro_f1"], 3) for k in VARIANTS})
        rows.append(row)

    report = {"meta": {**meta, "split": args.split, "precision": model.model.precision}, "rows": rows}
    lines = ["# Renamed candidates: own labels vs Cell Ontology names vs other synonyms", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {meta['nproc']} CPU cores, load average at start {meta['loadavg']}, LM in "
             f"{model.model.precision}", f"- split: `{args.split}` of every annotation set whose labels all have a "
             "Cell Ontology term; API fixed instruction; candidates in one order for all cells",
             "- `cl_names_as_text` scores the renamed candidates as strings (the route before candidate "
             "routing); `cl_names` and `synonyms` go through `ica.annotate`, which routes them through the "
             "Cell Ontology (core_model/candidate_route.py)",
             "- scoring: `ica.annotate`'s default (`own` and the routed names: the learned labels' decisive "
             "tokens); `cl_names_as_text`: every token of every string", "",
             "| set | cells | " + " | ".join(f"{v} acc / F1" for v in VARIANTS) + " | cells/s own / cl_names |",
             "| --- | --- | " + " | ".join("---" for _ in VARIANTS) + " | --- |"]
    for r in rows:
        cells_ = " | ".join(f"{r[v]['accuracy']:.3f} / {r[v]['macro_f1']:.3f}" for v in VARIANTS)
        lines.append(f"| {r['set']} | {r['n_cells']} | {cells_} | {r['own']['cells_per_second']:.1f} / "
                     f"{r['cl_names']['cells_per_second']:.1f} |")
    lines += ["", "Candidates used:", ""]
    for r in rows:
        lines += [f"- {r['set']}: " + "; ".join(f"{o} -> {c} / {s}" for o, c, s in zip(
            r["candidates"]["own"], r["candidates"]["cl_names"], r["candidates"]["synonyms"]))]
    path = write_report(report, "\n".join(lines) + "\n", args.out_dir, f"renamed_candidates_{args.split}")
    logger.info("wrote %s", path)


VARIANTS = ("own", "cl_names_as_text", "cl_names", "synonyms")

if __name__ == "__main__":
    main()
