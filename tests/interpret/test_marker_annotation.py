"""`annotate_by_markers`: cell types from known markers alone, for types the model never learned."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from synthetic import CELL_TYPES, make_counts, marker_genes, novel_counts

from instructcell_agent.core_model.errors import InputFileError, InvalidValuesError
from instructcell_agent.core_model.labels import UNASSIGNED
from instructcell_agent.interpret.marker_annotation import (MarkerCoverageWarning, UnknownMarkersError,
                                                            annotate_by_markers, marker_scores,
                                                            read_marker_file)
from instructcell_agent.interpret.markers import MarkerDB, load_marker_db

# the planted markers of each synthetic type, named as a database names its types, with no label table
PLANTED = MarkerDB("planted", {f"{t.capitalize()} cells": {"any": frozenset(marker_genes(t))} for t in CELL_TYPES})


def _accuracy(result, cells) -> float:
    return float((np.asarray(result.labels, str) == cells.obs["cell_type"].astype(str).to_numpy()).mean())


def test_planted_types_are_named_from_their_markers(tiny_model):
    cells = make_counts(80, seed=4)
    result = annotate_by_markers(cells, list(CELL_TYPES), marker_db=PLANTED, model=tiny_model)
    assert _accuracy(result, cells) == 1.0
    probs = result.probabilities
    assert list(probs.columns) == list(CELL_TYPES) and probs.index.equals(cells.obs_names)
    assert np.allclose(probs.sum(1), 1) and np.allclose(probs.max(1), result.confidence)
    assert result.provenance["candidate_route"] == "known markers"
    found = result.provenance["markers"]
    assert found["candidate"] == list(CELL_TYPES) and found["source"] == ["planted"] * 4
    assert set(found["genes"][0].split(",")) == set(marker_genes("alpha"))


def test_the_markers_raised_in_a_type_s_cells_are_listed_first(tiny_model):
    cells = make_counts(40, seed=4)
    own = {"alpha": ["GENE100", "GENE101", *marker_genes("alpha")]}  # two background genes among them
    result = annotate_by_markers(cells, list(CELL_TYPES), markers=own, marker_db=PLANTED, model=tiny_model)
    listed = result.provenance["markers"]["genes"][0].split(",")
    assert set(listed[:4]) == set(marker_genes("alpha")) and set(listed[4:]) == {"GENE100", "GENE101"}


def test_cell_scores_do_not_depend_on_the_candidate_order(tiny_model):
    cells = make_counts(40, seed=6)
    forward = annotate_by_markers(cells, list(CELL_TYPES), marker_db=PLANTED, model=tiny_model)
    backward = annotate_by_markers(cells, list(CELL_TYPES)[::-1], marker_db=PLANTED, model=tiny_model)
    assert list(forward.labels) == list(backward.labels)
    assert np.allclose(forward.probabilities[list(CELL_TYPES)], backward.probabilities[list(CELL_TYPES)])


def test_names_are_read_whatever_their_case_plural_or_trailing_cell():
    for name in ("alpha", "Alpha cell", "ALPHA CELLS", "alpha-cells"):
        assert PLANTED.cell_types_for(name) == ["Alpha cells"], name
    assert PLANTED.cell_types_for("epsilon") is None
    shipped = load_marker_db("panglaodb")
    assert shipped.cell_types_for("Kupffer cell") == ["Kupffer cells"]
    assert shipped.cell_types_for("hepatocytes") == ["Hepatocytes"]
    assert shipped.cell_types_for("T cell") == ["T cells"]  # through our label table
    assert "ALB" in shipped.genes["Hepatocytes"]["human"]  # every PanglaoDB type ships, not just the mapped ones


def test_an_unknown_type_is_refused_with_the_names_closest_to_it(tiny_model):
    cells = make_counts(20, seed=1)
    with pytest.raises(UnknownMarkersError, match=r"'alpah'.*close: 'Alpha cells'.*markers=\{label"):
        annotate_by_markers(cells, ["alpah", "beta"], marker_db=PLANTED, model=tiny_model)


def test_own_markers_name_a_type_the_database_lacks(tiny_model):
    cells = make_counts(40, seed=2)
    novel = cells[:10].copy()
    novel.X = novel_counts(novel.X)  # no planted marker; GENE060-067 raised instead
    novel.obs_names = [f"novel{i}" for i in range(10)]
    both = ad.concat([cells, novel])
    own = {"novel": [f"GENE{j:03d}" for j in range(60, 68)]}
    result = annotate_by_markers(both, [*CELL_TYPES, "novel"], markers=own, marker_db=PLANTED, model=tiny_model)
    labels = np.asarray(result.labels, str)
    assert (labels[-10:] == "novel").all()
    assert (labels[:40] == cells.obs["cell_type"].astype(str).to_numpy()).mean() >= 0.95
    assert result.provenance["markers"]["source"][-1] == "given"


def test_a_candidate_whose_markers_the_file_lacks_is_never_answered(tiny_model):
    cells = make_counts(40, seed=3)
    cells = cells[:, [g for g in cells.var_names if g not in marker_genes("delta")]].copy()
    with pytest.warns(MarkerCoverageWarning, match="'delta'"):
        result = annotate_by_markers(cells, list(CELL_TYPES), marker_db=PLANTED, model=tiny_model)
    assert "delta" not in set(result.labels)
    assert np.allclose(result.probabilities["delta"], 0)
    assert (np.asarray(result.labels, str) == cells.obs["cell_type"].astype(str).to_numpy())[
        cells.obs["cell_type"].astype(str).to_numpy() != "delta"].all()
    with pytest.raises(UnknownMarkersError, match="fewer than two candidates"):
        annotate_by_markers(cells, ["alpha", "delta"], markers={"alpha": ["GENE000"], "delta": marker_genes("delta")},
                            marker_db=PLANTED, model=tiny_model)


def test_bad_requests_are_refused_before_any_reading(tiny_model):
    cells = make_counts(20, seed=1)
    with pytest.raises(ValueError, match="at least two candidates"):
        annotate_by_markers(cells, ["alpha"], marker_db=PLANTED, model=tiny_model)
    with pytest.raises(ValueError, match="duplicates"):
        annotate_by_markers(cells, ["alpha", "alpha"], marker_db=PLANTED, model=tiny_model)
    with pytest.raises(ValueError, match="unassigned_below"):
        annotate_by_markers(cells, ["alpha", "beta"], marker_db=PLANTED, model=tiny_model, unassigned_below=2)
    empty = cells.copy()
    empty.X = sp.csr_matrix(empty.shape, dtype=np.float32)
    with pytest.raises(InvalidValuesError, match="none of the 20 cells has counts"):
        annotate_by_markers(empty, ["alpha", "beta"], marker_db=PLANTED, model=tiny_model)


def test_low_confidence_cells_can_be_unassigned_and_empty_cells_stay_unlabelled(tiny_model):
    cells = make_counts(40, seed=5)
    X = cells.X.toarray()
    X[0] = 0  # a cell with no counts
    cells.X = sp.csr_matrix(X)
    before = cells.copy()
    plain = annotate_by_markers(cells, list(CELL_TYPES), marker_db=PLANTED, model=tiny_model)
    assert plain.labels[0] is None and np.isnan(plain.confidence[0])
    threshold = float(np.quantile(plain.confidence[1:], 0.5))
    strict = annotate_by_markers(cells, list(CELL_TYPES), marker_db=PLANTED, model=tiny_model,
                                 unassigned_below=threshold)
    low = np.asarray(plain.confidence[1:]) < threshold
    assert list(np.asarray(strict.labels[1:]) == UNASSIGNED) == list(low)
    assert list(np.asarray(strict.labels[1:])[~low]) == list(np.asarray(plain.labels[1:])[~low])
    assert (before.X != cells.X).nnz == 0 and before.obs.equals(cells.obs)  # the input is untouched


def test_the_answers_are_written_to_an_h5ad(tiny_model, tmp_path):
    cells = make_counts(40, seed=7)
    cells.obs["cell_type"] = cells.obs["cell_type"].astype(str).replace({"alpha": "CD4+/CD25 T Reg"})
    cands = ["CD4+/CD25 T Reg", "beta", "gamma", "delta"]
    own = {"CD4+/CD25 T Reg": marker_genes("alpha")}
    result = annotate_by_markers(cells, cands, markers=own, marker_db=PLANTED, model=tiny_model)
    out = result.to_adata(cells.copy(), key_added="bym")
    out.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    assert list(back.obs["bym_label"].astype(str)) == list(cells.obs["cell_type"].astype(str))
    assert list(back.uns["bym"]["markers"]["candidate"]) == cands
    assert back.obsm["bym_probabilities"].shape == (40, 4)


def test_a_cell_s_rank_score_ignores_the_other_cells(tiny_model):
    cells = make_counts(40, seed=8)
    X = sp.csr_matrix(cells.X)
    sets = {t: set(marker_genes(t)) for t in CELL_TYPES}
    whole, _ = marker_scores(X, list(cells.var_names), sets, pooling="rank")
    alone, _ = marker_scores(X[:4], list(cells.var_names), sets, pooling="rank")
    assert np.allclose(whole[:4], alone)
    # z-scores over the file's cells, by contrast, move with the cells beside them
    relative_whole, _ = marker_scores(X, list(cells.var_names), sets, pooling="ztest")
    relative_alone, _ = marker_scores(X[:4], list(cells.var_names), sets, pooling="ztest")
    assert not np.allclose(relative_whole[:4], relative_alone)


@pytest.mark.parametrize("name,text", [
    ("m.json", json.dumps({"hepatocyte": ["ALB", "APOA1"], "kupffer": ["CD5L", "VSIG4"]})),
    ("m.csv", "cell_type,gene\nhepatocyte,ALB\nhepatocyte,APOA1\nkupffer,\"CD5L, VSIG4\"\n"),
    ("m.tsv", "hepatocyte\tALB APOA1\nkupffer\tCD5L;VSIG4\n"),
])
def test_marker_files_are_read_as_json_or_tables(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert read_marker_file(path) == {"hepatocyte": ["ALB", "APOA1"], "kupffer": ["CD5L", "VSIG4"]}


def test_a_bad_marker_file_says_what_to_write(tmp_path):
    with pytest.raises(InputFileError, match="cannot read"):
        read_marker_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InputFileError, match="JSON object of gene lists"):
        read_marker_file(tmp_path / "bad.json")
    (tmp_path / "empty.csv").write_text("cell_type,gene\n")
    with pytest.raises(InputFileError, match="names no markers"):
        read_marker_file(tmp_path / "empty.csv")
