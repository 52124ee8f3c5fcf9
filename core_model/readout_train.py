"""`instructcell train-readout`: fit a checkpoint's linear gene read-out (core_model/readout.py).

Reads only the checkpoint's gene vocabulary, label sets and normalization (not the language
model), so it takes about a minute on CPU for the shipped checkpoint's sets.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from .cell_encoder import log_normalize_csr
from .corpus import load_split
from .datasets import DatasetSpec, load_catalog
from .errors import CheckpointError
from .io import file_sha256
from .readout import DEFAULT_WEIGHT, Readout, fit_readout, save_readout

log = logging.getLogger(__name__)


def train_readout(checkpoint_dir: str | os.PathLike, specs: Sequence[DatasetSpec] | None = None, *,
                  split: str = "train", l2: float = 1.0, answer_weight: float = DEFAULT_WEIGHT,
                  command: str | None = None) -> Readout:
    """Fit the read-out on `split` of every dataset the checkpoint has a label set for and write
    it into the checkpoint directory (readout.safetensors + readout.json, atomically), with each
    set's mean cell over the same cells (`explain`'s default reference).

    `specs` defaults to the shared catalog; label sets without a matching spec are left out
    (their labels get no column, so they are scored by the language model alone)."""
    root = Path(checkpoint_dir)
    for name in ("config.json", "gene_vocab.json", "labels.json"):
        if not (root / name).is_file():
            raise CheckpointError(f"{root} is not a checkpoint directory: missing {name}")
    vocab = json.loads((root / "gene_vocab.json").read_text())
    label_sets = json.loads((root / "labels.json").read_text())
    target_sum = float(json.loads((root / "config.json").read_text())["model"].get("target_sum", 1e4))
    known = {s.name: s for s in (specs if specs is not None else load_catalog())}
    missing = sorted(set(label_sets) - set(known))
    if missing:
        log.warning("no data for label sets %s: their labels are scored by the language model alone", missing)
    blocks, data, means = [], [], {}
    for name, entry in label_sets.items():
        if name not in known:
            continue
        part = load_split(known[name], vocab, split)
        expr = log_normalize_csr(part.X, target_sum).toarray()
        blocks.append((expr, part.labels, list(entry["labels"])))
        means[name] = torch.as_tensor(expr.mean(0), dtype=torch.float32)
        spec = known[name]
        data.append({"name": name, "split": split, "n_cells": part.n_cells, "sha256": file_sha256(spec.path),
                     "split_sha256": file_sha256(spec.split_path) if spec.split_path else None})
        log.info("read-out data: %s, %d cells", name, part.n_cells)
    if not blocks:
        raise CheckpointError(f"none of the checkpoint's label sets {sorted(label_sets)} has data to fit a read-out on")
    labels, weight, bias, info = fit_readout(blocks, len(vocab), l2=l2)
    log.info("read-out fitted: %d labels, train accuracy %.3f", len(labels), info["train_accuracy"])
    readout = Readout(labels, weight, bias, answer_weight,
                      {**info, "data": data, "command": command, "torch": torch.__version__}, means)
    save_readout(root, readout, vocab)
    return readout
