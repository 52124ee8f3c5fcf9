"""What each group of cells was answered: a result's composition by an obs column (clusters,
samples, conditions).

Most analyses name cell types cluster by cluster. The model answers cell by cell; a cluster's
composition then says which population it is and how mixed: 'leiden 3: CD14+ Mono 0.92, runner-up
FCGR3A+ Mono 0.05'. Nothing is overridden: giving each cluster its majority answer erased what the
per-cell answers got right on every canonical split (benchmarks/EXPERIMENTS.md, majority voting).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .core_model.errors import InputFileError
from .core_model.labels import UNASSIGNED

# More groups than this is a column of per-cell values (barcodes, scores), not a grouping.
MAX_GROUPS = 1000
COLUMNS = ["n_cells", "answer", "share", "runner_up", "runner_up_share", "mean_confidence", "not_labelled"]


@dataclass(frozen=True)
class Composition:
    """One row per group (in the column's category order, else sorted): its cells, the most
    frequent answer and its share of the group's cells, the runner-up, the mean confidence of
    the labelled cells, and the cells not labelled (no counts on the model's genes, or
    'Unassigned'). Cells without a group are counted in `n_ungrouped`."""

    key: str
    table: pd.DataFrame
    n_ungrouped: int = 0
    what: str = "answers"  # or "resolved answers" (`resolve_at`)

    def summary(self, max_groups: int = 50) -> str:
        lines = [f"{self.what} by obs[{self.key!r}] (most frequent answer, its share of the group; runner-up):"]
        for group, row in self.table.head(max_groups).iterrows():
            answer = row["answer"] if row["answer"] is not None else "no answer"
            line = f"  {group}: {answer} {row['share']:.2f} of {int(row['n_cells']):,}"
            if row["runner_up"] is not None:
                line += f"; {row['runner_up']} {row['runner_up_share']:.2f}"
            if row["not_labelled"]:
                line += f"; {int(row['not_labelled']):,} not labelled"
            lines.append(line)
        if len(self.table) > max_groups:
            lines.append(f"  ... and {len(self.table) - max_groups:,} more groups")
        if self.n_ungrouped:
            lines.append(f"  ({self.n_ungrouped:,} cells without a value in obs[{self.key!r}] left out)")
        return "\n".join(lines)

    def to_uns(self) -> dict[str, Any]:
        """For `uns`: by column (group names may hold '/', which .h5ad keys cannot), a missing
        answer as '' and a missing mean confidence as NaN (an .h5ad stores no None)."""
        table = self.table.reset_index()
        columns = {c: table[c].tolist() for c in table.columns}
        for c in ("answer", "runner_up"):
            columns[c] = ["" if v is None else v for v in columns[c]]
        return {"key": self.key, "n_ungrouped": self.n_ungrouped, "table": columns}


def composition(labels: Sequence[Any], confidence: np.ndarray, groups: pd.Series, key: str,
                what: str = "answers") -> Composition:
    """The composition of `labels` (None: unlabelled; 'Unassigned') by `groups` (one value per
    cell, NaN: no group).

    Raises
    ------
    InputFileError
        When `groups` has more than `MAX_GROUPS` distinct values.
    """
    groups = pd.Series(groups).reset_index(drop=True)
    if len(groups) != len(labels):
        raise ValueError(f"{len(labels)} labels for {len(groups)} group values")
    check_groups(groups, key)
    order = list(groups.cat.categories) if isinstance(groups.dtype, pd.CategoricalDtype) else _sorted(groups.dropna())
    order = [g for g in order if (groups == g).any()]
    frame = pd.DataFrame({"group": groups, "label": pd.Series(list(labels), dtype=object),
                          "confidence": np.asarray(confidence, dtype=float)})
    rows = []
    for group in order:
        cells = frame[frame["group"] == group]
        named = cells["label"][cells["label"].notna() & (cells["label"] != UNASSIGNED)]
        counts = named.astype(str).value_counts()
        top = list(counts.items())[:2]
        rows.append({"group": str(group), "n_cells": len(cells),
                     "answer": top[0][0] if top else None, "share": top[0][1] / len(cells) if top else 0.0,
                     "runner_up": top[1][0] if len(top) > 1 else None,
                     "runner_up_share": top[1][1] / len(cells) if len(top) > 1 else 0.0,
                     "mean_confidence": float(cells["confidence"][named.index].mean()) if len(named) else float("nan"),
                     "not_labelled": len(cells) - len(named)})
    table = pd.DataFrame(rows, columns=["group", *COLUMNS]).set_index("group")
    return Composition(key=key, table=table, n_ungrouped=int(groups.isna().sum()), what=what)


def check_groups(groups: pd.Series, key: str) -> None:
    """Refuse a per-cell column (before any model work): more than `MAX_GROUPS` distinct values,
    or more than 20 and over half as many as there are cells."""
    groups = pd.Series(groups)
    n = groups.nunique(dropna=True)
    if n > MAX_GROUPS or (n > 20 and n > len(groups) / 2):
        raise InputFileError(f"obs[{key!r}] has {n:,} distinct values among {len(groups):,} cells: a per-cell "
                             "column, not a grouping; pass a cluster, sample or condition column")


def _sorted(values: pd.Series) -> list:
    """Distinct values, numbers in numeric order (cluster '10' after '9')."""
    unique = list(pd.unique(values))
    try:
        return sorted(unique, key=lambda v: (float(v), str(v)))
    except (TypeError, ValueError):
        return sorted(unique, key=str)
