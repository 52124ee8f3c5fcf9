"""`instructcell train-readout`: fit a checkpoint's linear gene read-out (core_model/readout.py).

Reads only the checkpoint's gene vocabulary, label sets and normalization (not the language
model), so it takes about a minute on CPU for the shipped checkpoint's sets.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .cell_encoder import log_normalize_csr
from .corpus import SplitData, load_split
from .datasets import DatasetSpec, load_catalog
from .errors import CheckpointError
from .gene_panels import hvg_cut, variable_gene_order
from .io import file_sha256, read_checkpoint_lists
from .readout import DEFAULT_WEIGHT, Block, Readout, fit_readout, save_readout
from .readout_adapt import ADAPT_KEY
from .reference import pseudo_counts, thin

if TYPE_CHECKING:
    from .checkpoint import LoadedModel

log = logging.getLogger(__name__)


def panel_dropped(counts: sp.spmatrix, rng: np.random.Generator, low: float = 0.05, high: float = 0.8) -> sp.csr_matrix:
    """Cells as a file holding only some of the genes would show them: each cell keeps every gene
    with its own probability, drawn from U(low, high). Normalizing afterwards (over what is left)
    is what `annotate` does with such a file, so the read-out learns those inflated values too."""
    counts = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    share = rng.uniform(low, high, counts.shape[0])
    counts.data = counts.data * (rng.random(counts.nnz) < np.repeat(share, np.diff(counts.indptr)))
    counts.eliminate_zeros()
    return counts


# Shallowest a thinned copy gets: 3% of the cell's counts (zheng2017's median cell: about 45).
THIN_LOW = 0.03


def thinned_copy(counts: sp.spmatrix, rng: np.random.Generator, low: float = THIN_LOW) -> sp.csr_matrix:
    """Cells as a shallower run would give them: each cell's counts (normalised sets' recovered
    from each cell's smallest value, `reference.pseudo_counts`) thinned binomially to its own
    fraction, drawn log-uniformly from [low, 1]. Normalizing afterwards gives the few, large
    values a shallow cell shows the read-out (one count of 25 is 400 per 10,000)."""
    counts = pseudo_counts(counts)
    counts.sort_indices()  # the same cells draw alike however their entries were stored
    fraction = np.exp(rng.uniform(np.log(low), 0.0, counts.shape[0]))
    return sp.csr_matrix(thin(counts, fraction, rng), dtype=np.float32)


def readout_blocks(label_sets: dict[str, Any], known: dict[str, DatasetSpec], vocab: list[str], split: str,
                   target_sum: float, panel_copies: int = 0, seed: int = 0,
                   hvg_copies: int = 0, thin_copies: int = 0
                   ) -> tuple[list[Block], dict[str, torch.Tensor], list[dict[str, Any]]]:
    """What the read-out is fitted on, for every label set with a spec in `known`: the blocks of
    `fit_readout` (log1p(CP10k) of the `split` cells, then `panel_copies` panel-dropped copies of
    them, then `hvg_copies` copies cut to the set's most variable genes, `gene_panels.hvg_cut`,
    then `thin_copies` copies thinned to a shallower depth, `thinned_copy`), each set's mean cell
    (cells as they are) and the data's provenance."""
    rng = np.random.default_rng(seed)
    blocks, means, data = [], {}, []
    for name, entry in label_sets.items():
        if name not in known:
            continue
        spec = known[name]
        part = load_split(spec, vocab, split)
        expr = log_normalize_csr(part.X, target_sum).toarray()
        means[name] = torch.as_tensor(expr.mean(0), dtype=torch.float32)
        views = [expr] + [log_normalize_csr(panel_dropped(part.X, rng), target_sum).toarray()
                          for _ in range(panel_copies)]
        if hvg_copies:
            order = variable_gene_order(part.X, target_sum)
            views += [log_normalize_csr(hvg_cut(part.X, order, rng), target_sum).toarray()
                      for _ in range(hvg_copies)]
        views += [log_normalize_csr(thinned_copy(part.X, rng), target_sum).toarray() for _ in range(thin_copies)]
        blocks.append((np.concatenate(views), np.concatenate([part.labels] * len(views)), list(entry["labels"])))
        data.append({"name": name, "split": split, "n_cells": part.n_cells, "sha256": file_sha256(spec.path),
                     "split_sha256": file_sha256(spec.split_path) if spec.split_path else None})
        log.info("read-out data: %s, %d cells", name, part.n_cells)
    return blocks, means, data


