"""Candidates none of which the checkpoint learned are answered from their known markers by default."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from synthetic import LIVER_TYPES, make_liver_like, make_mixed_tissue

import instructcell_agent as ica
from instructcell_agent.core_model.candidate_route import CandidateNoteWarning, route_candidates


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


# --- candidates mixing learned types with unlearned ones: the markers decide the unlearned ones ---

MIXED = ["alpha", "beta", "Hepatocyte"]  # the checkpoint learned alpha and beta, never hepatocytes


def _mixed(tiny_model, cells, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ica.annotate(cells, model=tiny_model, candidates=MIXED, **options)
    return result, [str(w.message) for w in caught if issubclass(w.category, CandidateNoteWarning)]


def test_unlearned_candidates_beside_learned_ones_are_decided_by_their_markers(tiny_model):
    cells = make_mixed_tissue(60)
    truth = cells.obs["cell_type"].astype(str).to_numpy()
    result, said = _mixed(tiny_model, cells)
    assert result.provenance["candidate_route"] == "ontology"
    assert _accuracy(result, cells) >= 0.95
    gate = result.provenance["marker_gate"]
    assert gate["unlearned"] == ["Hepatocyte"]
    assert gate["cells"] == [int((np.asarray(result.labels) == "Hepatocyte").sum())]
    assert gate["marker_db"] == "panglaodb" and gate["markers"]["candidate"] == MIXED
    assert said and "known markers" in said[0] and "decided" in result.provenance["notes"][0]
    probs = result.probabilities.to_numpy()
    assert np.allclose(probs.sum(1), 1.0)
    # the model's own answer stays its learned label; a hepatocyte's is the candidate itself
    answers = np.asarray(result.answers, str)
    assert set(answers[truth == "Hepatocyte"]) == {"Hepatocyte"}
    # scored as strings, the type the model never learned is the one it misses
    strings, said = _mixed(tiny_model, cells, by_markers=False)
    assert "marker_gate" not in strings.provenance and "scored as plain text" in said[0]
    hep = truth == "Hepatocyte"
    assert (np.asarray(result.labels, str)[hep] == "Hepatocyte").mean() > (
        np.asarray(strings.labels, str)[hep] == "Hepatocyte").mean()


def test_the_markers_weigh_less_where_the_model_s_learned_answer_fits_the_cell(tiny_model):
    cells = make_mixed_tissue(45)
    gated, _ = _mixed(tiny_model, cells)
    strings, _ = _mixed(tiny_model, cells, by_markers=False)
    markers = ica.annotate_by_markers(cells, MIXED, model=tiny_model).probabilities[MIXED].to_numpy()
    route = route_candidates(MIXED, tiny_model.label_sets)
    model = strings.probabilities[MIXED].to_numpy()
    fit = np.asarray(strings.typicality, float)  # the model's own learned answer's typicality
    assert np.allclose(gated.probabilities[MIXED].to_numpy(), route.gate(model, markers, fit))
    plain = route.gate(model, markers)
    # hepatocytes fit no learned type well: the markers still decide them
    hep = cells.obs["cell_type"].astype(str).to_numpy() == "Hepatocyte"
    assert np.all(fit[hep] < -1) and set(np.asarray(gated.labels, str)[hep]) == {"Hepatocyte"}
    # alpha and beta cells fit their learned answer: they keep more of the model's probabilities
    typical = ~hep & (fit > 0)
    assert typical.any()
    assert np.all(np.abs(gated.probabilities.to_numpy()[typical] - model[typical])
                  <= np.abs(plain[typical] - model[typical]) + 1e-12)


@pytest.mark.parametrize("option", [{"fast": True}, {"mode": "chat"}, {"instruction": "Which cell type is this?"},
                                    {"resolve_at": 0.9}, {"unassigned_atypical": 3.0}])
def test_the_marker_gate_keeps_the_model_so_its_options_still_apply(tiny_model, option):
    cells = make_mixed_tissue(30)
    result, _ = _mixed(tiny_model, cells, **option)
    assert result.provenance["marker_gate"]["unlearned"] == ["Hepatocyte"]
    hep = cells.obs["cell_type"].astype(str).to_numpy() == "Hepatocyte"
    assert (np.asarray(result.labels, str)[hep] == "Hepatocyte").mean() >= 0.9
    if "resolve_at" in option:
        assert result.resolved is not None and len(result.resolved) == cells.n_obs


def test_markers_scored_on_a_whole_file_decide_its_chunks(tiny_model):
    cells = make_mixed_tissue(60)
    cells = cells[np.argsort(cells.obs["cell_type"].astype(str).to_numpy(), kind="stable")].copy()  # sorted by type
    whole, _ = _mixed(tiny_model, cells)
    found = ica.annotate_by_markers(cells, MIXED, model=tiny_model)
    chunk = cells[40:].copy()  # hepatocytes absent: alone, its marker z-scores would be relative to alpha/beta
    given, _ = _mixed(tiny_model, chunk, marker_result=found)
    assert list(given.labels) == list(whole.labels)[40:]
    assert np.allclose(given.probabilities.to_numpy(), whole.probabilities.to_numpy()[40:])


def test_a_marker_result_that_cannot_decide_is_refused(tiny_model):
    cells = make_mixed_tissue(12)
    found = ica.annotate_by_markers(cells, MIXED, model=tiny_model)
    for options, expected in (({"candidates": ["alpha", "beta"]}, "not such a mix"),
                              ({"candidates": ["alpha", "beta", "Cholangiocyte"]}, "same candidates"),
                              ({"candidates": MIXED, "by_markers": False}, "one or the other")):
        with pytest.raises(ValueError, match=expected), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ica.annotate(cells, model=tiny_model, marker_result=found, **options)
    other = make_mixed_tissue(12, seed=1)
    other.obs_names = [f"other{i}" for i in range(other.n_obs)]
    with pytest.raises(ValueError, match="lacks 12 of these cells"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ica.annotate(other, model=tiny_model, candidates=MIXED, marker_result=found)
