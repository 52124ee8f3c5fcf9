"""Matrix Market files: Cell Ranger's matrix folders, the same files as GEO serves them, and the
outputs of kallisto|bustools and alevin-fry.

Cell Ranger writes `matrix.mtx.gz` (features x barcodes), `features.tsv.gz` (id, symbol, feature
type; version 2: `genes.tsv`, id and symbol) and `barcodes.tsv.gz`. GEO series hold the same
three files per sample with the sample's accession in front (`GSM4138110_ctrl_matrix.mtx.gz`,
`GSM4138110_ctrl_barcodes.tsv.gz`, ...), several samples in one folder, and often a features
file the authors wrote themselves: symbols alone, or id and symbol without a feature type, which
scanpy's reader fails on (KeyError). So they are read here:

- the prefix is whatever stands before `matrix.mtx`; the other two files carry the same one
  (failing those names, the one file beside the matrix that shares its prefix up to the last
  '_' and names genes or features, and likewise barcodes or cells: GSE1_counts.mtx.gz beside
  GSE1_genes.tsv.gz and GSE1_barcodes.tsv.gz);
- features: one column (names), two (id, name) or three or more (id, name, type; features of
  other types than "Gene Expression", e.g. antibody tags, are left out as Cell Ranger's own
  reader does); a header line, when the file has one line more than the matrix has features, is
  skipped; barcodes: the first column, likewise;
- the matrix is features x barcodes (Cell Ranger) or barcodes x features (kallisto|bustools'
  `cells_x_genes.mtx` with `.genes.txt` / `.genes.names.txt` and `.barcodes.txt`; alevin-fry's
  `quants_mat.mtx` with `quants_mat_cols.txt` and `quants_mat_rows.txt`; hand-written files):
  told by the lengths of the two lists.

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
_MTX_SUFFIXES = (".mtx.gz", ".mtx")
_FEATURE_NAMES = ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
_BARCODE_NAMES = ("barcodes.tsv.gz", "barcodes.tsv")
GENE_EXPRESSION = "Gene Expression"


def matrix_files(folder: Path) -> list[Path]:
    """Every Matrix Market file directly in `folder`, sorted."""
    return sorted(f for f in folder.iterdir() if f.is_file() and is_matrix_file(f))


def is_matrix_file(path: Path) -> bool:
    return path.name.endswith(_MTX_SUFFIXES)


def _companions(matrix: Path) -> tuple[list[str], list[str]]:
    """Names the features and barcodes files of `matrix` may have, in order of preference."""
    name = matrix.name
    cell_ranger = next((n for n in MATRIX_NAMES if name.endswith(n)), None)
    if cell_ranger is not None:  # Cell Ranger's names, perhaps behind GEO's 'GSM1_ctrl_'
        prefix = name[: -len(cell_ranger)]
        return [prefix + n for n in _FEATURE_NAMES], [prefix + n for n in _BARCODE_NAMES]
    stem = name[: -len(next(s for s in _MTX_SUFFIXES if name.endswith(s)))]
    # kallisto|bustools: cells_x_genes.mtx, .genes.names.txt (symbols) / .genes.txt (ids), .barcodes.txt;
    # alevin-fry: quants_mat.mtx, quants_mat_cols.txt (genes), quants_mat_rows.txt (barcodes)
    return ([f"{stem}.genes.names.txt", f"{stem}.genes.txt", f"{stem}_cols.txt"],
            [f"{stem}.barcodes.txt", f"{stem}_rows.txt"])


def _companion(matrix: Path, names: list[str], what: str, words: tuple[str, ...]) -> Path:
    """The first of `names` beside `matrix`; else the one file beside it that shares the
    matrix's prefix (up to its last '_') and names `words` (GSE1_counts.mtx.gz beside
    GSE1_genes.tsv.gz); refused when there is none, or several."""
    for name in names:
        if (matrix.parent / name).is_file():
            return matrix.parent / name
    stem = matrix.name.split(".")[0]
    prefix = stem[: stem.rfind("_") + 1] if "_" in stem else ""
    found = [f for f in matrix.parent.iterdir() if f.is_file() and f != matrix and f.name.startswith(prefix)
             and any(w in f.name[len(prefix):].lower() for w in words) and not is_matrix_file(f)]
    if len(found) == 1:
        return found[0]
    others = f"; beside it: {', '.join(sorted(f.name for f in found))}" if found else ""
    raise InputFileError(f"{matrix} has no {what} beside it ({' or '.join(names[:2])}){others}; a Matrix Market "
                         "matrix needs its features (genes) and barcodes files, named as the matrix is")


def _feature_rows(path: Path, lines: list[list[str]], n: int) -> list[list[str]]:
    """The features' rows (`lines`, read from `path`); kallisto's symbols beside its ids file
    become (id, symbol) rows."""
    rows = _rows(path, lines, n, "features")
    ids = path.parent / path.name.replace(".genes.names.txt", ".genes.txt")
    if path.name.endswith(".genes.names.txt") and ids.is_file():
        rows = [[i[0], s[0]] for i, s in zip(_rows(ids, _lines(ids), n, "features"), rows)]
    return rows


def _lines(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            return [line.rstrip("\r\n").split("\t") for line in fh if line.strip()]
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputFileError(f"{path} could not be read as a tab-separated list ({type(exc).__name__}: "
                             f"{exc})") from exc


def _rows(path: Path, rows: list[list[str]], n: int, what: str) -> list[list[str]]:
    """The `n` rows (of `rows`, read from `path`) of a features or barcodes file, past a header
    line if it has one more."""
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
    feature_names, barcode_names = _companions(matrix)
    features_path = _companion(matrix, feature_names, "features file", ("feature", "gene"))
    barcodes_path = _companion(matrix, barcode_names, "barcodes file", ("barcode", "cell"))
    try:
        X = sp.coo_matrix(scipy.io.mmread(matrix), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - scipy's errors for a malformed or truncated file
        raise InputFileError(f"{matrix} could not be read as a Matrix Market matrix ({type(exc).__name__}: "
                             f"{exc})") from exc
    feature_lines = _lines(features_path)
    n_features = len(feature_lines)
    # Cell Ranger's orientation (features x barcodes) unless the lists say otherwise (a header
    # line may add one to a list's length).
    if n_features in (X.shape[1], X.shape[1] + 1) and n_features not in (X.shape[0], X.shape[0] + 1):
        cells = X.tocsr()  # already barcodes x features
    else:
        cells = X.T.tocsr()
    features = _feature_rows(features_path, feature_lines, cells.shape[1])
    barcodes = [row[0] for row in _rows(barcodes_path, _lines(barcodes_path), cells.shape[0], "barcodes")]
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
        raise InputFileError(f"{path} holds no Matrix Market file (.mtx or .mtx.gz)")
    names = ", ".join(f.name for f in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    suffix = next(s for s in _MTX_SUFFIXES if found[0].name.endswith(s))
    raise InputFileError(f"{path} holds {len(found)} matrices ({names}): pass one matrix file, or several to read "
                         f"them as samples of one study (CLI: --data {path}/*{suffix})")


def _feature_frame(rows: list[list[str]]) -> pd.DataFrame:
    """var of a features file: names as the index, ids and types as columns where it has them."""
    width = min((len(r) for r in rows), default=1)
    if width == 1:
        return pd.DataFrame(index=pd.Index([r[0] for r in rows], dtype=object))
    var = pd.DataFrame({"gene_ids": [r[0] for r in rows]}, index=pd.Index([r[1] for r in rows], dtype=object))
    if width >= 3:
        var["feature_types"] = [r[2] for r in rows]
    return var
