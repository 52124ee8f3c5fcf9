"""Typicality measured at the cell's own depth (core_model/reference.py: DepthCurve)."""

import numpy as np
import pytest
import scipy.sparse as sp

from instructcell_agent.core_model import reference as reference_module
from instructcell_agent.core_model.reference import (ATYPICAL_BELOW, DEPTH_FRACTIONS, DepthCurve, fit_reference,
                                                     pseudo_counts, thin)

N_GENES = 400


def _profiles(rng):
    """Two types sharing a housekeeping background, each with its own 40 marker genes."""
    base = rng.gamma(0.5, 1.0, N_GENES)
    a, b = base.copy(), base.copy()
    a[:40] += 20.0
    b[40:80] += 20.0
    return a / a.sum(), b / b.sum()


def _cells(rng, profile, n, depth):
    return sp.csr_matrix(rng.poisson(profile[None, :] * rng.uniform(0.7, 1.3, (n, 1)) * depth).astype(np.float32))


@pytest.fixture(scope="module")
def reference_and_cells():
    rng = np.random.default_rng(0)
    pa, pb = _profiles(rng)
    train_a, train_b = _cells(rng, pa, 60, 3000), _cells(rng, pb, 60, 3000)
    counts = sp.vstack([train_a, train_b]).tocsr()
    labels = np.array(["A"] * 60 + ["B"] * 60)
    reference = fit_reference([("set", counts, labels)], N_GENES, per_label=40, n_informative=0)
    return reference, rng, _cells(rng, pa, 80, 3000), _cells(rng, pb, 80, 3000)


def test_shallow_cells_of_the_label_are_not_called_atypical(reference_and_cells, monkeypatch):
    reference, rng, query_a, _ = reference_and_cells
    present, labels = np.arange(N_GENES), ["A"] * query_a.shape[0]
    assert np.mean(reference.typicality(query_a, present, labels) < ATYPICAL_BELOW) < 0.05
    shallow = {f: thin(query_a, f, rng) for f in (0.2, 0.05)}
    for fraction, cells in shallow.items():
        assert np.mean(reference.typicality(cells, present, labels) < ATYPICAL_BELOW) < 0.05, fraction
    # measured against the kept cells at their own depth only, the same cells fall below
    monkeypatch.setattr(reference_module, "DEPTH_FRACTIONS", (1.0,))
    reference.clear_cache()
    try:
        assert np.mean(reference.typicality(shallow[0.05], present, labels) < ATYPICAL_BELOW) > 0.5
    finally:
        reference.clear_cache()


def test_shallow_cells_of_another_type_stay_atypical(reference_and_cells):
    reference, rng, _, query_b = reference_and_cells
    present = np.arange(N_GENES)
    for fraction in (1.0, 0.2, 0.05):
        cells = query_b if fraction == 1.0 else thin(query_b, fraction, rng)
        assert np.mean(reference.typicality(cells, present, ["A"] * cells.shape[0]) < ATYPICAL_BELOW) > 0.9, fraction


def test_normalised_and_logged_files_are_measured_at_the_depth_of_their_counts(reference_and_cells):
    reference, rng, query_a, _ = reference_and_cells
    shallow = thin(query_a, 0.05, rng)
    totals = np.asarray(shallow.sum(1)).ravel()
    normalised = sp.csr_matrix(sp.diags(1e4 / totals) @ shallow)
    present = np.arange(N_GENES)
    labels = ["A"] * shallow.shape[0]
    np.testing.assert_allclose(reference.typicality(normalised, present, labels),
                               reference.typicality(shallow, present, labels), atol=1e-6)


def test_thinning_keeps_a_share_of_each_cells_counts():
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(20.0, (50, 30)).astype(np.float32))
    before = counts.copy()
    per_cell = np.linspace(0.1, 1.0, 50)
    thinned = thin(counts, per_cell, np.random.default_rng(1))
    kept = np.asarray(thinned.sum(1)).ravel() / np.asarray(counts.sum(1)).ravel()
    assert abs(kept[:10].mean() - per_cell[:10].mean()) < 0.05 and kept[-1] == 1.0
    assert (counts != before).nnz == 0  # the input is left as it was


def test_pseudo_counts_gives_back_counts_normalised_per_cell():
    counts = sp.csr_matrix(np.array([[0, 1, 3, 0, 7], [2, 0, 0, 5, 1], [0, 0, 0, 0, 0]], dtype=float))
    scaled = sp.csr_matrix(sp.diags([10.0 / 11, 1e4 / 8, 1.0]) @ counts)
    np.testing.assert_array_equal(pseudo_counts(scaled).toarray(), counts.toarray())  # 1e4 / 8: whole numbers
    np.testing.assert_array_equal(pseudo_counts(counts).toarray(), counts.toarray())


def test_depth_curve_interpolates_between_levels_and_keeps_the_full_depth_above():
    curve = DepthCurve(depth=np.array([1000.0, 500.0, 250.0]), centre=np.array([0.9, 0.7, 0.5]),
                       spread=np.array([0.1, 0.2, 0.3]))
    centre, spread = curve.at(np.array([4000.0, 1000.0, np.sqrt(1000 * 500), 250.0, 10.0]))
    np.testing.assert_allclose(centre, [0.9, 0.9, 0.8, 0.5, 0.5])
    np.testing.assert_allclose(spread, [0.1, 0.1, 0.15, 0.3, 0.3])
    assert DEPTH_FRACTIONS[0] == 1.0 and list(DEPTH_FRACTIONS) == sorted(DEPTH_FRACTIONS, reverse=True)
