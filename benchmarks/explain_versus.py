"""Why A rather than B: do contrastive explanations (`explain(..., versus="runner-up")`) name what
tells a cell's answer from its runner-up better than the plain explanation of the answer?

Each set's test cells are explained twice over the set's labels (the model's answers, LM in
float32): plainly (log p(answer)) and against each cell's runner-up (log p(answer) - log p(runner-up)),
grouped 'A vs B'. For every pair with at least `--min-cells` cells, the same cells' top 10 genes of
both rankings are compared with:

- the genes that tell A from B in the training cells, independently of the model: scanpy's wilcoxon
  test of the train split's A cells against its B cells (true labels), top 50;
- PanglaoDB: the markers listed for A and not for B (`interpret/markers.contrast_markers`; pairs
  whose labels map to the same database types have none);
- the deletion test on the pair itself: zeroing each cell's top 10 genes of either ranking, the drop
  of log p(A) - log p(B), against 10 random expressed genes (3 draws).

    python benchmarks/explain_versus.py [--datasets pbmc3k_seurat ...] [--min-cells 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import instructcell_agent as ica
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.cell_encoder import log_normalize_csr
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.io import read_h5ad
from instructcell_agent.interpret.aggregate import label_means, rankings
from instructcell_agent.interpret.api import explain
from instructcell_agent.interpret.attribution import RUNNER_UP
from instructcell_agent.interpret.faithfulness import deletion_test
from instructcell_agent.interpret.markers import (contrast_markers, load_marker_db, precision_at_k,
                                                  wilcoxon_pair_rankings)
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("explain_versus")
DATASETS = ("pbmc3k_seurat", "zheng2017_pbmc_sorted", "kang2018_pbmc_ifnb")
K, TRAIN_TOP = 10, 50


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--min-cells", type=int, default=5, help="pairs with fewer cells are left out of the table")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--stem", default="explain_versus")
    return p.parse_args(argv)


def train_pair_genes(model, spec, pairs: dict[str, tuple[str, str]]) -> dict[str, list[str]]:
    """Top genes of the train split's A cells against its B cells (wilcoxon), per pair."""
    cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)["train"], "train")
    log_expr = log_normalize_csr(align_to_vocab(cells, model.vocab).X)
    return wilcoxon_pair_rankings(log_expr, model.vocab, cells.obs[spec.label_key].astype(str).to_numpy(), pairs,
                                  n_genes=TRAIN_TOP)


