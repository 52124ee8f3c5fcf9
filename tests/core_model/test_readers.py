"""Reading cells as users have them: Cell Ranger's .h5 and matrix folders, zarr stores, and the
refusals for folders and files that are none of them."""

from __future__ import annotations

import hashlib
import warnings

import h5py
import numpy as np
import pytest

from instructcell_agent.core_model.errors import InputFileError
from instructcell_agent.core_model.readers import cell_file_format, read_cells
from synthetic import make_barnyard, make_counts, write_cellranger


@pytest.fixture(scope="module")
def cells():
    adata = make_counts(24, seed=5)
    adata.var["gene_ids"] = [f"ENSG{j:011d}" for j in range(adata.n_vars)]
    return adata


def _digests(root) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout, name, kind", [("h5", "filtered_feature_bc_matrix.h5", "10x_h5"),
                                                ("h5_v2", "filtered_gene_bc_matrices_h5.h5", "10x_h5"),
                                                ("mtx", "filtered_feature_bc_matrix", "10x_mtx"),
                                                ("mtx_v2", "filtered_gene_bc_matrices", "10x_mtx")])
def test_cellranger_outputs_read_as_their_counts(cells, tmp_path, layout, name, kind):
    dest = tmp_path / name
    write_cellranger(cells, dest, layout, extra_features=0 if layout.endswith("v2") else 3)
    before = _digests(tmp_path)
    assert cell_file_format(dest) == kind
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about in a clean file
        got = read_cells(dest)
    assert _digests(tmp_path) == before  # read-only
    # the antibody features are dropped, gene symbols name the genes, Ensembl ids are kept
    assert list(got.var_names) == list(cells.var_names)
    assert list(got.var["gene_ids"]) == list(cells.var["gene_ids"])
    assert list(got.obs_names) == list(cells.obs_names)
    assert got.X.format == "csr"
    np.testing.assert_array_equal(got.X.toarray(), cells.X.toarray())


@pytest.mark.parametrize("layout", ["h5", "mtx"])
def test_a_mixed_species_matrix_reads_one_genome_when_asked(cells, tmp_path, layout):
    from instructcell_agent.core_model.readers import GenomeSelectionWarning

    barnyard, genomes = make_barnyard(cells)
    dest = tmp_path / ("f.h5" if layout == "h5" else "m")
    write_cellranger(barnyard, dest, layout, genomes=genomes)  # a folder records no genome: read from the ids
    before = _digests(tmp_path)
    # the refusal counts each species' cells, so the choice is an informed one
    with pytest.raises(InputFileError, match=r"counted against 2 genomes \(GRCh38, mm10\).*GRCh38 24, mm10 8; 2 "
                                             r"others.*genome="):
        read_cells(dest)
    with pytest.raises(InputFileError, match=r"genome 'hg19' is not in .*GRCh38, mm10"):
        read_cells(dest, genome="hg19")
    with pytest.warns(GenomeSelectionWarning, match=r"kept 24 of 34 cells.*left out 8 mostly on another.*2 with counts on several"):
        human = read_cells(dest, genome="GRCh38")
    assert list(human.obs_names) == list(cells.obs_names)
    assert list(human.var_names) == list(cells.var_names)  # prefix removed: the vocabulary matches them
    assert list(human.var["gene_ids"]) == list(cells.var["gene_ids"])
    np.testing.assert_array_equal(human.X.toarray(), cells.X.toarray())  # the mouse genes dropped
    assert (human.obs["genome_share"] >= 0.9).all()
    record = human.uns["genome_selection"]
    assert (record["cells_kept"], record["cells_other_genome"], record["cells_mixed"]) == (24, 8, 2)
    with pytest.warns(GenomeSelectionWarning):
        mouse = read_cells(dest, genome="mm10")
    assert list(mouse.obs_names) == [f"mouse{i}" for i in range(8)]
    assert mouse.var_names[0] == "Gene000" and mouse.n_vars == 30
    assert _digests(tmp_path) == before  # read-only


def test_an_h5ad_of_prefixed_symbols_reads_one_genome_when_asked(cells, tmp_path):
    # an AnnData someone made from a combined reference's matrix, keeping only the prefixed symbols
    from instructcell_agent.core_model.readers import GenomeSelectionWarning

    barnyard, _ = make_barnyard(cells)
    del barnyard.var["gene_ids"]
    barnyard.write_h5ad(tmp_path / "barnyard.h5ad")
    with pytest.raises(InputFileError, match=r"counted against 2 genomes \(GRCh38, mm10\)"):
        read_cells(tmp_path / "barnyard.h5ad")
    with pytest.warns(GenomeSelectionWarning, match="kept 24 of 34 cells"):
        human = read_cells(tmp_path / "barnyard.h5ad", genome="GRCh38")
    assert list(human.var_names) == list(cells.var_names)
    np.testing.assert_array_equal(human.X.toarray(), cells.X.toarray())
    # cut to its human genes, names still prefixed: one genome, which genome= may name
    barnyard[:, :cells.n_vars].copy().write_h5ad(tmp_path / "human_genes.h5ad")
    assert read_cells(tmp_path / "human_genes.h5ad", genome="GRCh38").n_vars == cells.n_vars
    with pytest.raises(InputFileError, match=r"holds one genome's genes \(GRCh38\)"):
        read_cells(tmp_path / "human_genes.h5ad", genome="mm10")


