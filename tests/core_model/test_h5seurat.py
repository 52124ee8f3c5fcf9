"""h5Seurat files read without R, to SeuratDisk's specification: counts (or data), features,
cell names and meta.data, every shape checked against the names."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from instructcell_agent.core_model.errors import InputFileError
from instructcell_agent.core_model.readers import read_cells
from synthetic import make_counts, read_untouched, write_h5seurat


@pytest.fixture(scope="module")
def cells():
    return make_counts(18, seed=6)


@pytest.mark.parametrize("meta", ["group", "compound"])
def test_counts_and_metadata_read_as_the_cells(cells, tmp_path, meta):
    path = tmp_path / "pbmc.h5Seurat"
    write_h5seurat(cells, path, meta=meta)
    got = read_untouched(path, "h5seurat")
    assert list(got.obs_names) == list(cells.obs_names) and list(got.var_names) == list(cells.var_names)
    np.testing.assert_array_equal(got.X.toarray(), cells.X.toarray())
    assert list(got.obs["cell_type"].astype(str)) == list(cells.obs["cell_type"].astype(str))
    assert got.uns["h5seurat"] == {"assay": "RNA", "matrix": "counts"}


def test_without_counts_the_normalised_data_is_read_and_recognised(cells, tmp_path):
    from instructcell_agent.core_model.values import detect_value_type

    path = tmp_path / "data_only.h5seurat"
    write_h5seurat(cells, path, counts=False)
    got = read_cells(path)
    assert got.uns["h5seurat"]["matrix"] == "data"
    np.testing.assert_allclose(got.X.toarray(), np.log1p(cells.X.toarray()), rtol=1e-6)
    assert detect_value_type(got.X).kind == "log1p"


def test_files_that_do_not_fit_their_names_are_refused(cells, tmp_path):
    path = tmp_path / "bad.h5Seurat"
    write_h5seurat(cells, path)
    with h5py.File(path, "r+") as f:
        del f["cell.names"]
        f["cell.names"] = np.array([b"a", b"b"])
    with pytest.raises(InputFileError, match="has 18 columns for 2 cells"):
        read_cells(path)
    with h5py.File(path, "w") as f:
        f["something"] = np.zeros(2)
    with pytest.raises(InputFileError, match="lacks /assays or /cell.names: not an h5Seurat file"):
        read_cells(path)
