"""Aggregation arithmetic on hand-made attributions (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from instructcell_agent.interpret.aggregate import (
    cell_scores, label_means, per_cell_top, rank_genes_groups_layout, rankings)

GENES = ["A", "B", "C", "D"]
VALUES = np.array([[2.0, -1.0, 0.5, 9.0],
                   [1.0, 3.0, -2.0, 0.0],
                   [0.2, 0.1, 0.4, 0.0]], dtype=np.float32)
INPUTS = np.array([[1.0, 1.0, 1.0, 0.0],   # D not expressed: its 9.0 (a plain gradient) must not count
                   [1.0, 1.0, 1.0, 1.0],
                   [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)


def test_raw_scores_drop_unexpressed_genes():
    scores = cell_scores(VALUES, INPUTS, "none")
    np.testing.assert_array_equal(scores[0], [2.0, -1.0, 0.5, 0.0])
    assert not scores[2].any()


def test_minmax_keeps_supporting_genes_scaled_per_cell():
    scores = cell_scores(VALUES, INPUTS, "minmax")
    np.testing.assert_allclose(scores[0], [1.0, 0.0, 0.25, 0.0])
    np.testing.assert_allclose(scores[1], [1 / 3, 1.0, 0.0, 0.0])
    assert not scores[2].any()  # nothing expressed: zeros, no division by zero
    with pytest.raises(ValueError, match="normalize"):
        cell_scores(VALUES, INPUTS, "zscore")


def test_label_means_and_rankings():
    means = label_means(cell_scores(VALUES, INPUTS, "none"), ["x", "y", "x"], GENES, order=["y", "x", "absent"])
    assert list(means.index) == ["y", "x"]
    np.testing.assert_allclose(means.loc["x"], [1.0, -0.5, 0.25, 0.0])
    ranked = rankings(means, 3)
    assert ranked["x"][0] == ["A", "C", "D"]
    assert rankings(means, 3, positive_only=True)["x"][0] == ["A", "C"]


def test_per_cell_top_pads_cells_expressing_few_genes():
    idx, vals = per_cell_top(cell_scores(VALUES, INPUTS, "none"), INPUTS, 2)
    assert idx[0].tolist() == [0, 2] and idx[1].tolist() == [1, 0]
    assert idx[2].tolist() == [-1, -1] and np.isnan(vals[2]).all()


def test_layout_is_rank_genes_groups_shaped():
    scores = cell_scores(VALUES, INPUTS, "none")
    groups = ["x", "y", "x"]
    layout = rank_genes_groups_layout(label_means(scores, groups, GENES), 2, "grp", "m", INPUTS, groups)
    assert layout["names"].dtype.names == ("x", "y")
    assert list(layout["names"]["y"]) == ["B", "A"]
    assert layout["params"]["groupby"] == "grp" and np.isnan(layout["pvals"]["x"]).all()
    # log2 fold change of mean expression (log1p space, as scanpy computes it): A in x vs y.
    expected = np.log2((np.expm1(0.5) + 1e-9) / (np.expm1(1.0) + 1e-9))
    assert layout["logfoldchanges"]["x"][0] == pytest.approx(expected, rel=1e-5)
