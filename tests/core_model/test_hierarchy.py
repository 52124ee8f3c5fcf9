"""The finest answer reaching a probability: a label, or a broader Cell Ontology type summing the
labels under it (core_model/hierarchy.py)."""

from __future__ import annotations

import numpy as np
import pytest

from instructcell_agent.core_model.hierarchy import AT_LABEL, BROADER, broader_cover, consistent, count_right, resolve

SHORT = {"mono": "CD14+ Monocyte", "b": "CD19+ B", "treg": "CD4+/CD25 T Reg", "cd4_naive": "CD4+/CD45RA+/CD25- Naive T",
         "cd4_memory": "CD4+/CD45RO+ Memory", "nk": "CD56+ NK", "cd8": "CD8+ Cytotoxic T",
         "cd8_naive": "CD8+/CD45RA+ Naive Cytotoxic"}  # zheng2017's labels but CD34+ and Th2
ZHENG = list(SHORT.values())


def _row(**probs: float) -> np.ndarray:
    """One cell's probabilities over ZHENG, labels named as in SHORT."""
    row = np.zeros(len(ZHENG))
    for key, p in probs.items():
        row[ZHENG.index(SHORT[key])] = p
    assert row.sum() == pytest.approx(1.0)
    return row


def test_a_sure_label_stays_and_an_unsure_one_climbs_to_the_type_that_holds_the_probability():
    probs = np.stack([
        _row(b=0.95, mono=0.05),  # sure at its label
        _row(cd4_memory=0.45, cd4_naive=0.30, treg=0.20, cd8=0.05),  # a CD4+ T cell, subset unsure
        _row(cd4_memory=0.50, cd8=0.45, mono=0.05),  # some T cell
        _row(nk=0.50, cd8=0.45, mono=0.05),  # NK or T: a lymphocyte
        _row(mono=0.50, b=0.50),  # monocyte or B cell: nothing in the table holds both
    ])
    found = resolve(probs, ZHENG, 0.9)
    assert list(found.names) == ["CD19+ B", "CD4-positive, alpha-beta T cell", "T cell", "lymphocyte", "Unassigned"]
    assert list(found.levels) == [AT_LABEL, BROADER, BROADER, BROADER, None]
    assert list(found.ontology_ids) == ["CL:0000236", "CL:0000624", "CL:0000084", "CL:0000542", None]
    np.testing.assert_allclose(found.confidence[:4], [0.95, 0.95, 0.95, 0.95])
    assert np.isnan(found.confidence[4])
    # a higher bar climbs further: the CD4+ subsets hold 0.95, all T cells 1.0
    assert resolve(probs[1:2], ZHENG, 0.96).names[0] == "T cell"
    assert resolve(probs[0:1], ZHENG, 0.96).names[0] == "Unassigned"  # B cell 0.95; no type holds B and monocytes


def test_one_population_in_several_sets_spellings_is_one_answer_at_its_label():
    labels = ["B", "CD19+ B", "CD14+Mono", "CD14+ Monocyte"]
    found = resolve(np.array([[0.50, 0.45, 0.05, 0.0], [0.0, 0.1, 0.4, 0.5]]), labels, 0.9)
    assert list(found.names) == ["B", "CD14+ Monocyte"] and list(found.levels) == [AT_LABEL, AT_LABEL]
    np.testing.assert_allclose(found.confidence, [0.95, 0.9])


def test_labels_without_a_term_answer_alone_and_unanswered_cells_stay_empty():
    labels = ["Ngn3 high EP", "Ngn3 low EP", "Alpha", "Beta"]
    probs = np.array([[0.95, 0.05, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.6, 0.4], [np.nan] * 4])
    found = resolve(probs, labels, 0.9)
    assert list(found.names) == ["Ngn3 high EP", "Unassigned", "pancreatic endocrine cell", None]
    assert list(found.levels) == [AT_LABEL, None, BROADER, None]


def test_a_probability_of_one_counts_as_reaching_one():
    found = resolve(np.array([[1.0, 0.0, 0.0], [0.3, 0.7, 0.0]]), ["alpha", "beta", "acinar"], 1.0)
    assert list(found.names) == ["alpha", "pancreatic endocrine cell"]


def test_a_type_over_every_candidate_is_no_answer():
    # its probability is 1 whatever the cell: it would repeat the candidates, not read the cell
    found = resolve(np.array([[0.6, 0.4], [0.95, 0.05]]), ["alpha", "beta"], 0.9)
    assert list(found.names) == ["Unassigned", "alpha"]
    found = resolve(np.array([[0.5, 0.4, 0.1]]), ["CD4T", "CD8T", "NK"], 0.9)  # T cell covers two of three
    assert list(found.names) == ["T cell"]


@pytest.mark.parametrize("at", [0.5, 0.3, 0, 1.01, float("nan"), True, "0.9"])
def test_thresholds_that_do_not_single_out_one_answer_are_refused(at):
    with pytest.raises(ValueError, match="resolve_at"):
        resolve(np.array([[0.6, 0.4]]), ["alpha", "beta"], at)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="3 labels"):
        resolve(np.array([[0.6, 0.4]]), ["alpha", "beta", "delta"], 0.9)


@pytest.mark.parametrize("answer, known, right", [
    ("CD4-positive, alpha-beta T cell", "CD4+/CD45RO+ Memory", True),  # broader
    ("CD4-positive, alpha-beta T cell", "CD4+/CD25 T Reg", True),  # zheng2017's Tregs are CD4+
    ("T cell", "CD8T", True),
    ("CD8+ Cytotoxic T", "CD8T", True),  # finer, as evaluate reads answers
    ("CD19+ B", "B", True),  # synonyms
    ("b", "B", True),
    ("CD8-positive, alpha-beta T cell", "CD4T", False),  # a sibling
    ("lymphocyte", "CD14+Mono", False),
    ("Ngn3 high EP", "Ngn3 low EP", False),
])
def test_consistent_reads_broader_finer_and_synonymous_answers_as_right(answer, known, right):
    assert consistent(answer, known) is right


def test_broader_cover_names_the_labels_under_a_type_that_is_an_answer_of_its_own():
    assert broader_cover("T cell", ZHENG) == (2, 3, 4, 6, 7)
    assert broader_cover("lymphocyte", ["CD4T", "CD8T", "NK"]) is None  # over every label: no answer
    assert broader_cover("CD56+ NK", ZHENG) is None  # one label: that label
    assert broader_cover("hepatocyte", ZHENG) is None  # no term


def test_count_right_counts_each_level_and_leaves_unknown_labels_out():
    found = count_right(["T cell", "CD19+ B", "T cell", "Unassigned", None], [BROADER, AT_LABEL, BROADER, None, None],
                        ["CD8T", "NK", None, "B", "B"])
    assert found == {"n_label": 1, "right_label": 0, "n_broader": 1, "right_broader": 1, "n_unassigned": 1}