def train_readout(checkpoint_dir: str | os.PathLike, specs: Sequence[DatasetSpec] | None = None, *,
                  split: str = "train", l2: float = 1.0, answer_weight: float = DEFAULT_WEIGHT,
                  panel_copies: int = 0, seed: int = 0, hvg_copies: int = 0, thin_copies: int = 0,
                  command: str | None = None, inherit_from: LoadedModel | None = None,
                  inherited_rows: str = "prior", replayed: Sequence[SplitData] = ()) -> Readout:
    """Fit the read-out on `split` of every dataset the checkpoint has a label set for and write
    it into the checkpoint directory (readout.safetensors + readout.json, atomically), with each
    set's mean cell over the same cells (`explain`'s default reference).

    `specs` defaults to the shared catalog; label sets without a matching spec are left out
    (their labels get no column, so they are scored by the language model alone).
    `panel_copies`: fit also on that many copies of every cell seen through a random gene panel
    (`panel_dropped`, seeded by `seed`), as the language model was trained with panel dropout;
    the mean cells use the cells as they are. Off by default: on valid one copy read files
    holding 10% of the genes better and full files no better, and it cost zheng2017 on test
    (benchmarks/EXPERIMENTS.md, read-out variants).
    `hvg_copies`: fit also on that many copies of every cell cut to its set's most variable genes
    (`gene_panels.hvg_cut`). Off by default: on valid one copy read files cut to 2,000 HVGs better
    and whole files no better, losing on zheng2017 (benchmarks/EXPERIMENTS.md, files cut to their
    most variable genes).
    `thin_copies`: fit also on that many copies of every cell thinned to a shallower depth
    (`thinned_copy`). Off by default: on valid cells thinned to a fifth or a twentieth of their
    counts one copy answered better (pbmc3k, 2,000 genes, most), but whole files as `evaluate`
    asks them a little worse (pbmc3k -0.023 macro-F1); not checked on test
    (benchmarks/EXPERIMENTS.md, shallower cells).
    `inherit_from`: the checkpoint a fine-tuning run started from; label sets without data that it
    has read-out rows for keep them (`with_inherited_rows`). A label such a set shares with a set
    fitted here gets one row for both: `inherited_rows="prior"` fits it centred on the inherited
    row (`fit_readout`'s prior: genes the new data lacks keep their weights), "replace" from zero
    on the new data alone (before 2026-12-07; benchmarks/results/new_study.md). `replayed`: the
    start's reference cells of inherited sets (core_model/replay.py); those of a set sharing a
    label with a fitted set join the fit, so the shared row still reads that set's cells."""
    if inherited_rows not in ("prior", "replace"):
        raise ValueError(f"inherited_rows must be 'prior' or 'replace', got {inherited_rows!r}")
    root = Path(checkpoint_dir)
    vocab, label_sets = read_checkpoint_lists(root)
    target_sum = float(json.loads((root / "config.json").read_text())["model"].get("target_sum", 1e4))
    known = {s.name: s for s in (specs if specs is not None else load_catalog())}
    missing = sorted(set(label_sets) - set(known))
    old = inherit_from.readout if inherit_from is not None else None
    inherited = [name for name in missing if old is not None and name in inherit_from.label_sets]
    if set(missing) - set(inherited):
        log.warning("no data for label sets %s: their labels are scored by the language model alone",
                    sorted(set(missing) - set(inherited)))
    prior = None
    if inherited and inherited_rows == "prior":
        prior = shared_rows(old, {label for name in inherited for label in inherit_from.label_sets[name]["labels"]})
    fitted_labels = {label for name in label_sets if name in known for label in label_sets[name]["labels"]}
    rehearsed = [r for r in replayed if r.spec.name in inherited and fitted_labels & set(r.labels)]
    readout = fitted_readout(label_sets, known, vocab, split, target_sum, l2=l2, answer_weight=answer_weight,
                             panel_copies=panel_copies, seed=seed, hvg_copies=hvg_copies,
                             thin_copies=thin_copies, command=command, prior=prior,
                             extra_blocks=[replay_block(r, label_sets, target_sum) for r in rehearsed])
    if inherited:
        readout = with_inherited_rows(readout, inherit_from, inherited)
    save_readout(root, readout, vocab)
    return readout


def replay_block(split: SplitData, label_sets: dict[str, Any], target_sum: float) -> tuple[Block, dict[str, Any]]:
    """A replayed set's reference cells as a `fit_readout` block, with its provenance."""
    expr = log_normalize_csr(split.X, target_sum).toarray()
    block = (expr, np.asarray(split.labels), list(label_sets[split.spec.name]["labels"]))
    return block, {"name": split.spec.name, "replayed_reference_cells": split.n_cells}


