"""Reading, label lookup, matrix selection and atomic writing of AnnData files."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from instructcell_agent.core_model.errors import InputFileError, LabelKeyError
from instructcell_agent.core_model.io import (
    get_labels,
    read_h5ad,
    select_matrix,
    write_h5ad_atomic,
)


def _adata(n_cells: int = 6, n_genes: int = 4) -> ad.AnnData:
    x = sp.csr_matrix(np.arange(n_cells * n_genes, dtype=np.float32).reshape(n_cells, n_genes))
    obs = pd.DataFrame(
        {"cell_type": ["T", "B"] * (n_cells // 2), "batch": ["a"] * n_cells},
        index=[f"c{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"G{i}" for i in range(n_genes)])
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.layers["counts"] = x.copy()
    return adata


def test_read_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "ok.h5ad"
    _adata().write_h5ad(path)
    mtime = path.stat().st_mtime_ns
    adata = read_h5ad(path)
    assert adata.shape == (6, 4)
    assert list(adata.obs["cell_type"][:2]) == ["T", "B"]
    assert path.stat().st_mtime_ns == mtime


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found") as info:
        read_h5ad(tmp_path / "nope.h5ad")
    assert ".h5ad" in str(info.value)


def test_directory_refused(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="is a directory"):
        read_h5ad(tmp_path)


def test_text_file_named_h5ad_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.h5ad"
    path.write_text("gene,cell1,cell2\nCD4,1,0\n")
    with pytest.raises(InputFileError, match="not an HDF5 file") as info:
        read_h5ad(path)
    assert "CSV" in str(info.value) and "AnnData" in str(info.value)
    assert path.read_text().startswith("gene,cell1")


def test_random_bytes_and_empty_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "noise.h5ad"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(InputFileError, match="not an HDF5 file"):
        read_h5ad(path)
    empty = tmp_path / "empty.h5ad"
    empty.write_bytes(b"")
    with pytest.raises(InputFileError, match="empty"):
        read_h5ad(empty)


@pytest.mark.filterwarnings("ignore::Warning")
def test_hdf5_that_is_not_anndata_refused(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "plain.h5ad"
    with h5py.File(path, "w") as fh:
        fh["X"] = "not a matrix"
        fh["obs"] = 3
    with pytest.raises(InputFileError, match="could not be read as AnnData"):
        read_h5ad(path)


def test_get_labels() -> None:
    labels = get_labels(_adata(), "cell_type")
    assert labels.dtype.kind == "U"
    assert labels.tolist() == ["T", "B", "T", "B", "T", "B"]


def test_missing_label_key_lists_columns() -> None:
    with pytest.raises(LabelKeyError) as info:
        get_labels(_adata(), "celltype")
    message = str(info.value)
    assert "'celltype'" in message and "'cell_type'" in message and "'batch'" in message


def test_nan_labels_counted() -> None:
    adata = _adata()
    adata.obs["cell_type"] = pd.Categorical(["T", None, "B", None, None, "B"])
    with pytest.raises(LabelKeyError, match="3 of 6 cells"):
        get_labels(adata, "cell_type")


def test_select_matrix_variants() -> None:
    adata = _adata()
    x, names = select_matrix(adata)
    assert x is adata.X and names == ["G0", "G1", "G2", "G3"]
    x, _ = select_matrix(adata, layer="counts")
    assert x is adata.layers["counts"]
    with pytest.raises(InputFileError, match="no layer 'spliced'.*'counts'"):
        select_matrix(adata, layer="spliced")
    with pytest.raises(InputFileError, match="no adata.raw"):
        select_matrix(adata, use_raw=True)
    with pytest.raises(ValueError):
        select_matrix(adata, layer="counts", use_raw=True)
    adata.raw = adata[:, :3].copy()
    x, names = select_matrix(adata, use_raw=True)
    assert x.shape == (6, 3) and names == ["G0", "G1", "G2"]
    adata.X = None  # counts kept in a layer only: the refusal names what to read instead
    with pytest.raises(InputFileError, match="adata.X is None.*--layer; available layers: 'counts'.*--use-raw"):
        select_matrix(adata)


def test_write_atomic_and_protect(tmp_path: Path) -> None:
    source = tmp_path / "in.h5ad"
    adata = _adata()
    adata.write_h5ad(source)
    before = source.read_bytes()
    with pytest.raises(InputFileError, match="refusing to overwrite"):
        write_h5ad_atomic(adata, source, protect=[source])
    # The same file through another spelling of its path is still protected.
    with pytest.raises(InputFileError, match="refusing to overwrite"):
        write_h5ad_atomic(adata, tmp_path / "sub" / ".." / "in.h5ad", protect=[str(source)])
    assert source.read_bytes() == before

    out = write_h5ad_atomic(adata, tmp_path / "out" / "result.h5ad", protect=[source])
    assert out.is_file()
    assert read_h5ad(out).shape == (6, 4)
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.h5ad"]
    assert out.stat().st_mode & 0o777 == 0o644  # readable by others, as a plain write would make it
    with pytest.raises(InputFileError, match="directory"):
        write_h5ad_atomic(adata, tmp_path)


def test_write_atomic_keeps_pandas_string_columns(tmp_path: Path) -> None:
    # pandas 3 makes every text column a string array; anndata refuses those unless allowed.
    adata = _adata()
    adata.obs_names = pd.Index([f"cell{i}" for i in range(adata.n_obs)], dtype="string")
    adata.obs["barcode"] = pd.array([f"AC{i}" for i in range(adata.n_obs)], dtype="string")
    out = write_h5ad_atomic(adata, tmp_path / "strings.h5ad")
    back = read_h5ad(out)
    assert list(back.obs_names) == [f"cell{i}" for i in range(6)]
    assert list(back.obs["barcode"].astype(str)) == [f"AC{i}" for i in range(6)]
    assert not ad.settings.allow_write_nullable_strings  # the user's setting is left as it was
