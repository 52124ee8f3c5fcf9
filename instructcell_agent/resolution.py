"""`resolve_at`: each cell's finest answer at a probability the caller asks for, per cell, as a
table beside the labels (core_model/hierarchy.py says how)."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import pandas as pd

from .core_model.hierarchy import AT_LABEL, BROADER, resolve
from .core_model.labels import UNASSIGNED, ontology_id

COLUMNS = ("resolved", "resolved_confidence", "resolved_ontology_id", "resolved_level")

# Scored answers: (rows among the cells answered, the labels scored, their probabilities).
Part = tuple[np.ndarray, Sequence[str], np.ndarray]


def resolved_frame(obs_names: Sequence[str], keep: np.ndarray, parts: list[Part] | None, labels: Sequence,
                   confidence: Sequence[float], at: float) -> pd.DataFrame:
    """One row per cell (COLUMNS); cells not in `keep` (no counts to answer from) stay empty.

    `parts` None: answers decoded as text, with no probability over the other labels to sum; a
    cell then keeps its label where its confidence reaches `at` and is 'Unassigned' otherwise."""
    n = len(obs_names)
    names = np.full(n, None, dtype=object)
    conf = np.full(n, np.nan)
    ids = np.full(n, None, dtype=object)
    levels = np.full(n, None, dtype=object)
    if parts is None:
        for i in keep:
            sure = float(confidence[i]) >= at
            names[i] = labels[i] if sure else UNASSIGNED
            conf[i] = float(confidence[i]) if sure else np.nan
            ids[i] = ontology_id(str(labels[i])) if sure else None
            levels[i] = AT_LABEL if sure else None
    for rows, scored, probs in parts or []:
        found = resolve(probs, scored, at)
        at_cells = keep[rows]
        names[at_cells], conf[at_cells] = found.names, found.confidence
        ids[at_cells], levels[at_cells] = found.ontology_ids, found.levels
    return pd.DataFrame(dict(zip(COLUMNS, (names, conf, ids, levels))), index=pd.Index(list(obs_names)))


def resolved_line(frame: pd.DataFrame, at: float) -> str:
    """The summary's line: 'resolved at 0.9 (...): N cells at their label, M as a broader type
    (the four commonest, with their counts), U 'Unassigned''."""
    levels = Counter(frame["resolved_level"].dropna())
    broader = Counter(frame.loc[frame["resolved_level"] == BROADER, "resolved"])
    n_unassigned = int((frame["resolved"] == UNASSIGNED).sum())
    types = ", ".join(f"{name} {k:,}" for name, k in broader.most_common(4))
    more = f", {len(broader) - 4} more" if len(broader) > 4 else ""
    return (f"resolved at {at:g} (the finest type whose probability reaches it): {levels[AT_LABEL]:,} cells at "
            f"their label, {levels[BROADER]:,} as a broader type" + (f" ({types}{more})" if types else "")
            + f", {n_unassigned:,} {UNASSIGNED!r}")
