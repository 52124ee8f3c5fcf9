"""Matrix Market files as GEO serves them: per-sample prefixes, several samples in one folder,
features files of one or two columns, header lines, and either orientation."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from instructcell_agent.core_model.errors import InputFileError
from instructcell_agent.core_model.readers import cell_file_format, read_cells
from instructcell_agent.core_model.samples import read_samples
from synthetic import make_counts, write_cellranger


@pytest.fixture(scope="module")
def cells():
    adata = make_counts(12, seed=2)
    adata.var["gene_ids"] = [f"ENSG{j:011d}" for j in range(adata.n_vars)]
    return adata


def _write_text(path, lines) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as fh:
        fh.write("".join(line + "\n" for line in lines))


def _geo_folder(cells, folder, samples=("GSM1_ctrl_", "GSM2_stim_")):
    """Cell Ranger's three files per sample, each renamed with the sample's GEO prefix."""
    source = folder / "cellranger"
    write_cellranger(cells, source, "mtx")
    for prefix in samples:
        for f in source.iterdir():
            shutil.copy(f, folder / f"{prefix}{f.name}")
    shutil.rmtree(source)


def test_prefixed_files_read_as_their_sample_and_the_folder_names_them(cells, tmp_path):
    _geo_folder(cells, tmp_path)
    matrix = tmp_path / "GSM1_ctrl_matrix.mtx.gz"
    assert cell_file_format(matrix) == "10x_mtx"
    got = read_cells(matrix)
    assert list(got.obs_names) == list(cells.obs_names) and list(got.var_names) == list(cells.var_names)
    assert list(got.var["gene_ids"]) == list(cells.var["gene_ids"])
    np.testing.assert_array_equal(got.X.toarray(), cells.X.toarray())
    with pytest.raises(InputFileError, match="holds 2 matrices .*GSM1_ctrl_matrix.mtx.gz, GSM2_stim_matrix.mtx.gz"
                                             ".*pass one matrix file, or several"):
        read_cells(tmp_path)
    both = read_samples([matrix, tmp_path / "GSM2_stim_matrix.mtx.gz"])
    assert list(both.obs["sample"].unique()) == ["GSM1_ctrl", "GSM2_stim"] and both.n_obs == 2 * cells.n_obs


@pytest.mark.parametrize("columns, header", [(1, False), (2, False), (2, True), (3, True)])
def test_features_files_authors_wrote_themselves(cells, tmp_path, columns, header):
    scipy.io.mmwrite(tmp_path / "matrix.mtx", sp.coo_matrix(cells.X.T))
    rows = [[i, s, "Gene Expression"][:columns] for i, s in zip(cells.var["gene_ids"], cells.var_names)]
    _write_text(tmp_path / "features.tsv.gz", (["gene_id\tgene_name\ttype"[: 7 + 10 * (columns - 1)]] if header
                                                else []) + ["\t".join(r) for r in rows])
    _write_text(tmp_path / "barcodes.tsv.gz", (["barcode"] if header else []) + list(cells.obs_names))
    got = read_cells(tmp_path)
    assert list(got.var_names) == (list(cells.var_names) if columns > 1 else list(cells.var["gene_ids"]))
    assert list(got.obs_names) == list(cells.obs_names)
    np.testing.assert_array_equal(got.X.toarray(), cells.X.toarray())


def test_a_matrix_of_barcodes_by_features_is_read_the_right_way_round(cells, tmp_path):
    scipy.io.mmwrite(tmp_path / "s_matrix.mtx", sp.coo_matrix(cells.X))  # cells in rows
    _write_text(tmp_path / "s_genes.tsv", [f"{i}\t{s}" for i, s in zip(cells.var["gene_ids"], cells.var_names)])
    _write_text(tmp_path / "s_barcodes.tsv", list(cells.obs_names))
    got = read_cells(tmp_path / "s_matrix.mtx")
    np.testing.assert_array_equal(got.X.toarray(), cells.X.toarray())


@pytest.mark.parametrize("drop, message", [("barcodes", "no barcodes file beside it"),
                                           ("features", "no features file beside it")])
def test_a_missing_companion_is_named(cells, tmp_path, drop, message):
    _geo_folder(cells, tmp_path, samples=("GSM1_",))
    (tmp_path / f"GSM1_{drop}.tsv.gz").unlink()
    with pytest.raises(InputFileError, match=f"GSM1_matrix.mtx.gz has {message} .*GSM1_{drop}.tsv.gz"):
        read_cells(tmp_path / "GSM1_matrix.mtx.gz")


def test_lists_of_another_sample_are_refused(cells, tmp_path):
    _geo_folder(cells, tmp_path, samples=("GSM1_",))
    _write_text(tmp_path / "GSM1_barcodes.tsv.gz", list(cells.obs_names[:5]))
    with pytest.raises(InputFileError, match="lists 5 barcodes, but the matrix has 12"):
        read_cells(tmp_path / "GSM1_matrix.mtx.gz")


@pytest.mark.parametrize("tool", ["kallisto", "alevin-fry"])
def test_pseudoaligners_outputs_read_as_cells_by_genes(cells, tmp_path, tool):
    from instructcell_agent.core_model.samples import sample_name

    folder = tmp_path / "donor7" / ("counts_unfiltered" if tool == "kallisto" else "af_quant")
    folder.mkdir(parents=True)
    stem = "cells_x_genes" if tool == "kallisto" else "quants_mat"
    scipy.io.mmwrite(folder / f"{stem}.mtx", sp.coo_matrix(cells.X))  # both write cells in rows
    if tool == "kallisto":
        _write_text(folder / f"{stem}.genes.txt", list(cells.var["gene_ids"]))
        _write_text(folder / f"{stem}.genes.names.txt", list(cells.var_names))
        _write_text(folder / f"{stem}.barcodes.txt", list(cells.obs_names))
    else:
        _write_text(folder / f"{stem}_cols.txt", list(cells.var_names))
        _write_text(folder / f"{stem}_rows.txt", list(cells.obs_names))
    got = read_cells(folder)
    assert list(got.var_names) == list(cells.var_names) and list(got.obs_names) == list(cells.obs_names)
    if tool == "kallisto":  # the ids file beside the names file gives the ids
        assert list(got.var["gene_ids"]) == list(cells.var["gene_ids"])
    np.testing.assert_array_equal(got.X.toarray(), cells.X.toarray())
    assert sample_name(folder / f"{stem}.mtx") == "donor7"


def test_lists_named_after_the_matrix_prefix_are_found(cells, tmp_path):
    scipy.io.mmwrite(tmp_path / "GSE9_counts.mtx", sp.coo_matrix(cells.X.T))
    _write_text(tmp_path / "GSE9_genes.tsv.gz", [f"{i}\t{s}" for i, s in zip(cells.var["gene_ids"], cells.var_names)])
    _write_text(tmp_path / "GSE9_cell_barcodes.txt", list(cells.obs_names))
    _write_text(tmp_path / "GSE9_README.txt", ["not a list"])
    got = read_cells(tmp_path / "GSE9_counts.mtx")
    assert list(got.var_names) == list(cells.var_names) and list(got.obs_names) == list(cells.obs_names)
    _write_text(tmp_path / "GSE9_barcodes_old.txt", list(cells.obs_names))  # two candidates: not guessed
    with pytest.raises(InputFileError, match="no barcodes file beside it.*beside it: GSE9_barcodes_old.txt, "
                                             "GSE9_cell_barcodes.txt"):
        read_cells(tmp_path / "GSE9_counts.mtx")