def _pair_rows(model, spec, plain, rather, mode: str, runner_up: dict[str, str], min_cells: int, db,
               train: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One row per pair of `rather` with at least `min_cells` cells: both rankings of its cells scored."""
    keep = np.asarray([plain.obs_names.index(n) for n in rather.obs_names])
    # the plain ranking of the same cells, grouped by the same pairs
    plain_means = label_means(plain.cell_scores()[keep], rather.groups, model.vocab, order=list(rather.contrasts))
    ours = {name: genes for name, (genes, _) in rankings(rather.means, K, positive_only=True).items()}
    theirs = {name: genes for name, (genes, _) in rankings(plain_means, K, positive_only=True).items()}
    score = lambda genes, wanted: (precision_at_k(genes, {g.upper() for g in wanted}, K)  # noqa: E731
                                   if wanted else float("nan"))
    rows = []
    for name, (a, b) in rather.contrasts.items():
        cells = np.asarray(rather.obs_names, dtype=object)[rather.groups == name]
        if len(cells) < min_cells:
            continue
        known = contrast_markers(db, a, b, rather.species)
        reference = set(train.get(name, []))
        rows.append({"dataset": spec.name, "mode": mode, "pair": name, "n_cells": len(cells),
                     "runner_up_share": float(np.mean([runner_up[c] == b for c in cells])),
                     "versus_top": ours.get(name, []), "plain_top": theirs.get(name, []),
                     "train_wilcoxon_top": train.get(name, [])[:K],
                     "train_precision_versus": score(ours.get(name, []), reference),
                     "train_precision_plain": score(theirs.get(name, []), reference),
                     "n_markers_a_not_b": len(known) if known is not None else None,
                     "marker_precision_versus": score(ours.get(name, []), known),
                     "marker_precision_plain": score(theirs.get(name, []), known)})
    return rows


def _deletion(model, plain, rather) -> tuple[float, float, float, int]:
    """Mean drops of the pair's log-odds: rather's top 10, plain's top 10 of the same cells, random."""
    keep = np.asarray([plain.obs_names.index(n) for n in rather.obs_names])
    by_versus = deletion_test(model.model, rather.attributions, k=K, n_random=1)
    swapped = dataclasses.replace(rather.attributions, values=plain.attributions.values[keep])
    by_plain = deletion_test(model.model, swapped, k=K, n_random=1)
    return (by_versus.mean_logodds_drop_top, by_plain.mean_logodds_drop_top, by_versus.mean_logodds_drop_random,
            by_versus.n_cells)


def run_set(model, spec, min_cells: int, db) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pairs and deletion drops of one set: each cell against its runner-up, then against every label."""
    cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)["test"], "test")
    labels = [str(l) for l in model.label_set(spec.name)["labels"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = explain(cells, model=model, dataset=spec.name, compare_wilcoxon=False)
        runs = {v: explain(cells, model=model, dataset=spec.name, versus=v, compare_wilcoxon=False)
                for v in [RUNNER_UP, *labels]}
    first = runs[RUNNER_UP]
    same = np.array_equal(plain.attributions.target, first.attributions.target) and plain.obs_names == first.obs_names
    if not same:
        raise RuntimeError(f"{spec.name}: the runs explained different answers")
    names = np.asarray(first.attributions.explained, dtype=object)
    runner_up = dict(zip(first.obs_names, names[first.attributions.versus]))
    pairs = {name: pair for run in runs.values() for name, pair in run.contrasts.items()}
    train = train_pair_genes(model, spec, pairs)
    rows, deletion = [], []
    for v, rather in runs.items():
        mode = "runner-up" if v == RUNNER_UP else "named"
        rows += _pair_rows(model, spec, plain, rather, mode, runner_up, min_cells, db, train)
        top, plain_top, random, n = _deletion(model, plain, rather)
        deletion.append({"dataset": spec.name, "versus": v, "n_cells": n, "drop_versus_top": top,
                         "drop_plain_top": plain_top, "drop_random": random,
                         "seconds": rather.provenance["seconds"]})
    logger.info("%s: %d pairs of %d+ cells; plain explain %.0f s", spec.name, len(rows), min_cells,
                plain.provenance["seconds"])
    return rows, deletion


def _mean(rows: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in rows if r[key] == r[key]]  # NaN: nothing to score against
    return f"{np.mean(values):.2f} ({len(values)} pairs)" if values else "-"


def _drops(deletion: list[dict[str, Any]], key: str) -> float:
    """Cell-weighted mean over runs."""
    return float(np.average([d[key] for d in deletion], weights=[d["n_cells"] for d in deletion]))


def render(report: dict[str, Any]) -> str:
    rows = report["rows"]
    groups = {"each cell against its runner-up": [r for r in rows if r["mode"] == "runner-up"],
              "against a named label, every pair": [r for r in rows if r["mode"] == "named"],
              "against a named label that is the runner-up of under half the pair's cells":
                  [r for r in rows if r["mode"] == "named" and r["runner_up_share"] < 0.5]}
    lines = ["# Why A rather than B: contrastive explanations", "", *meta_lines(report["meta"]),
             f"- test cells, the model's answers over each set's labels, LM in float32; `explain(..., versus=B)` with "
             f"B each cell's runner-up, then each of the set's labels in turn; pairs with at least "
             f"{report['min_cells']} cells; top {K} genes of the contrast's ranking (versus) and of the plain "
             "explanation of the same cells (plain)",
             f"- train wilcoxon: top {TRAIN_TOP} genes of the train split's A cells against its B cells (true labels); "
             "PanglaoDB: markers of A not listed for B", "",
             "## Precision at 10, means over pairs (versus / plain)", "",
             "| pairs | train wilcoxon A vs B | PanglaoDB markers of A not B |", "| --- | --- | --- |"]
    for what, part in groups.items():
        lines.append(f"| {what} | {_mean(part, 'train_precision_versus')} / {_mean(part, 'train_precision_plain')} | "
                     f"{_mean(part, 'marker_precision_versus')} / {_mean(part, 'marker_precision_plain')} |")
    lines += ["", "## Deletion on the pair: mean drop of log p(A) - log p(B) after zeroing each cell's top 10 genes",
              "", "| dataset | versus | cells | versus top 10 | plain top 10 | 10 random |",
              "| --- | --- | --- | --- | --- | --- |"]
    for d in report["deletion"]:
        if d["versus"] == RUNNER_UP:
            lines.append(f"| {d['dataset']} | runner-up | {d['n_cells']} | {d['drop_versus_top']:.2f} | "
                         f"{d['drop_plain_top']:.2f} | {d['drop_random']:.2f} |")
    for dataset in dict.fromkeys(d["dataset"] for d in report["deletion"]):
        named = [d for d in report["deletion"] if d["dataset"] == dataset and d["versus"] != RUNNER_UP]
        lines.append(f"| {dataset} | each label ({len(named)} runs, cell-weighted) | "
                     f"{sum(d['n_cells'] for d in named)} | {_drops(named, 'drop_versus_top'):.2f} | "
                     f"{_drops(named, 'drop_plain_top'):.2f} | {_drops(named, 'drop_random'):.2f} |")
    lines += ["", "## Pairs", "",
              "| dataset | versus | pair | cells | B is runner-up | P@10 train wilcoxon, versus / plain | "
              "P@10 PanglaoDB A not B, versus / plain | versus top 5 | plain top 5 | train wilcoxon top 5 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    fmt = lambda x: "-" if x != x else f"{x:.1f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['mode']} | {r['pair'].replace('|', '/')} | {r['n_cells']} | "
                     f"{r['runner_up_share']:.2f} | "
                     f"{fmt(r['train_precision_versus'])} / {fmt(r['train_precision_plain'])} | "
                     f"{fmt(r['marker_precision_versus'])} / {fmt(r['marker_precision_plain'])} | "
                     f"{', '.join(r['versus_top'][:5])} | {', '.join(r['plain_top'][:5])} | "
                     f"{', '.join(r['train_wilcoxon_top'][:5])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model(precision="float32")
    db = load_marker_db("panglaodb")
    specs = {s.name: s for s in load_catalog(tasks=("annotation",))}
    rows, deletion = [], []
    for name in args.datasets:
        pairs, dropped = run_set(model, specs[name], args.min_cells, db)
        rows += pairs
        deletion += dropped
    report = {"meta": meta, "min_cells": args.min_cells, "rows": rows, "deletion": deletion}
    print(write_report(report, render(report), args.out_dir, args.stem))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