def shared_rows(old: Readout, labels: set[str]) -> dict[str, tuple[torch.Tensor, float]]:
    """The inherited read-out's (row, bias) of each of `labels` it has: `fit_readout`'s prior."""
    return {label: (old.weight[old.column[label]], float(old.bias[old.column[label]]))
            for label in sorted(labels) if label in old.column}


def with_inherited_rows(fitted: Readout, start: LoadedModel, inherited: Sequence[str]) -> Readout:
    """`fitted` plus the starting checkpoint's read-out rows and mean cells for the label sets
    `inherited` from it without data in this fit.

    Why: a fine-tuning run on a user's own sets (`--no-shared`) has no data for the sets it
    inherits, so a refit would leave their labels to the language model alone, losing what the
    read-out adds (zheng2017 test macro-F1 0.764 -> 0.811 for the shipped model). The old rows are
    what a joint refit would give them: each cell's softmax runs over its own set's labels and the
    penalty is per cell, so a set's rows do not depend on other sets' cells. A label a new set
    spells alike keeps the new fit's row (by default fitted centred on the old one and on the
    replayed cells of its set, `train_readout`). The genes are the start's (a run from a checkpoint
    keeps them), so the rows fit; the start's weight curves (by gene coverage, by cell depth) are
    kept where the fit has none."""
    old = start.readout
    extra = list(dict.fromkeys(label for name in inherited for label in start.label_sets[name]["labels"]
                               if label in old.column and label not in fitted.column))
    rows = [old.column[label] for label in extra]
    info = {**fitted.info, "inherited_sets": list(inherited),
            "inherited_from": str(start.path) if start.path else None}
    if not fitted.weight_curve and old.info.get(ADAPT_KEY):  # the inherited coverage curve was fitted with it
        info[ADAPT_KEY] = True
    means = {**{n: old.mean_cells[n] for n in inherited if n in old.mean_cells}, **fitted.mean_cells}
    log.info("read-out rows of %d labels (sets %s) kept from the starting checkpoint", len(extra), list(inherited))
    return Readout(fitted.labels + extra, torch.cat([fitted.weight, old.weight[rows].to(fitted.weight.dtype)]),
                   torch.cat([fitted.bias, old.bias[rows].to(fitted.bias.dtype)]), fitted.answer_weight, info,
                   means, fitted.weight_curve or list(old.weight_curve),
                   depth_curve=fitted.depth_curve or list(old.depth_curve),
                   set_depth_curves=fitted.set_depth_curves or dict(old.set_depth_curves))


def fitted_readout(label_sets: dict[str, Any], known: dict[str, DatasetSpec], vocab: list[str], split: str,
                   target_sum: float, *, l2: float = 1.0, answer_weight: float = DEFAULT_WEIGHT,
                   panel_copies: int = 0, seed: int = 0, hvg_copies: int = 0, thin_copies: int = 0,
                   command: str | None = None, prior: dict[str, tuple[torch.Tensor, float]] | None = None,
                   extra_blocks: Sequence[tuple[Block, dict[str, Any]]] = ()) -> Readout:
    """The read-out `train_readout` writes, fitted in memory (`readout_blocks`, `fit_readout`);
    `extra_blocks` (block, provenance) join the fit without a mean cell (`replay_block`)."""
    blocks, means, data = readout_blocks(label_sets, known, vocab, split, target_sum, panel_copies, seed, hvg_copies,
                                         thin_copies)
    if not blocks:
        raise CheckpointError(f"none of the checkpoint's label sets {sorted(label_sets)} has data to fit a read-out on")
    blocks += [block for block, _ in extra_blocks]
    data = data + [source for _, source in extra_blocks]
    labels, weight, bias, info = fit_readout(blocks, len(vocab), l2=l2, prior=prior)
    # fit_readout counts the rows it fitted (cells and their panel copies); report the cells
    info = {**info, "n_cells": sum(d.get("n_cells", 0) for d in data), "n_fitted_rows": info["n_cells"],
            "panel_copies": panel_copies, "hvg_copies": hvg_copies, "thin_copies": thin_copies, "seed": seed}
    log.info("read-out fitted: %d labels, train accuracy %.3f", len(labels), info["train_accuracy"])
    return Readout(labels, weight, bias, answer_weight,
                   {**info, "data": data, "command": command, "torch": torch.__version__}, means)
