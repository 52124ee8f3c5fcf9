"""How far a result agrees with labels the user already has (an author's annotation, a
reference): overall, and per known label with what the model said instead.

Answers are read onto the known labels the way `evaluate` reads free answers: the same name after
case and spacing, a Cell Ontology synonym ('CD19+ B' is 'B cell'), or a finer type of a known
label ('CD8+ Cytotoxic T' is a 'T cell'). A coarser answer ('T cell' where the labels split CD4
and CD8) does not say which label it means, so it does not agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .core_model.hierarchy import count_right
from .core_model.io import obs_column
from .core_model.labels import UNASSIGNED, LabelMapper


@dataclass(frozen=True)
class Agreement:
    """Agreement of predicted labels with known ones.

    Attributes
    ----------
    agreement
        Share of compared cells whose answer names their known label.
    n_compared
        Cells with both a known label and an answer.
    n_unlabelled, n_unknown
        Cells the model left unlabelled; cells without a known label (both left out).
    n_unassigned
        Cells labelled 'Unassigned' (answered below the caller's confidence threshold), left out.
    per_label
        One row per known label: cells, share agreeing, and the most common answer with its share.
    """

    agreement: float
    n_compared: int
    n_unlabelled: int
    n_unknown: int
    per_label: pd.DataFrame
    n_unassigned: int = 0

    def summary(self, key: str = "known labels") -> str:
        lines = [f"agreement with {key}: {self.agreement:.3f} of {self.n_compared:,} cells"]
        left_out = [f"{n:,} {what}" for n, what in ((self.n_unlabelled, "unlabelled"),
                                                    (self.n_unassigned, repr(UNASSIGNED)),
                                                    (self.n_unknown, "without a known label")) if n]
        if left_out:
            lines[0] += f" (left out: {', '.join(left_out)})"
        for label, row in self.per_label.iterrows():
            lines.append(f"  {label}: {row['agreement']:.2f} of {int(row['n_cells'])}; most often "
                         f"{row['most_common_answer']!r} ({row['most_common_share']:.2f})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON- and `uns`-ready. The per-label table is stored by column, not keyed by label: an
        .h5ad turns a '/' in a key ('CD4+/CD25 T Reg') into nested groups."""
        table = self.per_label.reset_index()
        return {"agreement": self.agreement, "n_compared": self.n_compared, "n_unlabelled": self.n_unlabelled,
                "n_unassigned": self.n_unassigned, "n_unknown": self.n_unknown,
                "per_label": {c: table[c].tolist() for c in table.columns}}


def agreement(predicted: Sequence[Any], known: Sequence[Any]) -> Agreement:
    """Compare `predicted` labels (None: unlabelled; 'Unassigned': below the caller's confidence
    threshold) with `known` ones (NaN / None: unknown), cell by cell; cells missing either are left out."""
    predicted = list(predicted)
    known = pd.Series(list(known), dtype=object)
    if len(predicted) != len(known):
        raise ValueError(f"{len(predicted)} predicted labels for {len(known)} known ones")
    has_known = known.notna().to_numpy()
    has_answer = np.array([p is not None for p in predicted])
    unassigned = np.array([p == UNASSIGNED for p in predicted])
    compared = has_known & has_answer & ~unassigned
    mapper = LabelMapper(tuple(sorted(set(known[has_known].astype(str)))))
    frame = pd.DataFrame({"known": known[compared].astype(str).to_numpy(),
                          "answer": [str(p) for p, c in zip(predicted, compared) if c]})
    named = {answer: mapper.map(answer) for answer in set(frame["answer"])}  # once per answer, not per cell
    frame["agrees"] = [named[a] == k for a, k in zip(frame["answer"], frame["known"])]
    rows = []
    for label, group in frame.groupby("known", sort=True):
        counts = group["answer"].value_counts()
        rows.append({"known": label, "n_cells": len(group), "agreement": float(group["agrees"].mean()),
                     "most_common_answer": str(counts.index[0]), "most_common_share": float(counts.iloc[0] / len(group))})
    per_label = pd.DataFrame(rows, columns=["known", "n_cells", "agreement", "most_common_answer",
                                            "most_common_share"]).set_index("known")
    return Agreement(agreement=float(frame["agrees"].mean()) if len(frame) else float("nan"),
                     n_compared=int(compared.sum()), n_unlabelled=int((~has_answer).sum()),
                     n_unknown=int((~has_known).sum()), per_label=per_label, n_unassigned=int(unassigned.sum()))


@dataclass(frozen=True)
class ResolvedAgreement:
    """How often `resolve_at`'s answers are right for labels the cells already have: an answer
    at a label agrees as `agreement` reads it; a broader type agrees when the known label falls
    under it (core_model/hierarchy.py, `consistent`). 'Unassigned' cells are counted, not compared."""

    n_label: int
    right_label: int
    n_broader: int
    right_broader: int
    n_unassigned: int
    n_unknown: int

    @property
    def agree_label(self) -> float:
        return self.right_label / self.n_label if self.n_label else float("nan")

    @property
    def agree_broader(self) -> float:
        return self.right_broader / self.n_broader if self.n_broader else float("nan")

    @property
    def agreement(self) -> float:
        """Share of the resolved answers, at a label or broader, right for the known labels."""
        n = self.n_label + self.n_broader
        return (self.right_label + self.right_broader) / n if n else float("nan")

    def summary(self, key: str = "known labels") -> str:
        n = self.n_label + self.n_broader
        return (f"resolved answers right for {key}: {self.agreement:.3f} of {n:,} cells ({self.n_label:,} at "
                f"their label: {self.agree_label:.3f}; {self.n_broader:,} as a broader type: "
                f"{self.agree_broader:.3f}); {self.n_unassigned:,} {UNASSIGNED!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "agreement": self.agreement}


def resolved_agreement(resolved: pd.DataFrame, known: Sequence[Any]) -> ResolvedAgreement:
    """Compare a result's `resolved` table with `known` labels (NaN / None: unknown), cell by cell."""
    known = pd.Series(list(known), dtype=object)
    if len(resolved) != len(known):
        raise ValueError(f"{len(resolved)} resolved answers for {len(known)} known labels")
    counts = count_right(list(resolved["resolved"]), list(resolved["resolved_level"]),
                         [label if pd.notna(label) else None for label in known])
    return ResolvedAgreement(**counts, n_unknown=int(known.isna().sum()))


def known_labels(adata: ad.AnnData, key: str, purpose: str = "to compare with") -> pd.Series:
    """`adata.obs[key]`, labels that may miss for some cells (those are left out, not refused);
    a missing column is refused with the columns there are."""
    return obs_column(adata, key, f"Name the column that holds the labels {purpose}.")
