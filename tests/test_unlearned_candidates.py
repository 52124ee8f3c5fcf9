"""Candidates none of which the checkpoint learned are answered from their known markers by default."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from synthetic import LIVER_TYPES, make_liver_like

import instructcell_agent as ica
from instructcell_agent.core_model.candidate_route import CandidateNoteWarning


def _accuracy(result, cells) -> float:
    return float((np.asarray(result.labels, str) == cells.obs["cell_type"].astype(str).to_numpy()).mean())


def test_types_the_checkpoint_never_learned_are_answered_from_their_markers(tiny_model):
    cells = make_liver_like(40)
    with pytest.warns(CandidateNoteWarning, match="answered from their known markers"):
        result = ica.annotate(cells, model=tiny_model, candidates=list(LIVER_TYPES))
    assert result.provenance["candidate_route"] == "known markers"
    assert "none of the candidates is a type this checkpoint learned" in result.provenance["notes"][0]
    assert _accuracy(result, cells) >= 0.95
    direct = ica.annotate_by_markers(cells, list(LIVER_TYPES), model=tiny_model)
    assert np.allclose(result.probabilities.to_numpy(), direct.probabilities.to_numpy())


@pytest.mark.parametrize("option", [{"by_markers": False}, {"fast": True}, {"instruction": "Which of {choices}?"},
                                    {"mode": "chat"}])
def test_the_names_are_scored_as_strings_when_asked_or_when_only_the_model_answers_an_option(tiny_model, option):
    cells = make_liver_like(12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ica.annotate(cells, model=tiny_model, candidates=list(LIVER_TYPES), **option)
    assert result.provenance["candidate_route"] == "text"


def test_a_learned_type_among_the_candidates_keeps_the_model(tiny_model):
    cells = make_liver_like(12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ica.annotate(cells, model=tiny_model, candidates=["Hepatocyte", "alpha"])
    assert result.provenance["candidate_route"] != "known markers"
