"""h5Seurat files (SeuratDisk's `SaveH5Seurat`), read with h5py, following SeuratDisk's published
h5Seurat specification.

What is read: the active assay (the file's `active.assay` attribute) under `/assays`, its `counts`
matrix when it holds any values, else its `data` (log-normalised; the value detection reads it as
such), its `features` as gene names, the top-level `cell.names`, and `/meta.data` (a group of one
dataset per column, factors as `levels` / 1-based `values` groups, or one compound dataset) as
obs columns. A sparse matrix is R's dgCMatrix: `data`, `indices` (0-based feature rows), `indptr`
(one entry per cell, plus one), so a cell's values are one slice, which is the cells x genes CSR
matrix as stored. A dense matrix is stored column-major, so h5py sees it cells x features.

Every shape is checked against the cell and feature names, and a file that does not fit is
refused with what did not fit, never read sideways. Built from the specification and tested on
files written to it; no SeuratDisk-written file is among the shared data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import InputFileError


def is_h5seurat(path: Path) -> bool:
    return path.suffix.lower() == ".h5seurat"


def _text(values: Any) -> Any:
    if isinstance(values, bytes):
        return values.decode("utf-8")
    if isinstance(values, np.ndarray) and (values.dtype.kind == "S" or values.dtype == object):
        return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    return values


def read_h5seurat(path: Path) -> anndata.AnnData:
    """The cells x genes AnnData of an h5Seurat file (see the module docstring).

    Raises
    ------
    InputFileError
        A file that is not HDF5, lacks the specification's required entries, or whose matrix
        does not fit its cell and feature names.
    """
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(f"{path} could not be opened as an h5Seurat (HDF5) file: {exc}") from exc
    with handle as f:
        assays = f.get("assays")
        if not isinstance(assays, h5py.Group) or "cell.names" not in f or not len(assays):
            raise InputFileError(f"{path} lacks /assays or /cell.names: not an h5Seurat file")
        raw = f.attrs.get("active.assay")
        if isinstance(raw, np.ndarray):  # a one-element character vector
            raw = raw.flat[0] if raw.size else None
        active = str(_text(raw)) if raw is not None else ""
        name = active if active in assays else ("RNA" if "RNA" in assays else next(iter(assays)))
        assay = assays[name]
        cells = list(_text(f["cell.names"][()]))
        features = list(_text(assay["features"][()])) if "features" in assay else None
        if features is None:
            raise InputFileError(f"{path}: assay {name!r} has no features dataset")
        matrix_name, X = _matrix(assay, len(cells), len(features), path, name)
        obs = _meta_data(f.get("meta.data"), len(cells), path)
    adata = anndata.AnnData(X=X, obs=obs.set_axis(pd.Index(cells, dtype=object)),
                            var=pd.DataFrame(index=pd.Index(features, dtype=object)))
    adata.uns["h5seurat"] = {"assay": name, "matrix": matrix_name}
    adata.var_names_make_unique()
    adata.obs_names_make_unique()
    return adata


def _matrix(assay, n_cells: int, n_features: int, path: Path, name: str) -> tuple[str, sp.csr_matrix]:
    """('counts' or 'data', the cells x features matrix): counts unless empty."""
    for matrix_name in ("counts", "data"):
        if matrix_name not in assay:
            continue
        X = _read_matrix(assay[matrix_name], n_cells, n_features, path, f"{name}/{matrix_name}")
        if X.nnz or matrix_name == "data":
            return matrix_name, X
    raise InputFileError(f"{path}: assay {name!r} has neither counts nor data")


def _read_matrix(node, n_cells: int, n_features: int, path: Path, where: str) -> sp.csr_matrix:
    import h5py

    if isinstance(node, h5py.Group):  # dgCMatrix: one compressed column per cell
        indptr = node["indptr"][()]
        if len(indptr) != n_cells + 1:
            raise InputFileError(f"{path}: {where} has {len(indptr) - 1:,} columns for {n_cells:,} cells")
        indices = node["indices"][()]
        if len(indices) and int(indices.max()) >= n_features:
            raise InputFileError(f"{path}: {where} indexes feature {int(indices.max()):,} of {n_features:,}")
        return sp.csr_matrix((node["data"][()].astype(np.float32), indices, indptr), shape=(n_cells, n_features))
    dense = np.asarray(node[()], dtype=np.float32)
    if dense.shape == (n_cells, n_features):
        return sp.csr_matrix(dense)
    raise InputFileError(f"{path}: {where} is {dense.shape[0]:,} x {dense.shape[1]:,}, expected cells x features "
                         f"({n_cells:,} x {n_features:,})")


def _meta_data(node, n_cells: int, path: Path) -> pd.DataFrame:
    """Cell metadata as a data frame (empty when the file has none)."""
    import h5py

    if node is None:
        return pd.DataFrame(index=range(n_cells))
    if isinstance(node, h5py.Dataset):  # one compound dataset, a column per field
        values = node[()]
        if values.dtype.names is None or len(values) != n_cells:
            return pd.DataFrame(index=range(n_cells))
        return pd.DataFrame({field: _text(values[field]) for field in values.dtype.names})
    order = [str(c) for c in _text(node.attrs["colnames"])] if "colnames" in node.attrs else list(node)
    columns = {}
    for column in order:
        if column not in node or column == "row.names":
            continue
        value = node[column]
        if isinstance(value, h5py.Group) and {"levels", "values"} <= set(value):  # a factor
            levels = list(_text(value["levels"][()]))
            codes = np.asarray(value["values"][()], dtype=np.int64) - 1  # R's codes start at 1
            codes[(codes < 0) | (codes >= len(levels))] = -1  # NA
            columns[column] = pd.Categorical.from_codes(codes, categories=levels)
        elif isinstance(value, h5py.Dataset) and value.ndim == 1 and value.shape[0] == n_cells:
            columns[column] = _text(value[()])
    return pd.DataFrame(columns, index=range(n_cells))
