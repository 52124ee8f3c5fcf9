"""Alignment of AnnData inputs to a gene vocabulary, on built cases and on the shared sets."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from instructcell_agent.core_model.alignment import AlignedData, SmallPanelWarning, align_to_vocab
from instructcell_agent.core_model.errors import (
    GeneOverlapError,
    InputFileError,
    InvalidValuesError,
    LabelKeyError,
)
from instructcell_agent.core_model.values import detect_value_type

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("INSTRUCTCELL_SHARED", REPO_ROOT.parent / "shared"))
CATALOG = SHARED / "data" / "catalog.json"
needs_shared = pytest.mark.skipif(not CATALOG.is_file(), reason="shared data folder not found")


def _adata(x: np.ndarray, genes: list[str], var: pd.DataFrame | None = None) -> ad.AnnData:
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(x.shape[0])])
    var = var if var is not None else pd.DataFrame(index=genes)
    var.index = genes
    return ad.AnnData(X=sp.csr_matrix(x.astype(np.float32)), obs=obs, var=var)


def _counts(n_cells: int, n_genes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(0.5, 2.0, size=n_genes)[None, :], size=(n_cells, n_genes)).astype(
        np.float32
    )


def test_report_numbers_exact() -> None:
    vocab = ["CD4", "CD8A", "CD19", "PTPRC", "MS4A1", "LYZ", "GNLY", "NKG7"]
    genes = ["CD4", "CD19", "LYZ", "FOO1", "BAR2", "NKG7"]
    x = _counts(5, len(genes))
    result = align_to_vocab(_adata(x, genes), vocab, min_genes=4)
    assert isinstance(result, AlignedData)
    r = result.report
    assert (r.n_vocab, r.n_input_genes, r.n_matched) == (8, 6, 4)
    assert r.matched_fraction == pytest.approx(0.5)
    assert r.input_matched_fraction == pytest.approx(4 / 6)
    assert (r.id_type, r.species) == ("symbol", "human")
    assert r.value_type["kind"] == "raw_counts"
    assert r.missing_examples == ("CD8A", "PTPRC", "MS4A1", "GNLY")
    assert r.unmatched_input_examples == ("FOO1", "BAR2")
    assert "Matched 4 of 8 vocabulary genes (50.0%)" in r.summary()
    assert json.loads(json.dumps(r.to_dict()))["n_matched"] == 4

    assert result.X.shape == (5, 8) and result.X.dtype == np.float32
    assert result.obs_names == [f"cell{i}" for i in range(5)]
    dense = result.X.toarray()
    for j, gene in enumerate(vocab):
        expected = x[:, genes.index(gene)] if gene in genes else np.zeros(5)
        np.testing.assert_array_equal(dense[:, j], expected)


def test_duplicate_symbols_are_summed() -> None:
    # A repeated symbol and an Ensembl id of the same gene (mixed in a symbol list) all land on
    # one vocabulary gene and must add up.
    genes = ["CD4", "CD4", "ENSG00000010610.9"]
    x = np.array([[1, 2, 4], [0, 3, 5]], dtype=np.float32)
    adata = ad.AnnData(
        X=sp.csr_matrix(x),
        obs=pd.DataFrame(index=["a", "b"]),
        var=pd.DataFrame(index=["g0", "g1", "g2"]),
    )
    adata.var["symbol"] = genes
    result = align_to_vocab(adata, ["CD4", "CD8A"], gene_key="symbol", min_genes=1)
    np.testing.assert_array_equal(result.X.toarray(), [[7, 0], [8, 0]])
    assert result.report.n_matched == 1
    assert any("summed" in note for note in result.report.notes)


def test_ensembl_var_names_and_log_values() -> None:
    genes = ["ENSG00000010610.10", "ENSG00000141510", "ENSG00000121410.3", "ENSG99999999999"]
    counts = _counts(40, 4, seed=2) + 1
    cp10k = counts / counts.sum(axis=1, keepdims=True) * 1e4
    result = align_to_vocab(_adata(np.log1p(cp10k), genes), ["TP53", "CD4", "A1BG"], min_genes=3)
    assert result.report.id_type == "ensembl"
    assert result.report.value_type["kind"] == "log1p"
    assert result.report.unmatched_input_examples == ("ENSG99999999999",)
    np.testing.assert_allclose(result.X.toarray(), cp10k[:, [1, 0, 2]], rtol=1e-3)


def test_ensembl_ids_missing_from_table_use_symbol_column() -> None:
    genes = ["ENSG00000010610", "ENSG99999999998"]
    var = pd.DataFrame({"gene_symbols": ["CD4", "CD8A"]})
    result = align_to_vocab(_adata(_counts(3, 2), genes, var), ["CD4", "CD8A"], min_genes=2)
    assert result.report.n_matched == 2


def test_ensembl_ids_the_table_names_unlike_the_model_use_symbol_column() -> None:
    # ENSG00000161570 is CCL5's id in Cell Ranger's GRCh38 (Ensembl 84) files; GENCODE v44 names
    # CCL5 by another id. ENSG00000010610 is CD4 in both; the table's name comes first.
    genes = ["ENSG00000010610", "ENSG00000161570"]
    var = pd.DataFrame({"gene_symbols": ["CD4-as-the-file-says", "CCL5"]})
    result = align_to_vocab(_adata(_counts(3, 2), genes, var), ["CD4", "CCL5"], min_genes=2)
    assert result.report.n_matched == 2
    # without the symbol column, CCL5's id is found through the name the older release gave it
    bare = align_to_vocab(_adata(_counts(3, 2), genes), ["CD4", "CCL5"], min_genes=1)
    assert bare.report.n_matched == 2 and any("not in GENCODE v44" in n for n in bare.report.notes)
    assert any("ENSG00000161570 as CCL5" in n for n in bare.report.notes)
    unknown = align_to_vocab(_adata(_counts(3, 2), ["ENSG00000010610", "ENSG99999999998"]), ["CD4", "CCL5"],
                             min_genes=1)
    assert unknown.report.n_matched == 1 and any("not in GENCODE v44" in n for n in unknown.report.notes)


def test_current_names_find_the_earlier_names_a_vocabulary_holds() -> None:
    # A vocabulary built from older files holds SARS (now SARS1) and RP11-206L10.9 (now LINC01409);
    # newer files name them by their current symbol or by id, and mouse files through orthologs.
    vocab = ["SARS", "RP11-206L10.9", "CD4"]
    x = _counts(4, 3)
    for genes in (["SARS1", "LINC01409", "CD4"], ["ENSG00000031698", "ENSG00000237491", "ENSG00000010610"]):
        result = align_to_vocab(_adata(x, genes), vocab, min_genes=3)
        assert result.report.n_matched == 3
        np.testing.assert_array_equal(result.X.toarray(), x)
        assert any(n.startswith("2 gene(s) matched under the name an older annotation release") for n in
                   result.report.notes)
    mouse = align_to_vocab(_adata(x, ["Sars", "Cd4", "Actb"]), vocab, min_genes=2)
    assert mouse.report.n_matched == 2 and mouse.X[:, 0].toarray().ravel().tolist() == x[:, 0].tolist()


def test_a_file_holding_both_names_keeps_them_apart() -> None:
    # The earlier name present in the file matches as itself; the current one is not added onto it.
    x = _counts(3, 3)
    result = align_to_vocab(_adata(x, ["SARS", "SARS1", "CD4"]), ["SARS", "CD4"], min_genes=2)
    assert result.report.n_matched == 2
    np.testing.assert_array_equal(result.X.toarray(), x[:, [0, 2]])
    assert not any("older annotation release" in n for n in result.report.notes)


def test_lower_cased_human_symbols_match() -> None:
    genes = ["cd4", "cd8a", "c1orf127", "gapdh"]
    result = align_to_vocab(_adata(_counts(3, 4), genes), ["CD4", "CD8A", "C1orf127", "GAPDH"], min_genes=4)
    assert result.report.n_matched == 4 and result.report.species == "human"


def test_mouse_symbols_matched_by_ortholog() -> None:
    genes = ["Cd19", "Ptprc", "Actb", "Gm12345"]
    result = align_to_vocab(_adata(_counts(4, 4), genes), ["CD19", "PTPRC", "ACTB", "GAPDH"],
                            min_genes=3)
    assert result.report.species == "mouse"
    assert result.report.n_matched == 3
    assert result.report.missing_examples == ("GAPDH",)


def test_genome_prefixed_names_of_one_genome_are_read_without_the_prefix() -> None:
    # a combined reference's matrix cut to its human genes keeps names such as GRCh38_CD4
    vocab = ["CD4", "CD8A", "CD19", "GAPDH"]
    x = _counts(4, 4)
    plain = align_to_vocab(_adata(x, vocab), vocab, min_genes=4)
    for prefix in ("GRCh38_", "hg19_"):
        result = align_to_vocab(_adata(x, [prefix + g for g in vocab]), vocab, min_genes=4)
        assert result.report.n_matched == 4
        np.testing.assert_array_equal(result.X.toarray(), plain.X.toarray())
        assert any(f"genome prefix {prefix[:-1]!r}" in note for note in result.report.notes)
    mouse = align_to_vocab(_adata(x, ["mm10___Cd4", "mm10___Cd8a", "mm10___Cd19", "mm10___Gapdh"]), vocab,
                           min_genes=4)
    assert mouse.report.species == "mouse" and mouse.report.n_matched == 4
    # an underscore in a few names is no genome's prefix
    odd = align_to_vocab(_adata(x, ["CD4", "CD8A", "CD19", "HLA_X"]), vocab, min_genes=3)
    assert odd.report.n_matched == 3 and not any("genome prefix" in n for n in odd.report.notes)


def test_genes_of_several_genomes_are_refused_with_the_reader_that_separates_them() -> None:
    vocab = ["CD4", "CD8A", "CD19", "GAPDH"]
    genes = ["GRCh38_CD4", "GRCh38_CD8A", "mm10___Cd19", "mm10___Gapdh"]
    with pytest.raises(InputFileError) as info:
        align_to_vocab(_adata(_counts(4, 4), genes), vocab, min_genes=2)
    assert "2 genomes" in str(info.value) and "genome='GRCh38'" in str(info.value) and "--genome" in str(info.value)


def test_var_names_of_no_genes_beside_a_column_of_names_read_that_column() -> None:
    vocab = ["CD4", "CD8A", "CD19", "GAPDH"]
    x = _counts(3, 5)
    var = pd.DataFrame({"n_cells": [3, 1, 2, 3, 0], "kind": ["a"] * 5,
                        "gene_name": ["CD4", "CD8A", "CD19", "GAPDH", "FOO1"]})
    result = align_to_vocab(_adata(x, [str(i) for i in range(5)], var), vocab, min_genes=3)
    assert result.report.n_matched == 4
    np.testing.assert_array_equal(result.X.toarray(), x[:, :4])
    assert "gene names read from var['gene_name'] instead" in result.report.notes[0]
    assert result.report.names_from == "var['gene_name']" and result.report.to_dict()["names_from"] == "var['gene_name']"
    # no column holding enough genes: refused as before
    with pytest.raises(GeneOverlapError):
        align_to_vocab(_adata(x, [str(i) for i in range(5)], var.drop(columns="gene_name")), vocab, min_genes=3)


def test_low_overlap_refused_with_numbers() -> None:
    vocab = [f"GENE{i}" for i in range(200)]
    genes = vocab[:37] + [f"OTHER{i}" for i in range(50)]
    with pytest.raises(GeneOverlapError) as info:
        align_to_vocab(_adata(_counts(3, len(genes)), genes), vocab, min_genes=100)
    message = str(info.value)
    assert "37 of 200" in message and "87" in message and "100" in message
    assert "GENE0" in message and "gene_key" in message and "species" in message


def test_input_unchanged_after_alignment() -> None:
    genes = ["CD4", "CD19", "LYZ"]
    x = np.log1p(_counts(6, 3) / 3.0)
    adata = _adata(x, genes)
    adata.layers["counts"] = sp.csr_matrix(_counts(6, 3))
    before = adata.copy()
    align_to_vocab(adata, ["CD4", "LYZ"], min_genes=1)
    align_to_vocab(adata, ["CD4", "LYZ"], layer="counts", min_genes=1)
    assert (adata.X != before.X).nnz == 0
    assert (adata.layers["counts"] != before.layers["counts"]).nnz == 0
    assert list(adata.var_names) == genes and adata.var.equals(before.var)
    assert adata.obs.equals(before.obs)


def test_zero_cells_and_bad_gene_key_refused() -> None:
    adata = _adata(np.zeros((0, 2)), ["CD4", "CD19"])
    with pytest.raises(InvalidValuesError, match="no cells"):
        align_to_vocab(adata, ["CD4"], min_genes=1)
    with pytest.raises(LabelKeyError, match="gene_key"):
        align_to_vocab(_adata(_counts(2, 2), ["CD4", "CD19"]), ["CD4"], gene_key="nope")


@needs_shared
def test_value_type_of_every_shared_dataset_agrees_with_catalog() -> None:
    catalog = json.loads(CATALOG.read_text())
    expected = {"raw_counts": {"raw_counts"}, "log_normalized": {"log1p"}}
    for entry in catalog:
        adata = ad.read_h5ad(SHARED / "data" / entry["path"])
        report = detect_value_type(adata.X)
        assert report.kind in expected[entry["values"]], (entry["name"], report)
        if report.kind == "log1p":
            assert report.log_base in (math.e, 2.0, 10.0)


@needs_shared
def test_mouse_dataset_matches_human_vocabulary() -> None:
    adata = ad.read_h5ad(SHARED / "data" / "cta" / "tabulamuris_immune_actinn.h5ad")
    orthologs = [
        "CD19", "CD3E", "PTPRC", "CD79A", "CD14", "MS4A1", "NKG7", "CD8A", "S100A8", "CD74"
    ]
    vocab = orthologs + ["GNLY", "LYZ"]  # GNLY has no mouse ortholog; Lyz1/2 none listed
    result = align_to_vocab(adata, vocab, min_genes=5)
    assert result.report.species == "mouse"
    assert result.report.n_matched == len(orthologs)
    assert set(result.report.missing_examples) == {"GNLY", "LYZ"}
    column_sums = np.asarray(result.X.sum(axis=0)).ravel()
    assert (column_sums[: len(orthologs)] > 0).all()
    cd19 = adata[:, "Cd19"].X.toarray().ravel()
    np.testing.assert_array_equal(result.X[:, 0].toarray().ravel(), cd19)


def _hvg_cut(n_vocab_in_raw: int, n_in_x: int) -> tuple[ad.AnnData, list[str]]:
    """A file as scanpy leaves it: X cut to a few genes, the full matrix in adata.raw."""
    vocab = [f"GENE{i}" for i in range(2000)]
    full = _adata(_counts(4, n_vocab_in_raw), vocab[:n_vocab_in_raw])
    full.raw = full
    return full[:, :n_in_x].copy(), vocab


def test_matched_lists_the_vocabulary_genes_present() -> None:
    result = align_to_vocab(_adata(_counts(3, 4), ["LYZ", "FOO", "CD4", "NKG7"]), ["CD4", "CD8A", "LYZ", "NKG7"],
                            min_genes=3)
    assert result.matched.tolist() == [0, 2, 3]


def test_raw_with_many_more_genes_is_pointed_out() -> None:
    adata, vocab = _hvg_cut(1800, 200)
    with pytest.warns(SmallPanelWarning, match="adata.raw holds 1,800 .* only 200.*use_raw=True"):
        result = align_to_vocab(adata, vocab)
    assert any("use_raw=True" in note for note in result.report.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading raw, or a raw that adds little, says nothing
        assert align_to_vocab(adata, vocab, use_raw=True).report.n_matched == 1800
        cut, _ = _hvg_cut(1100, 200)  # 900 more genes: under the threshold
        assert not align_to_vocab(cut, vocab).report.notes
