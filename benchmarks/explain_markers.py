"""Answers the known markers gave, explained by those markers: is the explanation faithful?

`explain` explains an answer of the marker route (`annotate_by_markers`, or the gate's answers
for types the model never learned) by each marker's share of the marker score it won on
(interpret/marker_explain.py). The deletion test the model's explanations get
(interpret/faithfulness.py), on the marker route: every cell's 10 top-ranked genes set to zero in
its counts, against 10 random genes the cell expresses (3 draws), and the cells answered again by
`annotate_by_markers` with the same candidates; reported, the mean fall of each cell's probability
for its answer and the share of answers that change. Cells:

- zheng2017's test cells among 'B cell', 'T cell', 'natural killer cell', 'CD14+ Monocyte',
  'Hematopoietic stem cell', 'Megakaryocyte';
- xin2016's test cells among the pancreas's known types (`ica.tissue_cell_types("pancreas")`);
- the reference system's 20-cell liver file among the liver's known types.

    python benchmarks/explain_markers.py [--out-dir benchmarks/results]
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
import scipy.sparse as sp

import instructcell_agent as ica
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.io import read_h5ad
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("explain_markers")
K, N_RANDOM = 10, 3
ZHENG = ["B cell", "T cell", "natural killer cell", "CD14+ Monocyte", "Hematopoietic stem cell", "Megakaryocyte"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def cases() -> list[tuple[str, Any, list[str]]]:
    specs = {s.name: s for s in load_catalog(tasks=("annotation", "compat"))}

    def test(name):
        return subset_by_names(read_h5ad(specs[name].path), read_split(specs[name].split_path)["test"], "test")

    return [("zheng2017 test, six blood names", test("zheng2017_pbmc_sorted"), ZHENG),
            ("xin2016 test, pancreas types", test("xin2016_pancreas_subset"), ica.tissue_cell_types("pancreas")),
            ("liver file, liver types", read_h5ad(specs["he2020_liver_instructcell_demo"].path),
             ica.tissue_cell_types("liver"))]


def without(cells, genes_per_cell: list[list[str]]):
    """A copy of `cells` with each cell's named genes (upper-case symbols) set to zero."""
    out = cells.copy()
    X = sp.lil_matrix(out.X)
    column = {str(g).upper(): j for j, g in enumerate(out.var_names)}
    for i, genes in enumerate(genes_per_cell):
        for g in genes:
            if g in column:
                X[i, column[g]] = 0
    out.X = sp.csr_matrix(X)
    return out


def answer_probability(result, answers: np.ndarray) -> np.ndarray:
    probs = result.probabilities
    return np.array([probs.iloc[i][a] if a in probs.columns else np.nan for i, a in enumerate(answers)])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model()
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for what, cells, cands in cases():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            answered = ica.annotate_by_markers(cells, cands, model=model)
            annotated = answered.to_adata(cells.copy())
            started = time.perf_counter()
            why = ica.explain(annotated, model=model, labels="instructcell_label")
            seconds = time.perf_counter() - started
        found = why.by_markers
        answers = np.asarray(why.groups, dtype=str)
        keep = [list(annotated.obs_names).index(n) for n in why.obs_names]  # the cells explained, in order
        base_cells = cells[keep].copy()
        # each cell's top-K markers by its share of its answer's score (all markers, the model's genes or not)
        order = np.argsort(-found.values, axis=1)[:, :K]
        top = [[found.genes[j] for j in row if found.values[i, j] > 0] for i, row in enumerate(order)]
        symbols = np.array([str(g).upper() for g in base_cells.var_names])
        expressed = [symbols[np.asarray(base_cells.X[i].toarray()).ravel() > 0] for i in range(base_cells.n_obs)]
        randoms = [[list(rng.choice(e, size=min(K, e.size), replace=False)) for e in expressed] for _ in range(N_RANDOM)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            redone = ica.annotate_by_markers(base_cells, cands, model=model)
            after_top = ica.annotate_by_markers(without(base_cells, top), cands, model=model)
            after_random = [ica.annotate_by_markers(without(base_cells, r), cands, model=model) for r in randoms]
        base = answer_probability(redone, answers)
        fall_top = base - answer_probability(after_top, answers)
        fall_random = np.mean([base - answer_probability(r, answers) for r in after_random], axis=0)
        changed_top = np.mean(np.asarray(after_top.labels, dtype=str) != answers)
        changed_random = np.mean([np.mean(np.asarray(r.labels, dtype=str) != answers) for r in after_random])
        row = {"cells": what, "n": len(answers), "candidates": len(cands), "explain_seconds": seconds,
               "fall_top": float(np.nanmean(fall_top)), "fall_random": float(np.nanmean(fall_random)),
               "changed_top": float(changed_top), "changed_random": float(changed_random),
               "same_answers_when_redone": float(np.mean(np.asarray(redone.labels, dtype=str) == answers))}
        rows.append(row)
        logger.info("%s: fall %.3f vs %.3f, changed %.3f vs %.3f", what, row["fall_top"], row["fall_random"],
                    row["changed_top"], row["changed_random"])

    report = {"meta": meta, "k": K, "n_random": N_RANDOM, "rows": rows}
    lines = ["# Marker answers explained by their markers: the deletion test", "", *meta_lines(meta),
             f"- each cell's {K} top genes by its markers' shares (zeroed in its counts, all cells at once) against "
             f"{K} random genes it expresses ({N_RANDOM} draws); the cells answered again by `annotate_by_markers`",
             "- the cells explained are answered again unchanged first (same answers column): the z-scores are "
             "over the cells explained, as `explain` computes them", "",
             "| cells | n | candidates | explain (s) | same answers | p(answer) fall, top / random | ratio | "
             "answers changed, top / random |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['fall_top'] / r['fall_random']:.0f}x" if r["fall_random"] > 0 else "- (random: no fall)"
        lines.append(f"| {r['cells']} | {r['n']} | {r['candidates']} | {r['explain_seconds']:.1f} | "
                     f"{r['same_answers_when_redone']:.3f} | {r['fall_top']:.3f} / {r['fall_random']:.3f} | "
                     f"{ratio} | {r['changed_top']:.3f} / {r['changed_random']:.3f} |")
    print(write_report(report, "\n".join(lines) + "\n", args.out_dir, "explain_markers"))


if __name__ == "__main__":
    main()
