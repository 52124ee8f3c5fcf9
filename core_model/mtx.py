"""Matrix Market triplets: Cell Ranger's matrix folders, and the same files as GEO serves them.

Cell Ranger writes `matrix.mtx.gz` (features x barcodes), `features.tsv.gz` (id, symbol, feature
type; version 2: `genes.tsv`, id and symbol) and `barcodes.tsv.gz`. GEO series hold the same
three files per sample with the sample's accession in front (`GSM4138110_ctrl_matrix.mtx.gz`,
`GSM4138110_ctrl_barcodes.tsv.gz`, ...), several samples in one folder, and often a features
file the authors wrote themselves: symbols alone, or id and symbol without a feature type, which
scanpy's reader fails on (KeyError). So they are read here:

- the prefix is whatever stands before `matrix.mtx`; the other two files carry the same one;
- features: one column (names), two (id, name) or three or more (id, name, type; features of
  other types than "Gene Expression", e.g. antibody tags, are left out as Cell Ranger's own
  reader does); a header line, when the file has one line more than the matrix has features, is
  skipped; barcodes: the first column, likewise;
- the matrix is features x barcodes (Cell Ranger) or barcodes x features (some hand-written
  files): told by the lengths of the two lists.

Gene symbols become var_names, made unique with -1, -2 suffixes as scanpy does; ids stay in
`var['gene_ids']`.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from .errors import InputFileError

MATRIX_NAMES = ("matrix.mtx.gz", "matrix.mtx")
_FEATURE_NAMES = ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
_BARCODE_NAMES = ("barcodes.tsv.gz", "barcodes.tsv")
GENE_EXPRESSION = "Gene Expression"


def matrix_files(folder: Path) -> list[Path]:
    """Every `*matrix.mtx(.gz)` file directly in `folder`, sorted."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.name.endswith(MATRIX_NAMES))


def is_matrix_file(path: Path) -> bool:
    return path.name.endswith(MATRIX_NAMES)


def prefix_of(matrix: Path) -> str:
    """'GSM1_ctrl_' for 'GSM1_ctrl_matrix.mtx.gz'; '' for Cell Ranger's own name."""
    return next(matrix.name[: -len(n)] for n in MATRIX_NAMES if matrix.name.endswith(n))


def _companion(folder: Path, prefix: str, names: tuple[str, ...], what: str, matrix: Path) -> Path:
    for name in names:
        if (folder / f"{prefix}{name}").is_file():
            return folder / f"{prefix}{name}"
    raise InputFileError(f"{matrix} has no {what} beside it ({' or '.join(prefix + n for n in names[:2])}); a "
                         "Matrix Market matrix needs its features (genes) and barcodes files, with the same prefix")


def _lines(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            return [line.rstrip("\r\n").split("\t") for line in fh if line.strip()]
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputFileError(f"{path} could not be read as a tab-separated list ({type(exc).__name__}: "
                             f"{exc})") from exc


def _rows(path: Path, n: int, what: str) -> list[list[str]]:
    """The `n` rows of a features or barcodes file, past a header line if it has one more."""
    rows = _lines(path)
    if len(rows) == n + 1:
        rows = rows[1:]
    if len(rows) != n:
        raise InputFileError(f"{path} lists {len(rows):,} {what}, but the matrix has {n:,} (or, if it is "
                             "barcodes x features, the other list's length); the three files must be of one sample")
    return rows


def read_matrix_market(path: Path) -> anndata.AnnData:
    """The cells x genes AnnData of a matrix file (or the folder holding exactly one).

    Raises
    ------
    InputFileError
        A folder holding none or several matrices (the several are named), a missing features or
        barcodes file, lists whose lengths fit neither orientation, or an unreadable matrix.
    """
    matrix = _the_matrix(path)
    folder, prefix = matrix.parent, prefix_of(matrix)
    features_path = _companion(folder, prefix, _FEATURE_NAMES, "features file", matrix)
    barcodes_path = _companion(folder, prefix, _BARCODE_NAMES, "barcodes file", matrix)
    try:
        X = sp.coo_matrix(scipy.io.mmread(matrix), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - scipy's errors for a malformed or truncated file
        raise InputFileError(f"{matrix} could not be read as a Matrix Market matrix ({type(exc).__name__}: "
                             f"{exc})") from exc
    n_features = len(_lines(features_path))
    # Cell Ranger's orientation (features x barcodes) unless the lists say otherwise (a header
    # line may add one to a list's length).
    if n_features in (X.shape[1], X.shape[1] + 1) and n_features not in (X.shape[0], X.shape[0] + 1):
        cells = X.tocsr()  # already barcodes x features
    else:
        cells = X.T.tocsr()
    features = _rows(features_path, cells.shape[1], "features")
    barcodes = [row[0] for row in _rows(barcodes_path, cells.shape[0], "barcodes")]
    adata = anndata.AnnData(X=cells, obs=pd.DataFrame(index=pd.Index(barcodes, dtype=object)),
                            var=_feature_frame(features))
    if "feature_types" in adata.var and (adata.var["feature_types"] == GENE_EXPRESSION).any():
        adata = adata[:, (adata.var["feature_types"] == GENE_EXPRESSION).to_numpy()].copy()
    adata.var_names_make_unique()
    return adata


def _the_matrix(path: Path) -> Path:
    if path.is_file():
        return path
    found = matrix_files(path)
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputFileError(f"{path} holds no matrix.mtx(.gz)")
    names = ", ".join(f.name for f in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    raise InputFileError(f"{path} holds {len(found)} matrices ({names}): pass one matrix file, or several to read "
                         "them as samples of one study (CLI: --data a_matrix.mtx.gz b_matrix.mtx.gz)")


def _feature_frame(rows: list[list[str]]) -> pd.DataFrame:
    """var of a features file: names as the index, ids and types as columns where it has them."""
    width = min((len(r) for r in rows), default=1)
    if width == 1:
        return pd.DataFrame(index=pd.Index([r[0] for r in rows], dtype=object))
    var = pd.DataFrame({"gene_ids": [r[0] for r in rows]}, index=pd.Index([r[1] for r in rows], dtype=object))
    if width >= 3:
        var["feature_types"] = [r[2] for r in rows]
    return var
