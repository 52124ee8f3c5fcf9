"""Stratified train / valid / test splits of a labelled file, in the shared splits' format.

Training on your own set (`instructcell train --catalog`) needs a split file: {"train": [obs_names],
"valid": [...], "test": [...]}. This draws one per label, so every label keeps its share in each
part (the shared sets' splits are 80 / 10 / 10, seed 42), and a label too rare to split stays in
train rather than leave the model nothing to learn it from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

MIN_CELLS_TO_SPLIT = 3  # a label with fewer cells keeps them all in train


def stratified_split(obs_names: Sequence[str], labels: Sequence[Any], *, valid: float = 0.1, test: float = 0.1,
                     seed: int = 42) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Split cells per label into train / valid / test; returns the split and a report.

    Each label with at least `MIN_CELLS_TO_SPLIT` cells gives round(n * valid) cells to valid and
    round(n * test) to test (at least one each when the fraction is above zero), keeping at least
    one in train; rarer labels stay whole in train. Cells without a label are left out of every
    part. Lists keep the file's cell order.
    """
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise ValueError(f"valid and test must be fractions in [0, 1) that leave cells for train, got {valid}, {test}")
    names = pd.Index(list(map(str, obs_names)))
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()[:5].tolist()
        raise ValueError(f"obs_names must be unique to name cells in a split; repeated: {dup} "
                         "(adata.obs_names_make_unique() fixes that)")
    labels = pd.Series(list(labels), dtype=object)
    if len(labels) != len(names):
        raise ValueError(f"{len(labels)} labels for {len(names)} cells")
    rng = np.random.default_rng(seed)
    part = np.full(len(names), "", dtype=object)
    kept_whole = []
    labelled = labels[labels.notna()].astype(str)
    for label, rows in labelled.groupby(labelled).groups.items():
        rows = np.asarray(rows)
        if len(rows) < MIN_CELLS_TO_SPLIT:
            part[rows] = "train"
            kept_whole.append(str(label))
            continue
        rows = rows[rng.permutation(len(rows))]
        n_test = _share(len(rows), test)
        n_valid = _share(len(rows), valid)
        part[rows[:n_test]] = "test"
        part[rows[n_test:n_test + n_valid]] = "valid"
        part[rows[n_test + n_valid:]] = "train"
    split = {name: names[part == name].tolist() for name in ("train", "valid", "test")}
    report = {"n_cells": {k: len(v) for k, v in split.items()}, "unlabelled_cells": int(labels.isna().sum()),
              "labels_kept_in_train": kept_whole, "valid": valid, "test": test, "seed": seed}
    return split, report


def _share(n: int, fraction: float) -> int:
    """round(n * fraction), at least 1 when fraction > 0, leaving at least one cell for train."""
    if fraction <= 0:
        return 0
    return int(min(max(1, round(n * fraction)), max(0, (n - 1) // 2)))
