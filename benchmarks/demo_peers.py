"""How good is `make demo`'s agreement? Peers on the same pbmc68k_reduced cells, the same genes.

The demo file holds 765 genes, 545 of them in the model's vocabulary, so its agreement with
`bulk_labels` (README, Quick start) is far below the test-split accuracy and needs a yardstick.
The peers here get exactly what the model gets: the cells put on the model's gene vocabulary by
the same alignment, restricted to the genes the demo file has, log1p(CP10k) over those genes
(the model's own input transform). They are trained on zheng2017_pbmc_sorted's train+valid cells
(the sorted populations `bulk_labels` name) and predict every pbmc68k_reduced cell; our model
scores the ten `bulk_labels` names as candidates, as the demo's second run does (labels of two
training sets mixed, so through the Cell Ontology route of core_model/candidate_route.py).

zheng2017 has no "Dendritic" label (it has "CD4+ T Helper2" instead), so the peers cannot name
the file's dendritic cells; agreement is reported over all cells and over the cells of the nine
shared labels.

    python benchmarks/demo_peers.py [--precision float32] [--out-dir benchmarks/results]

Needs the shared data (zheng2017) and the `bench` extra for CellTypist.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import anndata as ad
import numpy as np
import scanpy as sc

import instructcell_agent as ica
from instructcell_agent.core_model.alignment import AlignedData, align_to_vocab
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.io import get_labels, read_h5ad
from instructcell_agent.core_model.labels import LabelMapper
from instructcell_agent.core_model.precision import PRECISIONS
from instructcell_agent.core_model.values import detect_value_type
from baselines import log_cp10k, run_baselines
from report_io import run_meta, write_report

logger = logging.getLogger("demo_peers")
REFERENCE = "zheng2017_pbmc_sorted"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--baselines", default="celltypist,logreg,knn")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def on_genes(aligned: AlignedData, vocab: Sequence[str], keep: np.ndarray, obs: Any) -> ad.AnnData:
    """Aligned cells restricted to the `keep` vocabulary columns, log1p(CP10k) over those genes."""
    X = aligned.X[:, keep]  # linear scale already (the alignment undid any log)
    out = ad.AnnData(X=log_cp10k(X, detect_value_type(X)), obs=obs.copy())
    out.var_names = [str(vocab[i]) for i in keep]
    return out


def agreement(predicted: Sequence[str], known: np.ndarray, mask: np.ndarray) -> float:
    """Share of `mask` cells whose answer names their known label (exact or an ontology synonym)."""
    mapper = LabelMapper(tuple(sorted(set(known))))
    hits = np.array([mapper.map(str(p)) == k for p, k in zip(predicted, known)])
    return float(hits[mask].mean())


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    meta = run_meta(shlex.join(["python", *sys.argv]))  # load average before this run adds to it
    demo = sc.datasets.pbmc68k_reduced()
    known = demo.obs["bulk_labels"].astype(str).to_numpy()
    model = ica.load_model(precision=args.precision)
    vocab = list(model.vocab)
    demo_aligned = align_to_vocab(demo, vocab, use_raw=True)
    # the vocabulary genes the demo file has (an unmatched gene is zero in every cell)
    keep = np.flatnonzero(np.asarray((demo_aligned.X != 0).sum(0)).ravel() > 0)

    spec = next(s for s in load_catalog() if s.name == REFERENCE)
    full = read_h5ad(spec.path)
    split = read_split(spec.split_path)
    train = subset_by_names(full, list(split["train"]) + list(split["valid"]), "train+valid")
    train_labels = sorted(set(get_labels(full, spec.label_key)))
    train_p = on_genes(align_to_vocab(train, vocab), vocab, keep, train.obs)
    demo_p = on_genes(demo_aligned, vocab, keep, demo.obs)
    demo_p.obs[spec.label_key] = known  # truth column for the baselines' own scoring (not used below)

    shared = np.isin(known, train_labels)
    rows: list[dict[str, Any]] = []
    names = [n for n in args.baselines.split(",") if n]
    for name, result in run_baselines(train_p, demo_p, spec.label_key, train_labels, names).items():
        rows.append({"method": name, "trained_on": f"{REFERENCE} train+valid, {len(keep)} genes",
                     "agreement_all": agreement(result.predicted, known, np.ones_like(shared)),
                     "agreement_shared_labels": agreement(result.predicted, known, shared),
                     "cells_per_second": result.cells_per_second})

    candidates = sorted(set(known))
    start = time.perf_counter()
    ours = ica.annotate(demo, model=model, use_raw=True, candidates=candidates)
    seconds = time.perf_counter() - start
    rows.append({"method": f"ours (scored, {ours.provenance['candidate_route']} route, LM in {model.model.precision})",
                 "trained_on": "shipped checkpoint",
                 "agreement_all": agreement(ours.labels, known, np.ones_like(shared)),
                 "agreement_shared_labels": agreement(ours.labels, known, shared),
                 "cells_per_second": demo.n_obs / seconds})
    for r in rows:
        logger.info("%s: agreement %.3f (shared labels %.3f)", r["method"], r["agreement_all"],
                    r["agreement_shared_labels"])

    report = {"meta": {**meta, "n_cells": int(demo.n_obs),
                       "n_genes_used": int(len(keep)), "n_shared_label_cells": int(shared.sum())},
              "rows": rows}
    lines = ["# Demo yardstick: pbmc68k_reduced, ours vs peers on the same cells and genes", "",
             f"- command: `{report['meta']['command']}`", f"- date: {report['meta']['date']}",
             f"- machine: {report['meta']['nproc']} CPU cores, load average at start {report['meta']['loadavg']}",
             f"- cells: all {demo.n_obs} of pbmc68k_reduced (`adata.raw`, log-normalized); genes: the "
             f"{len(keep)} of its 765 in the model's vocabulary, log1p(CP10k) over them for the peers",
             f"- peers trained on {REFERENCE} train+valid; agreement = answer names the cell's `bulk_labels` "
             f"(exact or Cell Ontology synonym); shared labels = the {int(shared.sum())} cells whose label "
             f"{REFERENCE} also has (all but Dendritic)", "",
             "| method | agreement, all cells | agreement, shared labels | cells/s |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['method']} | {r['agreement_all']:.3f} | {r['agreement_shared_labels']:.3f} | "
              f"{r['cells_per_second']:.0f} |" for r in rows]
    path = write_report(report, "\n".join(lines) + "\n", args.out_dir, "demo_peers")
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
