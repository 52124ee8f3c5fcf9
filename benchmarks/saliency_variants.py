"""Which attribution reference and per-label aggregation recover known markers? (valid split)

The shipped saliency is gradient x input: the first-order change of the label's log-probability
from an all-zero cell to this one. This script asks whether another reference or another way of
pooling cells ranks more PanglaoDB markers in each label's top 10, before anything is changed in
`explain`. For every dataset it takes the plain gradient of each valid cell's true-label
log-probability once (``explain(method="gradient")``, float32) and forms, offline:

- reference: ``zero`` (gradient x input, the shipped default) or ``train_mean`` (gradient x
  (input - the mean train cell): why this label rather than an average cell of the set), or
  ``train_mean_above``: the same attributions, but a gene counts in a cell only where the cell
  expresses it above the mean cell (its evidence by presence, not by absence; with the zero
  reference "above the reference" and "expressed" are the same rule);
- per-cell scaling: ``none`` (the shipped default), ``l1`` (attributions / their absolute sum)
  or ``minmax`` (supporting attributions scaled to [0, 1], as ``explain(normalize="minmax")``);
- per-label pooling: ``mean`` (the shipped default) or ``median`` over the label's cells.

Unexpressed genes score 0 everywhere, as in `explain`. Precision at 10 is the explain
benchmark's (PanglaoDB, our label mapping, positive scores only). Only `valid` is read, so a
choice made here can still be checked on `test` by ``explain_benchmark.py``.

    python benchmarks/saliency_variants.py --out-dir /tmp/salvar

Writes ``saliency_variants.md`` and ``saliency_variants.json`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.cell_encoder import log_normalize_csr
from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.datasets import load_catalog, read_split, shared_root, subset_by_names
from instructcell_agent.core_model.io import get_labels, read_h5ad
from instructcell_agent import default_checkpoint_path
from instructcell_agent.interpret.aggregate import cell_scores, rankings
from instructcell_agent.interpret.api import explain
from instructcell_agent.interpret.markers import load_marker_db, marker_report
from report_io import run_meta, write_report

logger = logging.getLogger("saliency_variants")
DATASETS = ("zheng2017_pbmc_sorted", "xin2016_pancreas_subset", "bastidasponce2019_pancreas_e155")
REFERENCES = ("zero", "train_mean", "train_mean_above")
SCALINGS, POOLINGS = ("none", "l1", "minmax"), ("mean", "median")
K = 10


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=default_checkpoint_path())
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def scale_cells(values: np.ndarray, inputs: np.ndarray, how: str) -> np.ndarray:
    """Per-cell scores: `explain`'s own ("none", "minmax"), or divided by their absolute sum ("l1")."""
    if how != "l1":
        return cell_scores(values, inputs, how)
    scores = cell_scores(values, inputs, "none")
    return scores / (np.abs(scores).sum(1, keepdims=True) + 1e-12)


def pooled(scores: np.ndarray, groups: np.ndarray, labels: list[str], genes: list[str], how: str) -> pd.DataFrame:
    present = [l for l in labels if (groups == l).any()]
    pool = np.mean if how == "mean" else np.median
    return pd.DataFrame(np.stack([pool(scores[groups == l], axis=0) for l in present]), index=present, columns=genes)


def precision(means: pd.DataFrame, db: Any, species: str | None) -> float:
    ranked = {label: names for label, (names, _) in rankings(means, K, positive_only=True).items()}
    values = marker_report(ranked, db, species, K)["precision_at_k"].astype(float)
    return float(np.nanmean(values))


def run_dataset(spec: Any, loaded: Any, db: Any) -> dict[str, float]:
    adata = read_h5ad(spec.path)
    split = read_split(spec.split_path)
    cells = subset_by_names(adata, split["valid"], "valid").copy()
    truth = np.asarray(get_labels(cells, spec.label_key), dtype=str)
    labels = list(loaded.label_sets[spec.name]["labels"])
    species = spec.species if spec.species in ("human", "mouse") else None
    logger.info("== %s: gradients of %d valid cells", spec.name, cells.n_obs)
    result = explain(cells, model=loaded, labels=truth, candidates=labels, method="gradient",
                     compare_wilcoxon=False, species=species)
    grad, x = result.attributions.values, result.attributions.inputs
    train = subset_by_names(adata, split["train"], "train")
    train_mean = np.asarray(log_normalize_csr(align_to_vocab(train, loaded.vocab).X).mean(0)).ravel()
    references = {"zero": np.zeros_like(train_mean), "train_mean": train_mean, "train_mean_above": train_mean}
    out = {}
    for ref, scale, pool in itertools.product(REFERENCES, SCALINGS, POOLINGS):
        shift = x - references[ref]
        # `cell_scores` counts a gene where its second argument is > 0: expressed, or above the mean cell.
        scores = scale_cells(grad * shift, shift if ref.endswith("_above") else x, scale)
        out[f"{ref}/{scale}/{pool}"] = precision(pooled(scores, truth, labels, list(loaded.vocab), pool), db, species)
    return out


def render_markdown(report: dict[str, Any]) -> str:
    meta, rows = report["meta"], report["precision"]
    names = list(rows)
    lines = ["# Attribution variants: PanglaoDB precision at 10 on the valid split", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {meta['nproc']} CPU cores, torch threads {meta['torch_threads']}",
             f"- checkpoint: `{meta['checkpoint']}`; shared data: {meta['shared']}",
             "- variant = reference / per-cell scaling / per-label pooling; `zero/none/mean` is what "
             "`explain` ships (gradient x input, raw mean)", "",
             "| variant | " + " | ".join(n.split("_")[0] for n in names) + " |", "|" + " --- |" * (len(names) + 1)]
    for variant in rows[names[0]]:
        lines.append(f"| `{variant}` | " + " | ".join(f"{rows[n][variant]:.3f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    torch.manual_seed(0)
    loaded = load_checkpoint(args.checkpoint, "cpu")
    specs = {s.name: s for s in load_catalog()}
    db = load_marker_db("panglaodb")
    if db is None:
        raise SystemExit("PanglaoDB not found under the shared data (INSTRUCTCELL_SHARED)")
    cmd = [sys.executable.rsplit("/", 1)[-1], *sys.argv] if argv is None else ["saliency_variants.py", *argv]
    report: dict[str, Any] = {"meta": {**run_meta(shlex.join(cmd)), "checkpoint": str(args.checkpoint),
                                       "shared": str(shared_root())}, "precision": {}}
    for name in args.datasets.split(","):
        report["precision"][name] = run_dataset(specs[name], loaded, db)
        path = write_report(report, render_markdown(report), args.out_dir, "saliency_variants")
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
