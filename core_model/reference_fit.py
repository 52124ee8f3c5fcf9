"""`instructcell fit-reference`: keep a checkpoint's reference cells (core_model/reference.py).

Reads only the checkpoint's gene vocabulary and label sets, and each set's training cells: a few
seconds for the shipped checkpoint's sets.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .corpus import load_split
from .datasets import DatasetSpec, load_catalog
from .errors import CheckpointError
from .io import file_sha256, read_checkpoint_lists
from .reference import INFORMATIVE_GENES, PER_LABEL, Reference, fit_reference, merged, save_reference

if TYPE_CHECKING:
    from .checkpoint import LoadedModel

log = logging.getLogger(__name__)


def fit_checkpoint_reference(checkpoint_dir: str | os.PathLike, specs: Sequence[DatasetSpec] | None = None, *,
                             split: str = "train", per_label: int = PER_LABEL, seed: int = 0,
                             n_informative: int = INFORMATIVE_GENES, command: str | None = None,
                             inherit_from: LoadedModel | None = None) -> Reference:
    """Keep the reference cells of every label set the checkpoint has data for (`specs`, default
    the shared catalog) from its `split` cells and write them into the checkpoint directory.
    `inherit_from`: the checkpoint a fine-tuning run started from; label sets without data that it
    holds reference cells for keep them."""
    root = Path(checkpoint_dir)
    vocab, label_sets = read_checkpoint_lists(root)
    known = {s.name: s for s in (specs if specs is not None else load_catalog())}
    parts, data = [], []
    for name in label_sets:
        if name not in known:
            continue
        part = load_split(known[name], vocab, split)
        parts.append((name, part.X, part.labels))
        data.append({"name": name, "split": split, "n_cells": part.n_cells, "sha256": file_sha256(known[name].path)})
    old = inherit_from.reference if inherit_from is not None else None
    inherited = [n for n in label_sets if n not in known and old is not None and any(k[0] == n for k in old.keys)]
    if not parts and not inherited:
        raise CheckpointError(f"none of the checkpoint's label sets {sorted(label_sets)} has data to keep cells of")
    left = sorted(set(label_sets) - set(known) - set(inherited))
    if left:
        log.warning("no data for label sets %s: their labels get no typicality", left)
    tissues = {name: str(entry.get("tissue", "")) for name, entry in label_sets.items()}
    reference = fit_reference(parts, len(vocab), per_label, seed, {"data": data, "command": command}, tissues,
                              n_informative)
    if inherited:
        reference = merged(reference, old, inherited)
    save_reference(root, reference, vocab)
    log.info("reference: %d labels, %d cells kept", len(reference.keys), reference.cells.shape[0])
    return reference
