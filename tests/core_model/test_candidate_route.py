"""Routing a user's candidate labels: learned set, Cell Ontology pooling, or plain text."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from instructcell_agent.core_model.candidate_route import CandidateRoute, route_candidates

SETS = {
    "blood": {"task": "annotation", "labels": ["B", "CD14+Mono", "CD4T", "CD8T", "NK"]},
    "sorted": {"task": "annotation", "labels": ["CD19+ B", "CD8+ Cytotoxic T", "CD4+/CD25 T Reg"]},
    "islets": {"task": "annotation", "labels": ["alpha", "beta"]},
    "drug": {"task": "drug_response", "labels": ["resistant", "sensitive"]},
}


def test_a_subset_of_one_learned_set_is_scored_as_it_is():
    route = route_candidates(["nk", "B"], SETS)  # case and spacing do not matter
    assert route.kind == "learned" and route.note == ""
    # learned labels mixed from two sets are pooled instead (measured better; see the module doc)
    assert route_candidates(["CD19+ B", "CD8T"], SETS).kind == "ontology"
    assert route_candidates(["sensitive", "resistant"], SETS, "drug_response").kind == "learned"


def test_other_spellings_pool_the_learned_labels_under_each_candidate():
    route = route_candidates(["B cell", "T cell", "CD8-positive, alpha-beta T cell"], SETS)
    assert route.kind == "ontology" and "Cell Ontology" in route.note
    owner = dict(zip(route.learned, route.owner))
    assert owner["B"] == owner["CD19+ B"] == 0
    # each learned label goes to the candidate with its nearest term: CD8 subsets to the CD8 candidate,
    # other T cells to 'T cell'
    assert owner["CD8T"] == owner["CD8+ Cytotoxic T"] == 2
    assert owner["CD4T"] == owner["CD4+/CD25 T Reg"] == 1
    assert "NK" not in owner and "alpha" not in owner  # covered by no candidate: left out


def test_names_spelt_another_common_way_are_routed_too():
    # '-positive' for '+', hyphens, plurals: spellings the synonym table does not list word for word
    route = route_candidates(["B-cells", "CD8-positive T cells", "CD14-positive monocytes", "NK cells"], SETS)
    assert route.kind == "ontology" and not route.unrouted
    owner = dict(zip(route.learned, route.owner))
    assert owner["B"] == owner["CD19+ B"] == 0 and owner["CD8T"] == 1 and owner["CD14+Mono"] == 2 and owner["NK"] == 3


@pytest.mark.parametrize("cands, why", [
    (["Kupffer cell", "hepatocyte"], "none of 'Kupffer cell', 'hepatocyte' has a Cell Ontology term"),
    (["macrophage", "endothelial cell"], "has a Cell Ontology term with a label"),  # terms, nothing learned
    (["B", "B cell", "NK"], "'B' and 'B cell' name the same Cell Ontology term"),
])
def test_candidates_it_cannot_route_are_scored_as_text_with_a_reason(cands, why):
    route = route_candidates(cands, SETS)
    assert route.kind == "text" and why in route.note
    assert "annotate_by_markers" in route.note  # what answers types the model never learned


@pytest.mark.parametrize("extra", ["Kupffer cell", "macrophage"])  # no term / nothing learned under it
def test_an_unroutable_candidate_is_scored_as_its_string_beside_the_routed_ones(extra):
    route = route_candidates(["B cell", "T cell", extra], SETS)
    assert route.kind == "ontology" and route.unrouted == (extra,) and repr(extra) in route.note
    assert "annotate_by_markers" in route.note
    owner = dict(zip(route.learned, route.owner))
    assert owner[extra] == 2 and owner["CD19+ B"] == 0 and owner["CD8T"] == 1


def test_drug_labels_outside_the_learned_set_are_text():
    route = route_candidates(["responder", "non-responder"], SETS, "drug_response")
    assert route.kind == "text" and "Cell Ontology" not in route.note and "markers" not in route.note


def test_pooling_sums_probabilities_per_candidate():
    route = route_candidates(["B cell", "T cell"], SETS)
    rng = np.random.default_rng(0)
    loglik = rng.normal(size=(6, len(route.learned))) - 5.0  # unnormalized, as the model scores them
    pooled, top = route.pool(loglik)
    p = np.exp(loglik) / np.exp(loglik).sum(1, keepdims=True)
    owner = np.asarray(route.owner)
    np.testing.assert_allclose(np.exp(pooled), np.stack([p[:, owner == c].sum(1) for c in range(2)], 1))
    np.testing.assert_allclose(np.exp(pooled).sum(1), 1.0)
    np.testing.assert_array_equal(top, p.argmax(1))


def test_a_candidate_whose_labels_are_all_ruled_out_pools_to_minus_infinity_quietly():
    route = route_candidates(["B cell", "T cell"], SETS)
    loglik = np.zeros((3, len(route.learned)))
    loglik[:, np.asarray(route.owner) == 0] = -np.inf  # e.g. the read-out's -inf outside its label set
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pooled, _ = route.pool(loglik)
    assert np.isneginf(pooled[:, 0]).all() and np.allclose(pooled[:, 1], 0.0)


def test_the_gate_lets_markers_decide_unrouted_candidates_and_the_model_the_routed_ones():
    route = CandidateRoute("ontology", ("a", "b", "x"), learned=("A", "B", "x"), owner=(0, 1, 2), unrouted=("x",))
    model = np.array([[0.6, 0.2, 0.2], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    markers = np.array([[0.1, 0.3, 0.6], [0.5, 0.1, 0.4], [np.nan, np.nan, np.nan]])
    gated = route.gate(model, markers)
    # markers: 0.4 for {a, b}, shared 3:1 as the model shares it; x keeps the markers' 0.6
    assert np.allclose(gated[0], [0.3, 0.1, 0.6])
    # the model put nothing on a or b: the markers' 0.6 for them is shared evenly
    assert np.allclose(gated[1], [0.3, 0.3, 0.4])
    assert np.allclose(gated[2], model[2])  # a cell the markers could not score keeps the model's answer
    assert np.allclose(gated.sum(1), 1.0)


def test_the_gate_leaves_a_cell_its_learned_answer_fits_to_the_model():
    route = CandidateRoute("ontology", ("a", "b", "x"), learned=("A", "B", "x"), owner=(0, 1, 2), unrouted=("x",))
    model = np.tile([0.6, 0.4, 0.0], (4, 1))
    markers = np.tile([0.0, 0.1, 0.9], (4, 1))
    plain = route.gate(model, markers)
    weighed = route.gate(model, markers, np.array([-30.0, 0.0, 30.0, np.nan]))
    assert np.allclose(weighed[0], plain[0])  # unlike its learned answer's training cells: the markers decide
    assert np.allclose(weighed[1], (plain[1] + model[1]) / 2)  # as alike as they are on average: half each
    assert np.allclose(weighed[2], model[2])  # far more alike: the model's answer stands
    assert np.allclose(weighed[3], plain[3])  # no typicality to weigh by: the plain gate
    assert np.allclose(weighed.sum(1), 1.0)
    assert weighed[0].argmax() == 2 and weighed[2].argmax() == 0


def test_the_finest_answer_is_the_best_learned_label_under_the_chosen_candidate():
    route = CandidateRoute("ontology", ("T cell", "x"), learned=("CD4T", "CD8T", "x"), owner=(0, 0, 1),
                           unrouted=("x",))
    loglik = np.array([[-2.0, -1.0, -0.1], [-0.5, -3.0, -4.0]])
    # the first cell's best string is the unrouted 'x'; gated to 'T cell', its answer is CD8T
    assert route.finest(loglik, [0, 1]) == ["CD8T", "x"]


def test_ontology_ids_read_common_spellings_and_never_move_a_recorded_name():
    from instructcell_agent.core_model.labels import _table, ontology_id

    assert ontology_id("CD16-positive monocyte") == ontology_id("CD16+ Monocyte") == "CL:0002396"
    assert ontology_id("nonclassical monocytes") == ontology_id("non-classical monocyte")
    assert ontology_id("T-helper 2 cells") == ontology_id("Th2") and ontology_id("regulatory T-cells") == "CL:0000815"
    assert ontology_id("Kupffer cells") == "CL:0000091" and ontology_id("hepatocytes") is None
    # every name the table records keeps its own term
    recorded = [(term, name) for term, entry in _table().items() for name in [entry["name"], *entry["labels"]]]
    assert all(ontology_id(name) == term for term, name in recorded)


def test_answers_spelt_another_common_way_map_onto_a_sets_labels():
    from instructcell_agent.core_model.labels import LabelMapper

    mapper = LabelMapper(("B", "CD14+Mono", "FCGR3A+Mono", "NK"))
    assert mapper.map("CD16-positive monocyte") == "FCGR3A+Mono" and mapper.map("B-cells") == "B"
    assert mapper.map("CD14-positive monocytes") == "CD14+Mono" and mapper.map("hepatocyte") is None
