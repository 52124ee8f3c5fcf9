"""Answers known markers gave are explained by those markers (interpret/marker_explain.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from synthetic import CELL_TYPES, LIVER_TYPES, liver_markers, make_counts, make_liver_like, make_mixed_tissue

import instructcell_agent as ica
from instructcell_agent.core_model.cell_encoder import log_normalize_csr
from instructcell_agent.interpret.api import explain
from instructcell_agent.interpret.marker_annotation import (POOLINGS, candidate_markers, marker_scores,
                                                            read_for_markers)
from instructcell_agent.interpret.marker_explain import ATTRIBUTION, marker_attributions
from instructcell_agent.interpret.markers import load_marker_db


@pytest.mark.parametrize("pooling", POOLINGS)
def test_the_shares_sum_to_the_marker_score_each_answer_won_on(tiny_model, pooling):
    cells = make_liver_like(24)
    db = load_marker_db("panglaodb")
    sets = candidate_markers(list(LIVER_TYPES), db, "human")
    groups = cells.obs["cell_type"].astype(str).to_numpy()
    found = marker_attributions(cells, groups, sets, vocab=tiny_model.vocab, db=db, species="human", pooling=pooling)
    aligned, genes = read_for_markers(cells, db, sets, tiny_model.vocab, species="human")
    scores, used = marker_scores(log_normalize_csr(aligned.X), genes, sets, pooling)
    for j, label in enumerate(LIVER_TYPES):
        rows = groups == label
        np.testing.assert_allclose(found.values[rows].sum(1), scores[rows, j], rtol=1e-5, atol=1e-5)
        # a cell's shares sit on its own answer's markers only
        theirs = [i for i, g in enumerate(found.genes) if g not in set(used[label])]
        assert np.all(found.values[np.ix_(rows, theirs)] == 0)
        assert found.n_markers[label] == len(used[label])


def _no_model(*args, **kwargs):
    raise AssertionError("the model was run")


def test_answers_given_by_markers_are_explained_by_the_markers_that_gave_them(tiny_model, monkeypatch):
    cells = make_liver_like(24)
    answered = ica.annotate_by_markers(cells, list(LIVER_TYPES), model=tiny_model).to_adata(cells.copy())
    monkeypatch.setattr("instructcell_agent.interpret.api.attribute", _no_model)  # the markers gave every answer
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note that the names were scored as text: they were not
        result = explain(answered, model=tiny_model, labels="instructcell_label")
    # the probabilities are annotate's, recorded beside its answers
    np.testing.assert_allclose(result.attributions.probabilities, answered.obsm["instructcell_probabilities"])
    top, planted = result.top_genes, liver_markers()
    for label in LIVER_TYPES:
        mine = top[top["label"] == label]
        assert set(mine["gene"][:5]) <= set(planted[label]), mine  # the markers these cells raise come first
        assert (mine["attribution"] == ATTRIBUTION).all() and mine["is_known_marker"].all()
    report = result.marker_report.set_index("label")
    assert report.loc[list(LIVER_TYPES), "precision_at_k"].isna().all()  # its own markers: nothing to check
    assert any("answered from known markers" in n for n in result.provenance["notes"])
    assert set(result.provenance["explained_by_markers"]) == set(LIVER_TYPES)
    # every per-cell view reads the markers' shares: the liver markers are none of this model's
    # genes, so nothing is left on them
    assert np.all(result.cell_scores() == 0)
    assert "instructcell_saliency" in result.to_adata().uns
    assert "cells explained with the known-marker score" in result.summary()


def test_a_candidate_whose_markers_the_file_lacks_still_leaves_the_model_out(tiny_model, monkeypatch):
    cells = make_liver_like(16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no marker of 'Absent' is among this file's genes: never answered
        answered = ica.annotate_by_markers(cells, [*LIVER_TYPES, "Absent"], markers={"Absent": ["NOTAGENE1"]},
                                           model=tiny_model)
    assert answered.provenance["markers"]["genes"][-1] == ""
    monkeypatch.setattr("instructcell_agent.interpret.api.attribute", _no_model)
    result = explain(answered.to_adata(cells.copy()), model=tiny_model, labels="instructcell_label")
    assert set(result.provenance["explained_by_markers"]) == set(LIVER_TYPES)


def test_candidates_the_checkpoint_never_learned_are_explained_as_annotate_answers_them(tiny_model, monkeypatch):
    cells = make_liver_like(16)
    monkeypatch.setattr("instructcell_agent.interpret.api.attribute", _no_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        answers = ica.annotate(cells, model=tiny_model, candidates=list(LIVER_TYPES))
        result = explain(cells, model=tiny_model, candidates=list(LIVER_TYPES))
    assert list(result.groups) == list(answers.labels)  # the marker route's answers, not the strings' scores
    np.testing.assert_allclose(result.attributions.probabilities, answers.probabilities.to_numpy(), atol=1e-6)
    assert any("the model was not run" in n for n in result.provenance["notes"])


def test_answers_by_markers_among_learned_names_say_nothing_of_how_the_model_would_score_them(tiny_model,
                                                                                             monkeypatch):
    cells = make_mixed_tissue(24)
    mixed = ["alpha", "beta", "Hepatocyte"]  # learned names beside one never learned: read through the ontology
    answered = ica.annotate_by_markers(cells, mixed, model=tiny_model).to_adata(cells.copy())
    monkeypatch.setattr("instructcell_agent.interpret.api.attribute", _no_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = explain(answered, model=tiny_model, labels="instructcell_label")
    assert set(result.provenance["explained_by_markers"]) == set(mixed) & set(result.groups)
    assert not any("Cell Ontology" in n for n in result.provenance["notes"])  # the model was not asked


def test_only_the_types_the_markers_decide_are_explained_by_them(tiny_model):
    cells = make_mixed_tissue(24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = explain(cells, model=tiny_model, candidates=["alpha", "beta", "Hepatocyte"], labels="cell_type")
    how = result.top_genes.groupby("label")["attribution"].unique()
    assert list(how["Hepatocyte"]) == [ATTRIBUTION]
    assert list(how["alpha"]) == ["model"] and list(how["beta"]) == ["model"]
    assert set(result.top_genes.query("label == 'Hepatocyte'")["gene"][:5]) <= set(
        candidate_markers(["Hepatocyte"], load_marker_db("panglaodb"), "human")["Hepatocyte"])
    # the model's cells keep the model's attributions
    model_rows = result.groups != "Hepatocyte"
    assert np.abs(result.cell_scores()[model_rows]).sum() > 0


def test_the_models_own_labels_keep_the_models_attributions(tiny_model):
    cells = make_counts(16)
    result = explain(cells, model=tiny_model, candidates=list(CELL_TYPES), labels="cell_type")
    assert result.by_markers is None and result.provenance["explained_by_markers"] is None
    assert (result.top_genes["attribution"] == "model").all()
    assert not any("answered from known markers" in n for n in result.provenance["notes"])


def test_a_contrast_of_a_type_never_learned_says_it_reads_the_models_scores_for_the_name(tiny_model):
    cells = make_mixed_tissue(12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = explain(cells, model=tiny_model, candidates=["alpha", "beta", "Hepatocyte"], labels="cell_type",
                         versus="runner-up")
    assert result.by_markers is None
    assert any(n.startswith("'Hepatocyte': never learned by this checkpoint") for n in result.provenance["notes"])


def test_names_the_markers_decide_are_not_said_to_be_scored_as_text(tiny_model):
    cells = make_mixed_tissue(24)
    learned_only = cells[cells.obs["cell_type"].isin(["alpha", "beta"]).to_numpy()].copy()  # none given Hepatocyte
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no CandidateNoteWarning that 'Hepatocyte' is scored as a string
        result = explain(learned_only, model=tiny_model, candidates=["alpha", "beta", "Hepatocyte"],
                         labels="cell_type")
    assert result.by_markers is None
    said = [n for n in result.provenance["notes"] if "'Hepatocyte': never learned by this checkpoint" in n]
    assert len(said) == 1 and "annotate answers them from their known markers" in said[0]
    assert not any("scored as plain text" in n for n in result.provenance["notes"])
