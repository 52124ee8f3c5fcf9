"""What each group of cells was answered: composition by a cluster or sample column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from instructcell_agent.composition import MAX_GROUPS, composition
from instructcell_agent.core_model.errors import InputFileError


def test_each_group_gets_its_most_frequent_answer_runner_up_and_the_cells_not_labelled():
    labels = ["B", "B", "B", "NK", None, "Unassigned", "NK", "NK", "T", "B"]
    conf = np.array([0.9, 0.8, 0.7, 0.6, np.nan, 0.3, 0.9, 0.9, 0.5, 0.4])
    groups = pd.Series(["10", "10", "10", "10", "10", "10", "9", "9", "9", np.nan])
    got = composition(labels, conf, groups, "leiden")
    assert list(got.table.index) == ["9", "10"]  # numeric order, not '10' before '9'
    ten = got.table.loc["10"]
    assert (ten["n_cells"], ten["answer"], ten["runner_up"], ten["not_labelled"]) == (6, "B", "NK", 2)
    assert ten["share"] == pytest.approx(3 / 6) and ten["runner_up_share"] == pytest.approx(1 / 6)
    assert ten["mean_confidence"] == pytest.approx(np.mean([0.9, 0.8, 0.7, 0.6]))  # labelled cells only
    nine = got.table.loc["9"]
    assert (nine["answer"], nine["share"], nine["runner_up"]) == ("NK", pytest.approx(2 / 3), "T")
    assert got.n_ungrouped == 1
    text = got.summary()
    assert "9: NK 0.67 of 3; T 0.33" in text and "10: B 0.50 of 6; NK 0.17; 2 not labelled" in text
    assert "1 cells without a value" in text
    stored = got.to_uns()["table"]
    assert stored["group"] == ["9", "10"] and stored["answer"] == ["NK", "B"]


def test_categories_keep_their_order_and_a_group_without_answers_says_so():
    groups = pd.Categorical(["ctrl", "stim", "stim"], categories=["stim", "ctrl", "unused"])
    got = composition([None, "B", "B"], np.array([np.nan, 0.9, 0.9]), pd.Series(groups), "condition")
    assert list(got.table.index) == ["stim", "ctrl"]  # the column's own order; empty categories left out
    ctrl = got.table.loc["ctrl"]
    assert ctrl["answer"] is None and ctrl["not_labelled"] == 1 and np.isnan(ctrl["mean_confidence"])
    assert got.to_uns()["table"]["answer"] == ["B", ""]  # an .h5ad stores no None
    assert "  ctrl: no answer 0.00 of 1; 1 not labelled" in got.summary()


def test_a_per_cell_column_is_refused():
    n = MAX_GROUPS + 1
    with pytest.raises(InputFileError, match="1,001 distinct values among 1,001 cells: a per-cell column"):
        composition(["B"] * n, np.ones(n), pd.Series([f"cell{i}" for i in range(n)]), "barcode")


def test_a_result_reads_groups_by_cell_name_and_keeps_category_order():
    from instructcell_agent.results import AnnotationResult

    result = AnnotationResult(obs_names=["a", "b", "c"], labels=np.array(["B", "NK", "NK"], dtype=object),
                              confidence=np.ones(3), answers=["B", "NK", "NK"],
                              provenance={"task": "annotation"}, probabilities=None)
    shuffled = pd.Series(pd.Categorical(["y", "x", "y"], categories=["y", "x"]), index=["c", "a", "b"])
    got = result.composition(shuffled, "sample")
    assert list(got.table.index) == ["y", "x"]  # the category order
    assert got.table.loc["x", "answer"] == "B" and got.table.loc["y", "answer"] == "NK"  # 'a' is in x, 'b' and 'c' in y
    with pytest.raises(ValueError, match="index does not hold the annotated cells' names"):
        result.composition(pd.Series(["x", "y", "z"]))