def test_genome_is_refused_for_a_file_of_one_genome(cells, tmp_path):
    write_cellranger(cells, tmp_path / "f.h5", "h5")
    assert read_cells(tmp_path / "f.h5", genome="GRCh38").n_obs == cells.n_obs  # the genome it holds
    with pytest.raises(InputFileError, match=r"genome='mm10'.*holds one genome's genes \(GRCh38\)"):
        read_cells(tmp_path / "f.h5", genome="mm10")
    write_cellranger(cells, tmp_path / "m", "mtx")
    with pytest.raises(InputFileError, match="genes without genome prefixes: leave genome out"):
        read_cells(tmp_path / "m", genome="GRCh38")


def test_the_matrix_file_itself_reads_its_folder(cells, tmp_path):
    write_cellranger(cells, tmp_path / "m", "mtx")
    assert cell_file_format(tmp_path / "m" / "matrix.mtx.gz") == "10x_mtx"
    np.testing.assert_array_equal(read_cells(tmp_path / "m" / "matrix.mtx.gz").X.toarray(), cells.X.toarray())


def test_repeated_symbols_are_made_unique_as_scanpy_does(cells, tmp_path):
    twice = cells.copy()
    twice.var_names = ["GENE000", "GENE000", *cells.var_names[2:]]
    write_cellranger(twice, tmp_path / "f.h5", "h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = read_cells(tmp_path / "f.h5")
    assert list(got.var_names[:2]) == ["GENE000", "GENE000-1"]
    assert got.var_names.is_unique


def test_zarr_stores_and_anndata_under_another_suffix(cells, tmp_path):
    import anndata

    for version in (2, 3):  # zarr's two store layouts (.zgroup / zarr.json)
        with warnings.catch_warnings(), anndata.settings.override(zarr_write_format=version):
            warnings.simplefilter("ignore")  # anndata's note on the zarr format version it writes
            cells.write_zarr(tmp_path / f"cells_v{version}.zarr")
    cells.write_h5ad(tmp_path / "cells.h5")
    for path, kind in ((tmp_path / "cells_v2.zarr", "zarr"), (tmp_path / "cells_v3.zarr", "zarr"),
                       (tmp_path / "cells.h5", "h5ad")):
        assert cell_file_format(path) == kind
        got = read_cells(path)
        assert list(got.obs["cell_type"]) == list(cells.obs["cell_type"])
        np.testing.assert_array_equal(got.X.toarray(), cells.X.toarray())


def test_a_cellranger_outs_folder_is_answered_with_the_file_to_pass(cells, tmp_path):
    outs = tmp_path / "sample1" / "outs"
    outs.mkdir(parents=True)
    write_cellranger(cells, outs / "filtered_feature_bc_matrix.h5", "h5")
    for given in (tmp_path / "sample1", outs):
        with pytest.raises(InputFileError, match="Cell Ranger's output: pass .*filtered_feature_bc_matrix.h5"):
            read_cells(given)
    per_sample = tmp_path / "multi" / "outs" / "per_sample_outs"
    for sample in ("A", "B"):
        (per_sample / sample / "count").mkdir(parents=True)
        write_cellranger(cells, per_sample / sample / "count" / "sample_filtered_feature_bc_matrix.h5", "h5")
    with pytest.raises(InputFileError, match="pass .*A/count/sample_filtered_feature_bc_matrix.h5 or .*B/count"):
        read_cells(tmp_path / "multi")


def _hdf5_of_something_else(folder) -> None:
    with h5py.File(folder / "f", "w") as f:
        f.create_group("something")


@pytest.mark.parametrize("build, message", [
    (lambda d: (d / "f").mkdir(), "neither a zarr store nor a matrix folder"),
    (lambda d: ((d / "f").mkdir(), (d / "f" / "matrix.mtx.gz").write_bytes(b"")), "no features file beside it"),
    (_hdf5_of_something_else, "could not be read as AnnData"),
    (lambda d: (d / "f").write_text("gene,cell1\nA,1\n"), "text table"),
])
def test_what_is_none_of_them_is_refused_naming_the_accepted_formats(tmp_path, build, message):
    build(tmp_path)
    with pytest.raises(InputFileError, match=message) as caught:
        read_cells(tmp_path / "f")
    assert "Cell Ranger" in str(caught.value)


@pytest.mark.parametrize("name, message", [("x.rds", "zellkonverter::writeH5AD"),
                                           ("x.xlsx", "save the sheet")])
def test_other_ecosystems_files_are_answered_with_the_conversion(tmp_path, name, message):
    if name.endswith(".rds"):
        (tmp_path / name).write_bytes(b"\x1f\x8b\x08\x00")  # R's gzip-compressed serialization
    elif name.endswith(".xlsx"):
        (tmp_path / name).write_bytes(b"PK\x03\x04")  # a zip archive, as Excel writes
    else:
        with h5py.File(tmp_path / name, "w") as f:
            f["matrix"] = np.zeros((2, 2))
    with pytest.raises(InputFileError, match=message):
        read_cells(tmp_path / name)


def test_missing_paths_say_what_was_expected(tmp_path):
    with pytest.raises(InputFileError, match="input not found"):
        read_cells(tmp_path / "missing.h5")


def test_the_package_exports_the_reader():
    import instructcell_agent as ica

    assert ica.read_cells is read_cells
