"""Candidates naming cell types the checkpoint never learned, answered from their known markers.

`core_model/candidate_route.py` routes a user's candidates to the labels the checkpoint learned.
A candidate with no learned label at or below it ('Hepatocyte' beside 'T cell') can only be
scored there as a string, which the model seldom answers with: its cells go to the learned type
nearest them. Known markers (interpret/marker_annotation.py) carry what the model lacks:

- none of the candidates is a learned type (`route.nothing_learned`): the markers answer every
  cell (`by_markers_answer`);
- some are (`route.unrouted` lists the others): the markers decide between each unlearned
  candidate and the learned ones taken together, and the model chooses among the learned ones
  (`CandidateRoute.gate`), so the model keeps the distinctions it was trained on (naive from memory
  T cells, which markers do not tell apart) and the markers add the types it never saw. Their say
  shrinks where the model's own learned answer fits the cell (its typicality, how alike the cell
  is to that label's training cells), which keeps cells off listed types the file lacks.

The first only where no option that only the model answers was asked (an instruction, fast,
resolve_at, calibrate, unassigned_atypical, chat mode): the markers answer alone there. The second
keeps the model, so every option still applies. `by_markers=False` keeps the strings in both.
"""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np

from .core_model.candidate_route import CandidateNoteWarning, CandidateRoute
from .core_model.checkpoint import LoadedModel
from .results import AnnotationResult

log = logging.getLogger(__name__)

BY_MARKERS_NOTE = ("none of the candidates is a type this checkpoint learned, so they were answered from their known "
                   "markers (annotate_by_markers; PanglaoDB) rather than by scoring their names as strings; "
                   "by_markers=False scores the strings instead")

# benchmarks/results/mixed_candidates_test.md: eight shared sets' test cells, their labels as Cell
# Ontology names, one type at a time hidden from the checkpoint (56 trials); then, nothing hidden,
# three types of other organs added to the candidates
GATE_MEASURED = ("(Measured with one type at a time hidden from the checkpoint, on eight shared test sets: mean "
                 "macro-F1 0.85 with the markers deciding, 0.76 with the names scored as strings; the hidden type's "
                 "cells found 0.58 of the time against 0.18. The markers weigh less where the model's own learned "
                 "answer fits the cell; with three absent types among the candidates they gave one of them to 0.4% "
                 "of the cells.)")


def answer_by_markers(route: CandidateRoute | None, **model_only) -> bool:
    """Whether candidates go to their known markers instead of the model: none is a type the
    checkpoint learned (so the model could only score the strings: mean test macro-F1 0.37 against
    the markers' 0.66, benchmarks/results/marker_annotation.md), and no option that only the model
    answers (an instruction, fast, resolve_at, calibrate, unassigned_atypical, chat mode) was asked."""
    return route is not None and route.nothing_learned and not any(model_only.values())


def gates_unrouted(route: CandidateRoute | None) -> bool:
    """Whether known markers decide the candidates the checkpoint never learned while the model
    answers the others (`CandidateRoute.gate`): the candidates mix both kinds."""
    return route is not None and route.kind == "ontology" and bool(route.unrouted)


def by_markers_answer(adata: ad.AnnData, loaded: LoadedModel, route: CandidateRoute,
                      **options) -> AnnotationResult | None:
    """The candidates answered from their known markers (interpret/marker_annotation.py), with a note
    and a warning saying so; None where the database or the file lacks their markers (logged; the
    strings are scored then, under the route's own warning)."""
    result = marker_result(adata, loaded, route, **options)
    if result is None:
        return None
    warnings.warn(BY_MARKERS_NOTE, CandidateNoteWarning, stacklevel=4)
    result.provenance["notes"].insert(0, BY_MARKERS_NOTE)
    return result


def marker_result(adata: ad.AnnData, loaded: LoadedModel, route: CandidateRoute, *, species: str = "",
                  **options) -> AnnotationResult | None:
    """`annotate_by_markers` over the route's candidates, or None (logged) where the database has no
    markers for one of them or the file expresses none of a candidate's markers."""
    from .interpret.marker_annotation import UnknownMarkersError, annotate_by_markers

    try:  # a candidate none of whose markers the file expresses is warned about (MarkerCoverageWarning)
        return annotate_by_markers(adata, list(route.candidates), model=loaded, species=species or None, **options)
    except UnknownMarkersError as exc:
        log.info("candidates scored as strings: %s", exc)
        return None


def check_marker_result(found: AnnotationResult, route: CandidateRoute | None, obs_names) -> None:
    """Refuse a given marker result that cannot decide these candidates for these cells."""
    if route is None or route.kind != "ontology" or not route.unrouted:
        raise ValueError("marker_result decides candidates the checkpoint never learned beside ones it did; these "
                         "candidates are not such a mix (`instructcell info` lists what the checkpoint learned)")
    if found.probabilities is None or set(found.probabilities.columns) != set(route.candidates):
        raise ValueError("marker_result must score the same candidates: pass annotate_by_markers(adata, candidates)")
    missing = [str(n) for n in obs_names if str(n) not in found.probabilities.index]
    if missing:
        raise ValueError(f"marker_result lacks {len(missing):,} of these cells (e.g. {missing[0]!r}): compute it on "
                         "these cells or on a file holding them")


def gate_note(route: CandidateRoute, found: AnnotationResult) -> str:
    """What the markers decided, and what that was measured to do."""
    names = ", ".join(repr(c) for c in route.unrouted)
    one = len(route.unrouted) == 1
    db = found.provenance.get("marker_db", "known markers")
    return (f"{names} {'is a type' if one else 'are types'} this checkpoint never learned (no learned label at or "
            f"below {'it' if one else 'them'}): {'its' if one else 'their'} known markers ({db}) decided whether each "
            f"cell is {'one' if one else 'one of them'} or one of the learned types, and the model chose among those; "
            f"by_markers=False scores the {'name as a string' if one else 'names as strings'} instead. "
            + GATE_MEASURED)


def gate_record(route: CandidateRoute, found: AnnotationResult, labels) -> dict:
    """Provenance of the gate: the unlearned candidates, the markers they were scored on, and how many
    cells each was given (by column, as the marker route's provenance: an .h5ad would turn a '/' in
    a label used as a key into groups)."""
    labels = np.asarray([str(l) for l in labels], dtype=object)
    return {"unlearned": list(route.unrouted), "cells": [int((labels == c).sum()) for c in route.unrouted],
            "marker_db": found.provenance.get("marker_db", ""), "markers": found.provenance.get("markers", {})}
