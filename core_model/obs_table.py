"""Per-cell metadata from a separate table, joined onto the cells by name.

Count tables (GEO's counts.csv.gz) and Cell Ranger's matrices carry cell names and nothing else;
what is known about each cell sits in a second file: GEO's metadata table (cell, sample, cluster,
the authors' cell type), Cell Ranger's `analysis/clustering/.../clusters.csv` (Barcode, Cluster), a
Seurat `meta.data` written with `write.csv`. Joined as obs columns they become what `--groupby`
reports by and what `--compare-key` compares the answers with.

The table's first column names the cells (R's `write.csv` leaves its header cell empty or out);
the join is by exact name. The user's data are not touched: a new AnnData object shares the
matrix with them and gets a copy of obs.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import anndata
import pandas as pd

from .errors import InputFileError
from .io import PathLike
from .text_matrix import TABLE_SUFFIXES, delimiter_of, fields_of, head_lines, is_text_table

logger = logging.getLogger(__name__)

UNS_KEY = "obs_table"
MIN_NAMED_SHARE = 0.5  # below this share of the data's cells named, the table is taken for another file's


class UnnamedCellsWarning(UserWarning):
    """Some cells of the data have no row in the metadata table; their columns are left empty."""


def read_obs_table(path: PathLike) -> pd.DataFrame:
    """The table at `path`, indexed by its first column (cell names as strings).

    Raises
    ------
    InputFileError
        A missing or unreadable file, a suffix other than a table's, no column beside the cell
        names, or a cell named twice.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputFileError(f"metadata table not found: {p}")
    if not is_text_table(p):
        raise InputFileError(f"{p}: a metadata table is a {', '.join(TABLE_SUFFIXES)} file (optionally .gz), "
                             "its first column the cell names")
    header, first = head_lines(p)
    sep = delimiter_of(header, first)
    n_header, n_first = len(fields_of(header, sep)), len(fields_of(first, sep))
    try:
        # A header one field short (R's write.csv) makes pandas take the first column as the index itself.
        table = pd.read_csv(p, sep=sep if sep else r"\s+", index_col=None if n_header == n_first - 1 else 0,
                            dtype={0: str} if n_header != n_first - 1 else None)
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputFileError(f"{p} could not be read as a table ({type(exc).__name__}: {exc})") from exc
    table.index = table.index.astype(str)
    if table.shape[1] == 0:
        raise InputFileError(f"{p} holds cell names and no column beside them; its first column names the cells, "
                             "the others are joined")
    repeated = table.index[table.index.duplicated()]
    if len(repeated):
        raise InputFileError(f"{p} names {len(set(repeated)):,} cell(s) more than once (e.g. {repeated[0]}); each "
                             "row must describe one cell")
    return table


def join_obs_table(adata: anndata.AnnData, path: PathLike) -> anndata.AnnData:
    """`adata` with the columns of the table at `path` added to obs, matched by cell name.

    Raises
    ------
    InputFileError
        See `joined_obs`.
    """
    obs, record = joined_obs(adata.obs, path, sample_key_of(adata))
    out = anndata.AnnData(X=adata.X, obs=obs, var=adata.var, uns=dict(adata.uns), obsm=dict(adata.obsm),
                          varm=dict(adata.varm), layers=dict(adata.layers), obsp=dict(adata.obsp),
                          varp=dict(adata.varp))
    if adata.raw is not None:
        out.raw = adata.raw
    # Kept with the cells (and in any file written from them): where these obs columns came from.
    out.uns[UNS_KEY] = record
    logger.info("%s", join_note(out))
    return out


def sample_key_of(adata: anndata.AnnData) -> str | None:
    """The obs column naming each cell's sample, for cells read as several samples."""
    samples = adata.uns.get("samples")
    return str(samples["key"]) if isinstance(samples, Mapping) and "key" in samples else None


