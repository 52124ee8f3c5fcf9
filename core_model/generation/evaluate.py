"""The cpcg evaluation job: one generated cell per real test cell, with that cell's conditions.

Each test cell draws a phrasing (seeded) from the instruction set (default: our held-out
`valid` generation phrasings), filled with its cell type, species, tissue, sequencing method and
condition; the generated set is compared with the real one by :mod:`.metrics`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import LoadedModel
from ..datasets import DatasetSpec, load_catalog
from ..errors import InputFileError
from ..instructions import load_bank
from .conditions import Condition, compose_instruction, phrasings_for
from .data import CONDITION_KEY, GenerationSplit, load_generation_split
from .generator import Generator, load_generator
from .metrics import generation_metrics
from .sampling import sample_counts

log = logging.getLogger(__name__)


def _spec_for(data: Path, split_path: Path | None, label_key: str) -> DatasetSpec:
    """A spec for the file; catalog fields (tissue, species, method) when it is a catalog set."""
    try:
        known = {s.name: s for s in load_catalog()}
    except InputFileError:  # no shared data here: a user's own file
        known = {}
    base = known.get(data.stem)
    return DatasetSpec(name=data.stem, task="annotation", path=data, label_key=label_key, split_path=split_path,
                       tissue=base.tissue if base else "", species=base.species if base else "",
                       sequencing_method=base.sequencing_method if base else "")


def load_real(data: str | Path, split_path: str | Path | None, label_key: str, split: str = "test",
              condition_key: str | None = CONDITION_KEY, max_cells: int | None = None,
              seed: int = 0, vocab: Sequence[str] = ()) -> GenerationSplit:
    """Real cells of one split on `vocab`, optionally subsampled (seeded) to `max_cells`."""
    spec = _spec_for(Path(data), Path(split_path) if split_path else None, label_key)
    real = load_generation_split(spec, vocab, split if split_path else "all", label_key, condition_key)
    if max_cells is not None and real.X.shape[0] > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(real.X.shape[0], max_cells, replace=False))
        real = GenerationSplit(real.name, real.X[keep], [real.conditions[i] for i in keep], real.counts_from,
                               [real.obs_names[i] for i in keep])
    return real


def requests_for(gen: Generator, conditions: Sequence[Condition], phrasings: Sequence[str], seed: int,
                 allow_unseen: bool = True) -> tuple[list[str], list[bool]]:
    """One instruction per real cell (seeded phrasing choice) and whether its condition was seen."""
    rng = random.Random(seed)
    texts, unseen = [], []
    for cond in conditions:
        res = gen.table.resolve(cond.cell_type, cond.species, cond.tissue, cond.condition, cond.sequencing_method)
        if res.unseen and not allow_unseen:
            raise ValueError(res.message)
        texts.append(compose_instruction(rng.choice(phrasings_for(res.condition, phrasings)), res.condition))
        unseen.append(res.unseen)
    return texts, unseen


def understood_rate(gen: Generator, conditions: Sequence[Condition], nearest: Sequence[int]) -> float:
    """Share of cells whose condition vector is nearest to the training condition asked for."""
    intended = [gen.table.resolve(c.cell_type, c.species, c.tissue, c.condition, c.sequencing_method).record
                for c in conditions]
    return float(np.mean([n == i for n, i in zip(nearest, intended)])) if len(nearest) else float("nan")


def evaluate_generation(loaded: LoadedModel, data: str | Path, split_path: str | Path | None, label_key: str, *,
                        instructions: Sequence[str] | None = None, seed: int = 0, split: str = "test",
                        condition_key: str | None = CONDITION_KEY, max_cells: int | None = None) -> dict[str, Any]:
    """Generate one cell per real cell of a split and compute every generation metric.

    Parameters
    ----------
    loaded
        A checkpoint with a generator.
    data, split_path, split
        The labelled .h5ad, its split file and the split to use (whole file without a split file).
    label_key
        obs column with the cell type.
    instructions
        Phrasings to draw from (default: the packaged held-out generation phrasings).
    seed
        Seed of phrasing choice, sampling and metrics.
    condition_key
        obs column with the condition (e.g. ``"condition"``: ctrl / stim), used when present.
    max_cells
        Subsample the real cells (for smoke runs).

    Returns
    -------
    dict
        The metrics, the share of cells whose condition vector was nearest to the right training
        condition, counts of unseen conditions, and provenance.
    """
    gen = load_generator(loaded)
    real = load_real(data, split_path, label_key, split, condition_key, max_cells, seed, loaded.vocab)
    phrasings = list(instructions) if instructions is not None else list(load_bank("generation").valid)
    texts, unseen = requests_for(gen, real.conditions, phrasings, seed)
    start = time.perf_counter()
    counts, nearest = sample_counts(loaded, gen, texts, seed)
    seconds = time.perf_counter() - start
    labels = [c.label() for c in real.conditions]
    result = generation_metrics(real.X, counts, labels, labels, gene_names=loaded.vocab, seed=seed)
    result.update({
        "task": "cpcg", "data": str(data), "split": split if split_path else "all", "label_key": label_key,
        "condition_key": condition_key, "seed": seed, "counts_from": real.counts_from,
        "n_instructions": len(phrasings),
        "instructions_source": "packaged valid phrasings" if instructions is None else "user file",
        "n_unseen_conditions": int(sum(unseen)),
        "understood_rate": understood_rate(gen, real.conditions, nearest),
        "cells_per_second": float(len(texts) / max(seconds, 1e-9)),
        "checkpoint": str(loaded.path) if loaded.path else None,
    })
    return result
