"""Reference cells and typicality: how alike a cell is to the training cells of its label."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from instructcell_agent.core_model import reference as reference_module
from instructcell_agent.core_model.errors import CheckpointError
from instructcell_agent.core_model.reference import (
    MIN_CELLS, MIN_SHARED, correlation, fit_reference, load_reference, save_reference)
from synthetic import CELL_TYPES, N_GENES, make_counts, novel_counts

VOCAB = [f"GENE{j:03d}" for j in range(N_GENES)]
ALL = np.arange(N_GENES)


PLANTED = make_counts(280, seed=0)  # one draw (make_counts' background rates differ by seed, as batches do)


def next_type(labels: np.ndarray) -> np.ndarray:
    return np.array([CELL_TYPES[(CELL_TYPES.index(l) + 1) % len(CELL_TYPES)] for l in labels])


@pytest.fixture(scope="module")
def reference():
    train = PLANTED[:200]
    return fit_reference([("planted", train.X, train.obs["cell_type"].to_numpy())], N_GENES, per_label=30, seed=0,
                         tissues={"planted": "pancreas"})


@pytest.fixture(scope="module")
def fresh():
    cells = PLANTED[200:]  # cells the reference never saw, of the same types
    return sp.csr_matrix(cells.X), cells.obs["cell_type"].to_numpy().astype(str)


def test_correlation_is_pearson_of_log_cp10k_over_the_given_genes():
    rng = np.random.default_rng(0)
    counts = sp.random(6, 30, density=0.4, random_state=1, format="csr", dtype=np.float64) * 20
    counts = sp.vstack([counts, sp.csr_matrix((1, 30))], format="csr")  # a cell without counts
    profile = rng.random(30)
    got = correlation(counts, profile)
    dense = counts.toarray()
    for i in range(6):
        x = np.log1p(dense[i] / dense[i].sum() * 1e4)
        assert got[i] == pytest.approx(np.corrcoef(x, profile)[0, 1], abs=1e-9)
    assert np.isnan(got[6])


def test_cells_of_their_label_are_typical_and_others_are_not(reference, fresh):
    counts, labels = fresh
    own = reference.typicality(counts, ALL, labels)
    assert abs(np.median(own)) < 1 and (own < -3).mean() < 0.05
    # the same cells called the next type score lower, cell by cell, and far below 0
    wrong = reference.typicality(counts, ALL, next_type(labels))
    assert (wrong < own).mean() > 0.95 and np.median(wrong) < -3
    # cells of a type never learned: far below whatever learned label they are given
    novel = novel_counts(counts)
    best = np.max([reference.typicality(novel, ALL, [t] * len(labels)) for t in CELL_TYPES], 0)
    assert np.median(best) < -3 and (best < -2).mean() > 0.8


def test_the_score_follows_the_files_genes(reference, fresh):
    """A file holding every other gene: the reference cells are cut alike, so cells of their label
    stay typical (each type keeps half its markers) and mislabelled cells stay far below."""
    counts, labels = fresh
    half = ALL[::2]
    cut = sp.csr_matrix(counts.multiply(np.isin(ALL, half)[None, :]))  # absent genes are zero in the aligned matrix
    own = reference.typicality(cut, half, labels)
    assert abs(np.median(own)) < 1 and (own < -3).mean() < 0.05
    wrong = reference.typicality(cut, half, next_type(labels))
    assert (wrong < own).mean() > 0.9 and np.median(wrong) < -2.5
    # the kept cells' spread is remembered per set of genes read, never mixed up between them
    assert reference._stats_cache
    np.testing.assert_array_equal(reference.typicality(cut, half, labels), own)
    reference.clear_cache()
    assert not reference._stats_cache
    np.testing.assert_array_equal(reference.typicality(cut, half, labels), own)
    whole = fit_reference([("planted", PLANTED[:200].X, PLANTED[:200].obs["cell_type"].to_numpy())], N_GENES,
                          per_label=30, seed=0)
    np.testing.assert_array_equal(reference.typicality(counts, ALL, labels), whole.typicality(counts, ALL, labels))


def test_a_set_whose_file_held_fewer_genes_is_compared_over_those(fresh):
    """A training file cut to half the genes (as pbmc3k's is to 2,000): a whole file's cells of its
    types are compared with its cells over the genes both hold, not read against zeros the set never
    measured, so they stay typical; a set sharing fewer than MIN_SHARED of the file's genes is not
    compared at all (over a few genes other types pass)."""
    counts, labels = fresh
    train = PLANTED[:200]
    half = ALL[::2]  # keeps half of each type's planted markers (GENE000-015)
    cut = sp.csr_matrix(sp.csr_matrix(train.X).multiply(np.isin(ALL, half)[None, :]))
    cut_ref = fit_reference([("cut", cut, train.obs["cell_type"].to_numpy())], N_GENES)
    np.testing.assert_array_equal(cut_ref.measured["cut"], half)
    whole = cut_ref.typicality(counts, ALL, labels)
    np.testing.assert_allclose(whole, cut_ref.typicality(counts, half, labels))
    assert abs(np.median(whole)) < 1 and (whole < -3).mean() < 0.05
    wrong = cut_ref.typicality(counts, ALL, next_type(labels))
    assert (wrong < whole).mean() > 0.9 and np.median(wrong) < -2.5  # half the markers, as in the test above
    # a set holding a tenth of the genes shares too few with a whole file: no score, NaN
    few = ALL[:int(N_GENES * MIN_SHARED) - 1]
    tenth = sp.csr_matrix(sp.csr_matrix(train.X).multiply(np.isin(ALL, few)[None, :]))
    small = fit_reference([("few", tenth, train.obs["cell_type"].to_numpy())], N_GENES)
    assert np.isnan(small.typicality(counts, ALL, labels)).all()
    assert np.isfinite(small.typicality(counts, few, labels)).all()  # a file of those genes is compared


def test_no_typicality_without_a_label_reference_or_counts(reference, fresh):
    counts, labels = fresh
    counts = sp.vstack([counts[:3], sp.csr_matrix((1, N_GENES))], format="csr")
    got = reference.typicality(counts, ALL, [labels[0], None, "epsilon", labels[0]])
    assert np.isfinite(got[0]) and np.isnan(got[1:]).all()
    # a label with fewer kept cells than MIN_CELLS has no spread to measure against
    few = PLANTED[:4 * (MIN_CELLS - 1)]
    small = fit_reference([("few", few.X, few.obs["cell_type"].to_numpy())], N_GENES)
    assert np.isnan(small.typicality(counts[:1], ALL, [labels[0]])).all()


def test_a_label_two_sets_spell_alike_takes_the_better_set(fresh):
    counts, labels = fresh
    a, b = PLANTED[:120], PLANTED[120:200]
    b_labels = np.where(b.obs["cell_type"] == "alpha", "beta", "alpha")  # set b calls everything else 'alpha'
    one = fit_reference([("a", a.X, a.obs["cell_type"].to_numpy())], N_GENES)
    both = fit_reference([("a", a.X, a.obs["cell_type"].to_numpy()), ("b", b.X, b_labels)], N_GENES)
    alpha = labels == "alpha"
    np.testing.assert_allclose(both.typicality(counts[alpha], ALL, labels[alpha]),
                               np.fmax(one.typicality(counts[alpha], ALL, labels[alpha]),
                                       fit_reference([("b", b.X, b_labels)], N_GENES).typicality(
                                           counts[alpha], ALL, labels[alpha])))


def test_saved_reference_scores_alike_and_refuses_a_mismatch(reference, fresh, tmp_path):
    counts, labels = fresh
    save_reference(tmp_path, reference, VOCAB)
    loaded = load_reference(tmp_path, VOCAB)
    assert loaded.keys == reference.keys and loaded.info["per_label"] == 30 and loaded.tissues == reference.tissues
    # kept cells are stored as float16 log counts: scores move by rounding only
    np.testing.assert_allclose(loaded.typicality(counts, ALL, labels), reference.typicality(counts, ALL, labels),
                               atol=0.05)
    with pytest.raises(CheckpointError, match="another gene vocabulary"):
        load_reference(tmp_path, VOCAB[::-1])
    meta = json.loads((tmp_path / "reference.json").read_text())
    (tmp_path / "reference.json").write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="does not match"):
        load_reference(tmp_path, VOCAB)
    assert load_reference(tmp_path / "nothing", VOCAB) is None


def test_reordered_genes_give_the_same_scores(reference, fresh):
    import copy

    counts, labels = fresh
    order = np.random.default_rng(0).permutation(N_GENES)
    moved = copy.deepcopy(reference)
    moved.permute_genes(order)
    present = np.sort(np.flatnonzero(np.isin(order, ALL[::3])))  # the same genes, at their new positions
    np.testing.assert_allclose(moved.typicality(counts[:, order], present, labels),
                               reference.typicality(counts, ALL[::3], labels), atol=1e-9)


def test_a_population_is_scored_against_every_set_naming_it(fresh):
    """'alpha' of one set and 'Alpha' of another name one Cell Ontology term (pancreatic A cell):
    a cell given either spelling, or the term's own name, is scored against both sets' cells."""
    counts, labels = fresh
    a, b = PLANTED[:120], PLANTED[120:200]
    b_labels = np.where(b.obs["cell_type"] == "alpha", "delta", "Alpha")  # set b's 'Alpha' are other types
    both = fit_reference([("a", a.X, a.obs["cell_type"].to_numpy()), ("b", b.X, b_labels)], N_GENES)
    only_a = fit_reference([("a", a.X, a.obs["cell_type"].to_numpy())], N_GENES)
    only_b = fit_reference([("b", b.X, b_labels)], N_GENES)
    alpha = counts[labels == "alpha"]
    n = alpha.shape[0]
    expected = np.fmax(only_a.typicality(alpha, ALL, ["alpha"] * n), only_b.typicality(alpha, ALL, ["Alpha"] * n))
    for spelling in ("alpha", "Alpha", "pancreatic A cell"):
        np.testing.assert_allclose(both.typicality(alpha, ALL, [spelling] * n), expected)
    # set b's cells called 'Alpha' are not alpha cells: against them alone, alpha cells score far lower
    assert np.median(only_b.typicality(alpha, ALL, ["Alpha"] * n)) < np.median(expected) - 1.5
    # sets of different tissues do not pool: each spelling is its own set's; the term's name, both
    apart = fit_reference([("a", a.X, a.obs["cell_type"].to_numpy()), ("b", b.X, b_labels)], N_GENES,
                          tissues={"a": "pancreas", "b": "blood"})
    np.testing.assert_allclose(apart.typicality(alpha, ALL, ["alpha"] * n), only_a.typicality(alpha, ALL, ["alpha"] * n))
    np.testing.assert_allclose(apart.typicality(alpha, ALL, ["Alpha"] * n), only_b.typicality(alpha, ALL, ["Alpha"] * n))
    np.testing.assert_allclose(apart.typicality(alpha, ALL, ["pancreatic A cell"] * n), expected)


def test_the_score_reads_the_genes_that_tell_the_labels_apart(fresh, monkeypatch):
    """With n_informative, only the genes whose mean varies most across the labels count: the
    planted markers among them, and the score equal to the all-genes one on just those genes
    (depth, counted on all the file's genes, held out of the comparison: test_reference_depth.py)."""
    monkeypatch.setattr(reference_module, "DEPTH_FRACTIONS", (1.0,))
    counts, labels = fresh
    train = PLANTED[:200]
    parts = [("planted", train.X, train.obs["cell_type"].to_numpy())]
    some = fit_reference(parts, N_GENES, n_informative=30)
    every = fit_reference(parts, N_GENES, n_informative=0)
    assert every.genes is None and len(some.genes) == 30
    assert set(range(16)) <= set(some.genes)  # the four types' planted markers, GENE000-015
    np.testing.assert_allclose(some.typicality(counts, ALL, labels), every.typicality(counts, some.genes, labels))
    # a file's missing genes stay missing: the score reads what both hold
    half = ALL[::2]
    np.testing.assert_allclose(some.typicality(counts, half, labels),
                               every.typicality(counts, np.intersect1d(half, some.genes), labels))
    assert (some.typicality(counts, ALL, next_type(labels)) < -3).mean() > 0.9
