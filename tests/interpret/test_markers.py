"""Marker validation: precision on constructed tables, our label mapping, the shipped marker table."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from synthetic import CELL_TYPES, make_counts, marker_genes

from instructcell_agent.core_model.errors import InputFileError
from instructcell_agent.interpret import markers
from instructcell_agent.interpret.markers import (
    MarkerDB, is_known, load_marker_db, marker_map, marker_report, precision_at_k, wilcoxon_rankings)

REPO_ROOT = Path(__file__).resolve().parents[2]

DB = MarkerDB(
    "toy",
    {"Alpha cells": {"human": frozenset({"GCG", "TTR", "IRX2"}), "mouse": frozenset({"GCG", "ARX"})},
     "Beta cells": {"any": frozenset({"INS"}), "human": frozenset({"IAPP"})}},
    {"alpha": ["Alpha cells"], "Beta": ["Beta cells"]},
)


def test_labels_find_their_markers_by_any_spelling():
    assert DB.cell_types_for("ALPHA") == ["Alpha cells"]
    # through the Cell Ontology: a user's name for the population the table maps as 'alpha'
    assert DB.cell_types_for("pancreatic A cell") == ["Alpha cells"]
    assert DB.markers_for("type B pancreatic cell", "human") == {"INS", "IAPP"}
    assert DB.cell_types_for("B cell") is None and DB.cell_types_for("no such cell") is None


def test_precision_at_k_counts_known_genes_in_the_head():
    known = {"GCG", "TTR"}
    assert precision_at_k(["GCG", "INS", "ttr", "X"], known, k=2) == 0.5
    assert precision_at_k(["GCG", "INS", "ttr", "X"], known, k=4) == 0.5
    assert precision_at_k(["gcg", "TTR"], known, k=10) == 0.2  # missing places are misses
    assert precision_at_k([], known, k=10) == 0.0


def test_marker_report_on_a_constructed_table():
    rankings = {"alpha": ["GCG", "INS", "TTR", "ARX", "X1"], "beta": ["X1", "INS", "IAPP"], "acinar": ["PRSS1"]}
    report = marker_report(rankings, DB, species="human", k=4, vocab=["GCG", "TTR", "INS", "X1"]).set_index("label")
    assert report.at["alpha", "precision_at_k"] == 0.5  # GCG, TTR of GCG/INS/TTR/ARX (ARX is mouse-only)
    assert report.at["alpha", "known_in_top"] == "GCG,TTR"
    assert report.at["alpha", "n_known"] == 3 and report.at["alpha", "n_known_in_vocab"] == 2
    assert report.at["beta", "precision_at_k"] == 0.5  # INS, IAPP of 4 places; label matched case-insensitively
    assert report.at["beta", "cell_types"] == "Beta cells"
    assert math.isnan(report.at["acinar", "precision_at_k"]) and "not in our toy mapping" in report.at["acinar", "note"]
    mouse = marker_report(rankings, DB, species="mouse", k=4).set_index("label")
    assert mouse.at["alpha", "precision_at_k"] == 0.5  # GCG, ARX


def test_is_known_says_unknown_when_it_cannot_tell():
    assert is_known(DB, "alpha", ["gcg", "INS"], "human") == [True, False]
    assert is_known(DB, "acinar", ["GCG"], "human") == [None]
    assert is_known(None, "alpha", ["GCG"]) == [None]


def test_marker_validation_needs_no_shared_data(monkeypatch, tiny_model, tmp_path):
    monkeypatch.setenv("INSTRUCTCELL_SHARED", str(tmp_path))  # a folder with no data in it
    db = load_marker_db("panglaodb")
    assert "GCG" in db.markers_for("alpha", "human") and db.source.startswith("known_markers.tsv.gz")
    from instructcell_agent.interpret.api import explain

    result = explain(make_counts(8, seed=3), model=tiny_model, dataset="planted")
    # the tiny model's labels are pancreas names our table maps: each gets a precision, not a note
    assert result.marker_report["precision_at_k"].notna().all()
    assert result.top_genes["is_known_marker"].notna().all()
    assert result.provenance["marker_db"] == "panglaodb"
    assert result.marker_report.set_index("label").loc["alpha", "n_known"] > 10


def test_marker_report_without_a_database_says_so():
    report = marker_report({"alpha": ["GCG"]}, None)
    assert "no marker database" in report.at[0, "note"] and math.isnan(report.at[0, "precision_at_k"])


def test_unknown_database_is_refused():
    with pytest.raises(ValueError, match="panglaodb"):
        load_marker_db("nope")


def test_wilcoxon_ranks_the_planted_markers():
    adata = make_counts(80, seed=2)
    X = adata.X.toarray()
    log_expr = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    ranked = wilcoxon_rankings(log_expr, list(adata.var_names), adata.obs["cell_type"].astype(str), n_genes=4)
    assert set(ranked) == set(CELL_TYPES)
    for label, genes in ranked.items():
        assert set(genes) == set(marker_genes(label))


def test_every_mapped_cell_type_has_genes_in_the_shipped_table():
    for name, section in marker_map().items():
        db = load_marker_db(name)
        missing = sorted({t for types in section.values() for t in types} - set(db.genes))
        assert not missing, (name, missing)


def _build_script():
    spec = importlib.util.spec_from_file_location("build_marker_table", REPO_ROOT / "scripts" / "build_marker_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_keeps_the_mapped_types_of_each_database(tmp_path):
    build = _build_script()
    pangl = tmp_path / "p.tsv"
    pangl.write_text("species\tofficial gene symbol\tcell type\n"
                     "Mm Hs\tGcg\tAlpha cells\nHs\tIRX2\tAlpha cells\nNone\tTTR\tAlpha cells\n"
                     "Mm Hs\tINS\tBeta cells\n")
    cm2 = tmp_path / "c.csv"
    cm2.write_text('CT,Gene\nAlpha cell,"GCG, ARX"\nB cell,CD19\n')
    sources = {"panglaodb": build.panglaodb_rows(pangl), "cellmarker2": build.cellmarker2_rows(cm2)}
    wanted = build.mapped_types({"_about": "x", "panglaodb": {"alpha": ["Alpha cells"]},
                                 "cellmarker2": {"alpha": ["Alpha cell"]}})
    assert build.table_rows(sources, wanted) == [
        ("cellmarker2", "Alpha cell", "human", "ARX"), ("cellmarker2", "Alpha cell", "human", "GCG"),
        ("panglaodb", "Alpha cells", "any", "TTR"), ("panglaodb", "Alpha cells", "human", "GCG"),
        ("panglaodb", "Alpha cells", "human", "IRX2"), ("panglaodb", "Alpha cells", "mouse", "GCG")]
    with pytest.raises(ValueError, match="Gamma cells"):
        build.table_rows(sources, {"panglaodb": {"Gamma cells"}, "cellmarker2": set()})


def test_the_shipped_table_is_what_the_script_builds_from_the_shared_databases(tmp_path):
    build = _build_script()
    if any(not (build.default_shared() / "data" / "markers" / f).is_file()
           for files in build.DATABASES.values() for f in files):
        pytest.skip("shared marker databases not available")
    assert build.main(["--out", str(tmp_path / "t.tsv.gz"), "--organs-out", str(tmp_path / "o.json")]) == 0
    assert (tmp_path / "t.tsv.gz").read_bytes() == (REPO_ROOT / "interpret" / markers.TABLE).read_bytes()
    assert (tmp_path / "o.json").read_bytes() == (REPO_ROOT / "interpret" / "marker_organs.json").read_bytes()


def test_every_shared_annotation_label_is_mapped():
    db = load_marker_db("panglaodb")
    from instructcell_agent.core_model.datasets import shared_root

    try:
        catalog_path = shared_root() / "data" / "catalog.json"
    except InputFileError:
        pytest.skip("shared data not available")
    catalog = json.loads(catalog_path.read_text())
    labels = {l for entry in catalog if entry["task"] in ("cta", "compat") for l in entry.get("classes", {})}
    assert labels and not [l for l in labels if db.cell_types_for(l) is None]


def test_panglaodb_knows_the_textbook_markers():
    db = load_marker_db("panglaodb")
    assert {"INS", "IAPP"} <= db.markers_for("beta", "human")
    assert "GCG" in db.markers_for("Alpha", "mouse")
    assert "CD14" in db.markers_for("CD14+ Monocyte", "human")
    assert "PPY" in db.markers_for("gamma", "human")