def joined_obs(obs: pd.DataFrame, path: PathLike, sample_key: str | None = None) -> tuple[pd.DataFrame, dict]:
    """A copy of `obs` with the columns of the table at `path`, matched by cell name, and a record
    of what was joined (also for a backed file's obs, whose matrix stays on disk).

    The names are matched as the data has them, else in the form that matches most cells among
    those tables commonly use (`_key_forms`): a barcode's '-1' left out on either side, or, for
    cells read as several samples (`sample_key`), the sample before or after the barcode.

    Raises
    ------
    InputFileError
        See `read_obs_table`; also when fewer than half the cells are named in the table (a table
        of other cells, or names written another way), or when a column is already in obs.
    """
    table = read_obs_table(path)
    n_cells = len(obs)
    form, keys, table = _best_form(obs, table, sample_key)
    n_named = int(pd.Index(keys).isin(table.index).sum())
    if n_named < MIN_NAMED_SHARE * n_cells:
        raise InputFileError(
            f"{path} names {n_named:,} of the data's {n_cells:,} cells in its first column (e.g. "
            f"{', '.join(table.index[:3])}; the data's cells are e.g. {', '.join(obs.index[:3].astype(str))}): "
            "a table of other cells, or names written another way than the data's, with or without a barcode's "
            "-1, or with the sample before or after the barcode")
    clash = [c for c in table.columns if c in obs.columns]
    if clash:
        raise InputFileError(f"{path}: column(s) {', '.join(map(repr, clash))} are already in the data's obs; rename "
                             "them in the table")
    if n_named < n_cells:
        warnings.warn(f"{n_cells - n_named:,} of the data's {n_cells:,} cells have no row in {path}; their "
                      "columns from it are left empty", UnnamedCellsWarning, stacklevel=3)
    # Nullable integers, so that cluster 3 stays 3 (not 3.0) beside the cells the table leaves out.
    table = table.astype({c: "Int64" for c in table.columns if pd.api.types.is_integer_dtype(table[c])})
    rows = table.reindex(keys)
    rows.index = obs.index
    record = {"path": str(path), "columns": [str(c) for c in table.columns], "n_named": n_named, "n_cells": n_cells,
              "matched_as": form}
    return pd.concat([obs, rows], axis=1), record


_SUFFIX = re.compile(r"-\d+$")  # Cell Ranger's GEM-well suffix, which some tables keep and others drop


def _key_forms(obs: pd.DataFrame, sample_key: str | None) -> dict[str, list[str]]:
    """Each cell's name in the forms metadata tables write it, by description."""
    names = [str(n) for n in obs.index]
    forms = {"the cell names": names}
    if sample_key is not None and sample_key in obs:
        samples = [str(s) for s in obs[sample_key]]
        # read_samples names a cell '<barcode>-<sample>'
        barcodes = [n[: -len(s) - 1] if n.endswith(f"-{s}") else n for n, s in zip(names, samples)]
        forms.update({
            "sample_barcode": [f"{s}_{b}" for s, b in zip(samples, barcodes)],
            "sample:barcode": [f"{s}:{b}" for s, b in zip(samples, barcodes)],
            "sample-barcode": [f"{s}-{b}" for s, b in zip(samples, barcodes)],
            "barcode_sample": [f"{b}_{s}" for s, b in zip(samples, barcodes)],
        })
    return forms


def _best_form(obs: pd.DataFrame, table: pd.DataFrame,
               sample_key: str | None) -> tuple[str, list[str], pd.DataFrame]:
    """(description, each cell's key, the table re-indexed alike) of the form naming most cells;
    a form whose keys repeat among the data's cells is not used (two cells would get one row)."""
    stripped_index = table.index.str.replace(_SUFFIX, "", regex=True)
    tables = {"": table}
    if not stripped_index.duplicated().any():
        tables[" (a barcode's -1 left out)"] = table.set_axis(stripped_index)
    best = ("the cell names", [str(n) for n in obs.index], table, -1)
    for described, keys in _key_forms(obs, sample_key).items():
        for how, candidate in tables.items():
            data_keys = [_SUFFIX.sub("", k) for k in keys] if how else keys
            if len(set(data_keys)) < len(data_keys):
                continue
            n = int(pd.Index(data_keys).isin(candidate.index).sum())
            if n > best[3]:
                best = (described + how, data_keys, candidate, n)
    return best[0], best[1], best[2]


def join_note(adata: anndata.AnnData) -> str | None:
    """One sentence on the table joined onto `adata` (None when none was)."""
    joined = adata.uns.get(UNS_KEY)
    if joined is None:
        return None
    columns = ", ".join(joined["columns"][:8]) + (", ..." if len(joined["columns"]) > 8 else "")
    matched = joined.get("matched_as", "the cell names")
    how = "" if matched == "the cell names" else f", its names matched as {matched}"
    return (f"obs columns {columns} joined from {Path(joined['path']).name} onto {joined['n_named']:,} of "
            f"{joined['n_cells']:,} cells{how}")
