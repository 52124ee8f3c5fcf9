"""Rehearsal for fine-tuning without the data the starting checkpoint was trained on.

Why: a user fine-tunes the shipped model on their own cells (`instructcell train --init-from ...
--no-shared`), usually without the shared sets it learned from. Trained on the new cells alone, the
weights drift: 300 steps on scanpy's pbmc68k_reduced took zheng2017's test macro-F1 from 0.805 to
0.671 and kang2018's from 0.849 to 0.679; replaying, 0.772 and 0.827, at the same macro-F1 on the
new study (0.703 against 0.707; benchmarks/results/new_study.md, new_study_no_replay.md). The
checkpoint already carries a sample of every label's training cells, the reference cells
typicality is measured against (core_model/reference.py: about 40 per label, counts on the
vocabulary). Replayed beside the new sets, they keep what the earlier sets taught at no cost in
data the user must find.

The replayed sets take `REPLAY_SHARE` of the language model's batches together (drawn among
themselves as `TrainingData.dataset_probs` draws), so however many sets the model learned, the
user's sets keep the other half (`TrainConfig.replay_share`, CLI `--replay-share`, to change it).

What still forgets is mostly the language model's half: the shipped LM with the fine-tuned
read-out answered zheng2017 and kang2018 within 0.005 of the shipped model, its LM alone lost 0.05
and 0.03. A frozen encoder, a replay share of 0.75 and a lower learning rate lost as much on the
two sets together and learned the new study less (benchmarks/EXPERIMENTS.md, 2026-12-07, 16:23
onwards).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from .corpus import SplitData
from .datasets import PROMPT_FIELDS, DatasetSpec

log = logging.getLogger(__name__)

REPLAY_SHARE = 0.5  # of the language model's batches, for all replayed sets together
REPLAYED = "replayed_from"  # DatasetSpec.extra key marking a replayed set (its value: the checkpoint)


def inherited_sets(start, specs: Sequence[DatasetSpec]) -> list[str]:
    """The label sets `start` learned that a run on `specs` has no data for."""
    names = {s.name for s in specs}
    return [name for name in start.label_sets if name not in names]


def replay_splits(start, names: Sequence[str]) -> list[SplitData]:
    """The reference cells `start` (a LoadedModel) keeps of each label set in `names`, as training
    splits; sets without kept cells (a checkpoint without reference files) are left out."""
    reference = start.reference
    if reference is None:
        log.warning("%s keeps no reference cells: nothing to replay of %s", start.path, list(names))
        return []
    splits = []
    for name in names:
        entry = start.label_sets[name]
        keys = [i for i, (set_name, _) in enumerate(reference.keys) if set_name == name]
        if not keys:
            continue
        rows = np.concatenate([np.arange(reference.offsets[i], reference.offsets[i + 1]) for i in keys])
        labels = np.repeat([reference.keys[i][1] for i in keys], np.diff(reference.offsets)[keys]).astype(object)
        spec = DatasetSpec(name=name, task=entry["task"], path=Path(str(start.path)) / "reference.safetensors",
                           label_key=entry.get("label_key", ""), tissue=entry.get("tissue", ""),
                           species=entry.get("species", ""), sequencing_method=entry.get("sequencing_method", ""),
                           drug=entry.get("drug", ""), classes=tuple(entry["labels"]),
                           extra={REPLAYED: str(start.path)})
        fields = {key: str(entry.get(key, "") or "") for key in PROMPT_FIELDS}
        # no alignment report: the kept cells are on the vocabulary already
        splits.append(SplitData(spec, sp.csr_matrix(reference.cells[rows]), labels, [fields] * len(rows),
                                [f"{name}:reference:{r}" for r in rows], None))
    log.info("replaying %d reference cells of %d inherited sets", sum(s.n_cells for s in splits), len(splits))
    return splits


def is_replayed(split: SplitData) -> bool:
    return REPLAYED in split.spec.extra
