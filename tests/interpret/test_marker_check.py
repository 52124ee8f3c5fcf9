"""`marker_check`: known markers against the labels a file's cells were given."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from synthetic import CELL_TYPES, make_counts, marker_genes

from instructcell_agent.core_model.errors import LabelKeyError
from instructcell_agent.core_model.labels import UNASSIGNED
from instructcell_agent.interpret.marker_check import marker_check
from instructcell_agent.interpret.markers import MarkerDB

# the planted markers of each synthetic type, as a database would list them
PLANTED = MarkerDB("planted", {f"{t} cells": {"any": frozenset(marker_genes(t))} for t in CELL_TYPES},
                   {t: [f"{t} cells"] for t in CELL_TYPES})


def test_right_labels_are_supported_and_name_their_markers(tiny_model):
    cells = make_counts(80, seed=4)
    check = marker_check(cells, "cell_type", model=tiny_model, marker_db=PLANTED)
    table = check.table.set_index("label")
    assert list(table.index) == sorted(CELL_TYPES)
    assert (table["support"] == "supported").all() and (table["auroc"] > 0.95).all()
    assert (table["n_markers"] == 4).all() and (table["n_cells"] == 20).all()
    for label in CELL_TYPES:  # the genes listed first are the planted ones, expressed far more in the label's cells
        first = table.at[label, "top_markers"].split(", ")[0].split()
        assert first[0] in marker_genes(label)
        inside, outside = map(float, first[1].split("/"))
        assert inside > outside
    assert check.scores.index.equals(cells.obs_names)


def test_swapped_labels_are_not_supported(tiny_model):
    cells = make_counts(80, seed=4)
    labels = cells.obs["cell_type"].astype(str).replace({"alpha": "beta", "beta": "alpha"}).to_numpy()
    table = marker_check(cells, list(labels), model=tiny_model, marker_db=PLANTED).table.set_index("label")
    assert table.loc[["alpha", "beta"], "support"].eq("not supported").all()
    assert (table.loc[["alpha", "beta"], "auroc"] < 0.5).all()
    assert table.loc[["gamma", "delta"], "support"].eq("supported").all()


def test_another_spelling_of_a_label_is_not_counted_against_it(tiny_model):
    cells = make_counts(80, seed=4)
    labels = cells.obs["cell_type"].astype(str).to_numpy().copy()
    alpha = np.flatnonzero(labels == "alpha")
    labels[alpha[::2]] = "pancreatic A cell"  # the Cell Ontology's name for the same population
    table = marker_check(cells, list(labels), model=tiny_model, marker_db=PLANTED).table.set_index("label")
    assert table.loc[["alpha", "pancreatic A cell"], "support"].eq("supported").all()
    assert (table.loc[["alpha", "pancreatic A cell"], "auroc"] > 0.95).all()
    assert table.at["alpha", "n_cells"] == 10 and table.at["pancreatic A cell", "n_cells"] == 10


def test_labels_named_as_the_database_names_its_types_are_checked(tiny_model):
    # what annotate_by_markers answers ('Kupffer cell' for PanglaoDB's 'Kupffer cells'), no label table
    cells = make_counts(80, seed=4)
    by_name = MarkerDB("planted", {f"{t.capitalize()} cells": {"any": frozenset(marker_genes(t))} for t in CELL_TYPES})
    labels = [f"{t} cell" for t in cells.obs["cell_type"].astype(str)]
    table = marker_check(cells, labels, model=tiny_model, marker_db=by_name).table.set_index("label")
    assert (table["support"] == "supported").all() and (table["n_markers"] == 4).all()


def test_labels_it_cannot_check_say_why(tiny_model):
    cells = make_counts(40, seed=5)
    labels = cells.obs["cell_type"].astype(str).replace({"gamma": "stellate"}).to_numpy()
    table = marker_check(cells, list(labels), model=tiny_model, marker_db=PLANTED).table.set_index("label")
    assert table.at["stellate", "support"] == "no known markers" and np.isnan(table.at["stellate", "auroc"])
    one = marker_check(cells, ["alpha"] * cells.n_obs, model=tiny_model, marker_db=PLANTED).table
    assert one.at[0, "support"] == "no other label"


def test_labels_sharing_their_markers_are_named(tiny_model):
    cells = make_counts(40, seed=5)
    db = MarkerDB("shared", {"T": {"any": frozenset(marker_genes("alpha") + marker_genes("beta"))}},
                  {"alpha": ["T"], "beta": ["T"]})
    table = marker_check(cells, "cell_type", model=tiny_model, marker_db=db).table.set_index("label")
    assert table.at["alpha", "shares_markers_with"] == "beta" and table.at["beta", "shares_markers_with"] == "alpha"
    assert table.at["gamma", "shares_markers_with"] == ""


def test_unlabelled_cells_are_left_out_and_the_input_is_kept(tiny_model, tmp_path):
    cells = make_counts(40, seed=6)
    labels = cells.obs["cell_type"].astype(object).to_numpy()
    labels[:3], labels[3:5] = None, UNASSIGNED
    cells.obs["answer"] = labels
    before = cells.copy()
    check = marker_check(cells, "answer", model=tiny_model, marker_db=PLANTED)
    assert check.table["n_cells"].sum() == 35 and "of 40 cells left out" in check.summary()
    assert cells.obs.equals(before.obs) and (cells.X != before.X).nnz == 0
    as_list = marker_check(cells, list(labels), model=tiny_model, marker_db=PLANTED)  # None stays missing
    assert as_list.table.equals(check.table)
    out = check.to_adata(cells)
    assert np.isnan(out.obs["instructcell_marker_score"].iloc[:5]).all()
    assert out.obs["instructcell_marker_score"].iloc[5:].notna().all()
    out.write_h5ad(tmp_path / "checked.h5ad")
    back = ad.read_h5ad(tmp_path / "checked.h5ad")
    assert list(back.uns["instructcell_marker_check"]["label"]) == sorted(CELL_TYPES)


def test_a_missing_label_column_is_refused(tiny_model):
    with pytest.raises(LabelKeyError, match="not an obs column"):
        marker_check(make_counts(8), "no_such_column", model=tiny_model, marker_db=PLANTED)
