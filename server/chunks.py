"""One annotation result from the results of a file answered in chunks (the service answers a
large file a few hundred cells at a time to bound memory and report progress)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd


def concat_chunks(parts):
    """The chunks' `AnnotationResult`s as one, in order; counts kept in provenance are summed and
    the note on cells of types the candidates lack is written once, for the whole file."""
    from instructcell_agent.lacking_types import Lacking, is_lacking_note, lacking_note
    from instructcell_agent.results import AnnotationResult

    first = parts[0]
    probs = None
    if first.probabilities is not None:
        probs = pd.concat([p.probabilities for p in parts])
    outside = outside_type = None
    if any(p.outside is not None for p in parts):  # a chunk with no cell to answer measured none
        outside = np.concatenate([p.outside if p.outside is not None else np.full(len(p.obs_names), np.nan)
                                  for p in parts])
        outside_type = np.concatenate([p.outside_type if p.outside is not None else
                                       np.full(len(p.obs_names), None, dtype=object) for p in parts])
    # each chunk's count of cells a type the candidates lack would read as several notes: one for the file
    notes = list(dict.fromkeys(n for p in parts for n in p.provenance.get("notes", []) if not is_lacking_note(n)))
    if outside is not None and (note := lacking_note(Lacking(outside, outside_type))) is not None:
        notes.append(note)
    provenance = dict(first.provenance, chunks=len(parts), notes=notes)
    if "fast" in first.provenance:  # counts: summed over the chunks
        counted = ("cells_answered_by_readout_alone", "cells_answered")
        provenance["fast"] = dict(first.provenance["fast"],
                                  **{k: sum(p.provenance["fast"][k] for p in parts) for k in counted})
    if "marker_gate" in first.provenance:  # counts: summed over the chunks
        cells = [p.provenance["marker_gate"]["cells"] for p in parts]
        provenance["marker_gate"] = dict(first.provenance["marker_gate"], cells=[sum(c) for c in zip(*cells)])
    if first.answer_tissues() is not None:  # counts: summed over the chunks
        summed = sum((Counter(p.answer_tissues()) for p in parts), Counter())
        provenance["answer_tissues"] = AnnotationResult.answer_tissue_record(summed)
    typicality = np.concatenate([p.typicality for p in parts]) if first.typicality is not None else None
    answered_by = np.concatenate([p.answered_by for p in parts]) if first.answered_by is not None else None
    resolved = pd.concat([p.resolved for p in parts]) if first.resolved is not None else None
    return AnnotationResult(
        obs_names=[o for p in parts for o in p.obs_names], labels=np.concatenate([p.labels for p in parts]),
        confidence=np.concatenate([np.asarray(p.confidence) for p in parts]),
        answers=[a for p in parts for a in p.answers], probabilities=probs, provenance=provenance,
        typicality=typicality, answered_by=answered_by, resolved=resolved, outside=outside, outside_type=outside_type)
