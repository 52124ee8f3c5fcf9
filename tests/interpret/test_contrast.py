"""Contrastive explanations (`versus`): why label A rather than label B.

The explained quantity is log p(A) - log p(B); its gradient is the difference of the two labels'
gradients, which is what these tests check against, beside the runner-up choice, the pair
probability the deletion test measures, and what `explain` groups, leaves out and validates."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from synthetic import CELL_TYPES, make_counts, marker_genes

from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.errors import LabelKeyError
from instructcell_agent.interpret.api import explain
from instructcell_agent.interpret.attribution import RUNNER_UP, IGSettings, attribute, label_probability
from instructcell_agent.interpret.faithfulness import deletion_test
from instructcell_agent.interpret.markers import (MarkerDB, contrast_markers, is_known, marker_report,
                                                  wilcoxon_pair_rankings)

CANDS = list(CELL_TYPES)


@pytest.fixture(scope="module")
def cells():
    return make_counts(16, seed=5)


def _prefix(model):
    from instructcell_agent.api import DEFAULT_INSTRUCTIONS

    return [model.model.prefix_text(DEFAULT_INSTRUCTIONS[("annotation", True)].replace("{choices}", ", ".join(CANDS)))]


@pytest.mark.parametrize("method", ["gradient", "saliency", "ig"])
def test_a_contrast_attributes_the_difference_of_the_two_labels(tiny_model, cells, method):
    X = align_to_vocab(cells[:6], tiny_model.vocab).X
    prefix = _prefix(tiny_model)
    target, versus = np.array([0, 1, 2, 3, 0, 1]), np.array([1, 0, 0, 2, 3, 3])
    settings = dict(method=method, ig=IGSettings(n_steps=16, segments=4, tolerance=None))  # fixed points: linear
    a = attribute(tiny_model.model, X, CANDS, prefix, target=target, **settings)
    b = attribute(tiny_model.model, X, CANDS, prefix, target=versus, **settings)
    both = attribute(tiny_model.model, X, CANDS, prefix, target=target, versus=versus, **settings)
    np.testing.assert_array_equal(both.versus, versus)
    np.testing.assert_allclose(both.values, a.values - b.values, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(both.probabilities, a.probabilities, rtol=1e-5)
    assert np.abs(both.values).max() > 0


def test_the_runner_up_is_the_most_probable_other_candidate(tiny_model, cells):
    X = align_to_vocab(cells, tiny_model.vocab).X
    prefix = _prefix(tiny_model)
    a = attribute(tiny_model.model, X, CANDS, prefix, method="gradient", versus=RUNNER_UP)
    order = np.argsort(-a.probabilities, axis=1)
    np.testing.assert_array_equal(a.target, order[:, 0])
    np.testing.assert_array_equal(a.versus, order[:, 1])
    # a given target that is not the top one is contrasted with the top one
    given = order[:, 2]
    b = attribute(tiny_model.model, X, CANDS, prefix, method="ig", target=given, versus=RUNNER_UP,
                  ig=IGSettings(n_steps=8, segments=2, tolerance=None))
    np.testing.assert_array_equal(b.versus, order[:, 0])
    # a broader target (alpha or beta) is never contrasted with a candidate under it
    c = attribute(tiny_model.model, X, CANDS, prefix, method="gradient", target=np.full(16, 4),
                  broader=[("alpha or beta", (0, 1))], versus=RUNNER_UP)
    np.testing.assert_array_equal(c.versus, 2 + np.argmax(c.probabilities[:, 2:4], axis=1))


def test_versus_is_checked(tiny_model, cells):
    X = align_to_vocab(cells[:4], tiny_model.vocab).X
    with pytest.raises(ValueError, match="versus must be"):
        attribute(tiny_model.model, X, CANDS, _prefix(tiny_model), versus="second")
    with pytest.raises(ValueError, match="one index"):
        attribute(tiny_model.model, X, CANDS, _prefix(tiny_model), versus=np.array([0, 1, 4, 0]))


def test_the_deletion_test_measures_the_pair(tiny_model, cells):
    X = align_to_vocab(cells, tiny_model.vocab).X
    prefix = _prefix(tiny_model)
    a = attribute(tiny_model.model, X, CANDS, prefix, versus=RUNNER_UP)
    rows = np.arange(16)
    pair = a.probabilities[rows, a.target] / (a.probabilities[rows, a.target] + a.probabilities[rows, a.versus])
    again = label_probability(tiny_model.model, a.inputs, CANDS, prefix, np.zeros(16, dtype=np.int64), a.target,
                              versus=a.versus)
    np.testing.assert_allclose(again, pair, rtol=1e-4)
    result = deletion_test(tiny_model.model, a, k=4, n_random=1)
    assert result.mean_probability == pytest.approx(float(pair.mean()), rel=1e-5)
    assert result.mean_logodds_drop_top > result.mean_logodds_drop_random
    assert 0 <= result.flipped_random <= result.flipped_top <= 1


def test_explain_groups_by_pair_and_leaves_out_the_versus_label(tiny_model, cells):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = explain(cells, model=tiny_model, labels="cell_type", candidates=CANDS, versus="beta", top_k=4)
    truth = cells.obs["cell_type"].astype(str).to_numpy()
    kept = truth != "beta"
    assert result.obs_names == list(cells.obs_names[kept])
    assert list(result.groups) == [f"{t} vs beta" for t in truth[kept]]
    assert result.contrasts == {f"{t} vs beta": (t, "beta") for t in ("alpha", "gamma", "delta")}
    assert result.labels == ["alpha vs beta", "gamma vs beta", "delta vs beta"]  # candidates' order
    assert result.provenance["versus"] == "beta"
    assert any("left out: nothing to contrast" in note for note in result.provenance["notes"])
    out = result.to_adata(None)
    assert set(out.obs["instructcell_saliency_versus"]) == {"beta"}
    assert out.uns["instructcell_saliency"]["params"]["versus"] == "beta"
    # the planted model ranks each type's own markers first against beta too
    for label, (a, _) in result.contrasts.items():
        top = result.top_genes.loc[result.top_genes["label"] == label, "gene"].tolist()
        assert set(top[:2]) <= set(marker_genes(a)), (label, top)


def test_explain_refuses_a_versus_it_cannot_contrast(tiny_model, cells):
    with pytest.raises(LabelKeyError, match="neither an obs column nor among the candidates"):
        explain(cells, model=tiny_model, labels="cell_type", candidates=CANDS, versus="hepatocyte")
    betas = cells[cells.obs["cell_type"] == "beta"].copy()
    with pytest.raises(LabelKeyError, match="nothing to explain"):
        explain(betas, model=tiny_model, labels="cell_type", candidates=CANDS, versus="beta")


def test_contrast_markers_are_those_of_a_not_listed_for_b():
    db = MarkerDB("toy", {"A cells": {"any": frozenset({"G1", "G2", "G3"})}, "B cells": {"any": frozenset({"G3"})},
                          "B2 cells": {"any": frozenset({"G1", "G2", "G3"})}},
                  {"a": ["A cells"], "b": ["B cells"], "b2": ["B2 cells"]})
    assert contrast_markers(db, "a", "b") == {"G1", "G2"}
    assert contrast_markers(db, "a", "unmapped") is None
    pairs = {"a vs b": ("a", "b"), "a vs b2": ("a", "b2")}
    report = marker_report({"a vs b": ["G1", "G3", "G9"], "a vs b2": ["G1"]}, db, k=2, pairs=pairs).set_index("label")
    assert report.at["a vs b", "precision_at_k"] == 0.5 and report.at["a vs b", "known_in_top"] == "G1"
    assert report.at["a vs b", "cell_types"] == "A cells (not B cells)"
    assert np.isnan(report.at["a vs b2", "precision_at_k"]) and "lists no marker" in report.at["a vs b2", "note"]
    assert is_known(db, "a vs b", ["G1", "G3"], pair=("a", "b")) == [True, False]


def test_wilcoxon_pairs_rank_a_against_b_only():
    rng = np.random.default_rng(0)
    X = rng.poisson(1.0, size=(30, 5)).astype(np.float32)
    labels = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 9 + ["d"])
    X[:10, 2] += 6  # high in a against b
    X[20:29, 4] += 9  # high in c only: the rest of the cells must not enter a vs b
    ranked = wilcoxon_pair_rankings(np.log1p(X), [f"G{i}" for i in range(5)], labels,
                                    {"a vs b": ("a", "b"), "a vs d": ("a", "d")}, n_genes=5)
    assert list(ranked) == ["a vs b"]  # d has one cell
    assert ranked["a vs b"][0] == "G2"


def test_integrated_gradients_of_a_contrast_add_up_to_it(tiny_model, cells):
    # completeness: the attributions sum to the contrast at the cell minus at the reference, refined
    # piece by piece until the gap is within the tolerance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = explain(cells[:8], model=tiny_model, candidates=CANDS, versus=RUNNER_UP, method="ig", n_steps=32,
                         ig_tolerance=0.05, compare_wilcoxon=False)
    a = result.attributions
    assert a.delta is not None and np.abs(a.delta).max() < 0.05
    assert (a.versus != a.target).all() and np.abs(a.values).sum() > 0


def test_versus_can_be_each_cells_label_in_an_obs_column(tiny_model, cells):
    # an author's labels: the model's answer explained against the author's, where they differ
    author = cells.copy()
    truth = author.obs["cell_type"].astype(str).to_numpy()
    other = np.asarray([CANDS[(CANDS.index(t) + 1) % 4] for t in truth], dtype=object)
    other[2], other[5] = None, truth[5]  # one cell without an author label, one where they agree
    author.obs["author"] = other
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = explain(author, model=tiny_model, labels="cell_type", candidates=CANDS, versus="author", top_k=4)
    kept = [i for i in range(16) if i not in (2, 5)]
    assert result.obs_names == [author.obs_names[i] for i in kept]
    assert list(result.groups) == [f"{truth[i]} vs {other[i]}" for i in kept]
    notes = " ".join(result.provenance["notes"])
    assert "1 of 16 cells left out: their versus label is missing" in notes and "nothing to contrast" in notes
    assert "its label in obs['author']" in notes
    # the same as a list, one per cell; an author label that is no candidate is refused
    listed = explain(author, model=tiny_model, labels="cell_type", candidates=CANDS, versus=list(other), top_k=4)
    np.testing.assert_allclose(listed.attributions.values, result.attributions.values, rtol=1e-5, atol=1e-7)
    # spelled the author's way: read through the Cell Ontology ('pancreatic A cell' is 'alpha')
    author.obs["author"] = ["pancreatic A cell" if o == "alpha" else o for o in other]
    named = explain(author, model=tiny_model, labels="cell_type", candidates=CANDS, versus="author", top_k=4)
    assert list(named.groups) == list(result.groups)
    assert any("'pancreatic A cell' as 'alpha'" in note for note in named.provenance["notes"])
    # a label naming no candidate: its cells are left out, and with no cell left the call is refused
    author.obs["author"] = ["acinar" if i == 0 else o for i, o in enumerate(other)]
    partial = explain(author, model=tiny_model, labels="cell_type", candidates=CANDS, versus="author", top_k=4)
    assert author.obs_names[0] not in partial.obs_names
    assert any("naming no candidate ('acinar')" in note for note in partial.provenance["notes"])
    author.obs["author"] = ["acinar"] * 16
    with pytest.raises(LabelKeyError, match="labels found: \\['acinar'\\]"):
        explain(author, model=tiny_model, labels="cell_type", candidates=CANDS, versus="author")
