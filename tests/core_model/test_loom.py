"""Loom files read without loompy: velocyto's and the atlases' layout, attributes as obs / var."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from instructcell_agent.core_model.errors import InputFileError
from instructcell_agent.core_model.readers import read_cells
from synthetic import make_counts, read_untouched, write_loom


@pytest.mark.parametrize("strings", ["bytes", "vlen"])
def test_a_loom_file_reads_as_its_cells_with_their_attributes(tmp_path, strings, monkeypatch):
    import instructcell_agent.core_model.loom as loom

    monkeypatch.setattr(loom, "_BLOCK_VALUES", 500)  # several blocks of cells
    cells = make_counts(20, seed=3)
    cells.var["gene_ids"] = [f"ENSG{j:011d}" for j in range(cells.n_vars)]
    path = tmp_path / "velocyto.loom"
    write_loom(cells, path, strings=strings)
    got = read_untouched(path, "loom")
    assert list(got.obs_names) == list(cells.obs_names) and list(got.var_names) == list(cells.var_names)
    assert list(got.var["gene_ids"]) == list(cells.var["gene_ids"])
    assert list(got.obs["ClusterName"]) == list(cells.obs["cell_type"]) and list(got.obs["Age"]) == list(range(20))
    assert "_X_tsne" not in got.obs
    assert got.X.format == "csr" and got.X.dtype == np.float32
    np.testing.assert_array_equal(got.X.toarray(), cells.X.toarray())


def test_what_is_not_a_loom_file_is_refused(tmp_path):
    path = tmp_path / "x.loom"
    with h5py.File(path, "w") as f:
        f["something"] = np.zeros(3)
    with pytest.raises(InputFileError, match="has no /matrix: not a loom file"):
        read_cells(path)
    path.write_text("not HDF5")
    with pytest.raises(InputFileError, match="could not be opened as a loom"):
        read_cells(path)
    with h5py.File(path, "w") as f:
        f["matrix"] = np.zeros((3, 4))
        f["col_attrs/CellID"] = np.array([b"a", b"b"])
    with pytest.raises(InputFileError, match="the cell attribute 'CellID' has 2 values for 4 cells"):
        read_cells(path)
