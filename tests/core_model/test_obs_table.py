"""Per-cell metadata joined from a separate table (GEO's metadata, Cell Ranger's clusters.csv)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from instructcell_agent.core_model.errors import InputFileError
from instructcell_agent.core_model.obs_table import UnnamedCellsWarning, join_obs_table, read_obs_table


@pytest.fixture()
def cells() -> ad.AnnData:
    adata = ad.AnnData(sp.csr_matrix(np.arange(24, dtype=np.float32).reshape(6, 4)))
    adata.obs_names = [f"AAAC-{i}" for i in range(6)]
    adata.var_names = ["ACTB", "CD3E", "MS4A1", "LYZ"]
    adata.obs["batch"] = "b1"
    adata.obsm["X_umap"] = np.zeros((6, 2))
    return adata


@pytest.mark.parametrize("text", [
    "Barcode,Cluster,type\nAAAC-0,1,T\nAAAC-1,2,B\nAAAC-2,1,T\nAAAC-3,3,Mono\nAAAC-4,2,B\nAAAC-5,1,T\n",
    # R's write.csv: the header leaves the row-name corner out, every field quoted
    '"Cluster","type"\n"AAAC-0",1,"T"\n"AAAC-1",2,"B"\n"AAAC-2",1,"T"\n"AAAC-3",3,"Mono"\n"AAAC-4",2,"B"\n'
    '"AAAC-5",1,"T"\n',
])
def test_columns_join_by_cell_name_in_any_row_order(cells, tmp_path, text):
    lines = text.splitlines()
    path = tmp_path / "meta.csv"
    path.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")  # the table's order is not the cells'
    before = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        joined = join_obs_table(cells, path)
    assert path.read_bytes() == before
    assert list(joined.obs_names) == list(cells.obs_names)
    assert list(joined.obs["Cluster"]) == [1, 2, 1, 3, 2, 1]
    assert list(joined.obs["type"]) == ["T", "B", "T", "Mono", "B", "T"]
    assert list(joined.obs["batch"]) == ["b1"] * 6 and "X_umap" in joined.obsm
    assert joined.X is cells.X  # the matrix is shared, not copied
    assert list(cells.obs.columns) == ["batch"]  # the cells passed in are left as they were


def test_cells_the_table_leaves_out_get_empty_values_and_a_warning(cells, tmp_path):
    path = tmp_path / "meta.tsv"
    path.write_text("cell\tcluster\n" + "".join(f"AAAC-{i}\t{i % 2}\n" for i in range(4)) + "OTHER-9\t5\n")
    with pytest.warns(UnnamedCellsWarning, match="2 of the data's 6 cells have no row"):
        joined = join_obs_table(cells, path)
    assert joined.obs["cluster"].dtype == "Int64"  # 1 stays 1, not 1.0
    assert joined.obs["cluster"].isna().tolist() == [False] * 4 + [True] * 2
    out = tmp_path / "joined.h5ad"
    joined.write_h5ad(out)  # what --out writes
    assert ad.read_h5ad(out).obs["cluster"].isna().sum() == 2


@pytest.mark.parametrize("name, text, message", [
    ("meta.json", "{}", "a metadata table is a .csv"),
    ("meta.csv", "cell\nAAAC-0\nAAAC-1\n", "no column beside them"),
    ("meta.csv", "cell,c\nAAAC-0,1\nAAAC-0,2\nAAAC-1,1\n", "names 1 cell.*more than once.*AAAC-0"),
    ("meta.csv", "cell,c\nAAAC-0,1\nX-1,2\nX-2,1\nX-3,1\n", "names 1 of the data's 6 cells.*e.g. AAAC-0, X-1"),
    ("meta.csv", "cell,batch\n" + "".join(f"AAAC-{i},b2\n" for i in range(6)), "'batch' are already in"),
])
def test_tables_that_cannot_be_joined_are_refused(cells, tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputFileError, match=message):
        join_obs_table(cells, path)


def test_missing_table(tmp_path):
    with pytest.raises(InputFileError, match="metadata table not found"):
        read_obs_table(tmp_path / "none.csv")


def test_a_gzipped_table_reads_with_cell_names_as_text(tmp_path):
    path = tmp_path / "meta.tsv.gz"
    pd.DataFrame({"cluster": [1, 2]}, index=pd.Index(["0001", "0002"], name="cell")).to_csv(path, sep="\t")
    table = read_obs_table(path)
    assert list(table.index) == ["0001", "0002"]  # names, not numbers: leading zeros kept


@pytest.mark.parametrize("written, how", [
    (lambda b, s: f"{s}_{b}", "sample_barcode"),
    (lambda b, s: f"{s}:{b.removesuffix('-1')}", "sample:barcode (a barcode's -1 left out)"),
    (lambda b, s: f"{b}-{s}", None),  # read_samples' own names
])
def test_several_samples_match_the_forms_tables_write(tmp_path, written, how):
    from instructcell_agent.core_model.obs_table import join_note

    parts = []
    for sample in ("ctrl", "stim"):
        part = ad.AnnData(sp.csr_matrix(np.ones((3, 2), dtype=np.float32)))
        part.obs_names = [f"AAAC{i}-1" for i in range(3)]  # the same barcodes in both samples
        parts.append(part)
    cells = ad.concat(parts, label="sample", keys=["ctrl", "stim"], index_unique="-")
    cells.uns["samples"] = {"key": "sample", "names": ["ctrl", "stim"], "paths": []}
    path = tmp_path / "meta.csv"
    path.write_text("cell,donor\n" + "".join(f"{written(f'AAAC{i}-1', s)},{s}{i}\n" for s in ("ctrl", "stim")
                                             for i in range(3)))
    joined = join_obs_table(cells, path)
    assert list(joined.obs["donor"]) == ["ctrl0", "ctrl1", "ctrl2", "stim0", "stim1", "stim2"]
    assert joined.uns["obs_table"]["matched_as"] == (how or "the cell names")
    assert (how is None) == ("matched as" not in join_note(joined))


def test_a_barcode_suffix_left_out_by_the_table_still_matches(cells, tmp_path):
    path = tmp_path / "meta.csv"
    cells = cells.copy()
    cells.obs_names = [f"ACGT{i}-1" for i in range(6)]
    path.write_text("cell,cluster\n" + "".join(f"ACGT{i},{i % 2}\n" for i in range(6)))
    joined = join_obs_table(cells, path)
    assert list(joined.obs["cluster"]) == [0, 1, 0, 1, 0, 1]
    assert joined.uns["obs_table"]["matched_as"] == "the cell names (a barcode's -1 left out)"
