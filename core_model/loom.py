"""Loom files (velocyto's output, the Linnarsson lab's atlases, SCope), read with h5py alone.

A loom file is HDF5: `/matrix`, genes x cells (dense, chunked); `/row_attrs/<name>`, one array
per gene attribute (`Gene` the symbols, `Accession` the Ensembl ids); `/col_attrs/<name>`, one
per cell attribute (`CellID`, and whatever the authors kept: clusters, classes, ages); `/layers`,
more matrices of the same shape (velocyto's spliced / unspliced / ambiguous counts, of which
`/matrix` holds the spliced). anndata reads loom only through the loompy package, which this
project does not install, so the format is read here:

- X is `/matrix`, read in blocks of cells into a sparse float32 matrix;
- var_names are the first of `Gene`, `gene_name`, `var_names`, `Accession` the file has (made
  unique), the ids in `var['gene_ids']`;
- obs_names are `CellID` (or `obs_names`, `cell_id`), and every other one-dimensional cell
  attribute becomes an obs column, so `--groupby` and `--compare-key` can name them.
"""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import InputFileError

_GENE_NAMES = ("Gene", "gene_name", "var_names", "Gene_name", "gene_symbols")
_GENE_IDS = ("Accession", "gene_ids", "Gene_id")
_CELL_NAMES = ("CellID", "obs_names", "cell_id", "CellId")
_BLOCK_VALUES = 20_000_000


def is_loom(path: Path) -> bool:
    return path.suffix.lower() == ".loom"


def _text(values: np.ndarray) -> np.ndarray:
    """Strings of an HDF5 array (fixed-length bytes or variable-length strings)."""
    if values.dtype.kind == "S" or values.dtype == object:
        return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    return values


def _first(group, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in group), None)


def read_loom(path: Path) -> anndata.AnnData:
    """The cells x genes AnnData of a loom file (see the module docstring).

    Raises
    ------
    InputFileError
        A file that is not HDF5 or lacks `/matrix`, or attributes whose lengths do not fit it.
    """
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(f"{path} could not be opened as a loom (HDF5) file: {exc}") from exc
    with handle as f:
        if not isinstance(f.get("matrix"), h5py.Dataset) or f["matrix"].ndim != 2:
            raise InputFileError(f"{path} has no /matrix: not a loom file (a loom file is HDF5 with /matrix, "
                                 "/row_attrs and /col_attrs)")
        matrix = f["matrix"]
        n_genes, n_cells = matrix.shape
        rows, columns = f.get("row_attrs", {}), f.get("col_attrs", {})
        var = _attributes(rows, n_genes, path, "gene")
        obs = _attributes(columns, n_cells, path, "cell")
        step = max(1, _BLOCK_VALUES // max(n_genes, 1))
        blocks = [sp.csr_matrix(np.asarray(matrix[:, j:j + step], dtype=np.float32).T)
                  for j in range(0, n_cells, step)]
    X = sp.vstack(blocks, format="csr", dtype=np.float32) if blocks else sp.csr_matrix((0, n_genes), dtype=np.float32)
    gene_key, id_key, cell_key = _first(var, _GENE_NAMES), _first(var, _GENE_IDS), _first(obs, _CELL_NAMES)
    var_names = var.pop(gene_key) if gene_key else (var[id_key] if id_key else [f"gene{i}" for i in range(n_genes)])
    if id_key and id_key in var:
        var["gene_ids"] = var.pop(id_key)
    obs_names = obs.pop(cell_key) if cell_key else [f"cell{i}" for i in range(n_cells)]
    adata = anndata.AnnData(X=X, obs=pd.DataFrame(obs, index=pd.Index(np.asarray(obs_names, dtype=str), dtype=object)),
                            var=pd.DataFrame(var, index=pd.Index(np.asarray(var_names, dtype=str), dtype=object)))
    adata.var_names_make_unique()
    adata.obs_names_make_unique()
    return adata


def _attributes(group, n: int, path: Path, what: str) -> dict[str, np.ndarray]:
    """The one-dimensional attributes of `group` (each of length `n`); others (embeddings) left out."""
    out = {}
    for name, values in group.items():
        if values.ndim != 1:
            continue
        if values.shape[0] != n:
            raise InputFileError(f"{path}: the {what} attribute {name!r} has {values.shape[0]:,} values for "
                                 f"{n:,} {what}s")
        out[name] = _text(values[()])
    return out
