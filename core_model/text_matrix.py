"""Expression matrices as text tables: the CSV/TSV files GEO series ship (GSE..._counts.csv.gz).

Many published data sets exist only as one delimited table of counts or TPM, genes in rows and
cells in columns (R's `write.csv` of a count matrix, Drop-seq's DGE files) or the other way round
(pandas' `to_csv` of a cells x genes frame). What varies between them, and how each is read:

- compression: none, gzip, bzip2 or xz, told by the suffix;
- delimiter: tab, comma, or runs of spaces, told by the header and first data line;
- the header: R leaves the corner cell out (one field fewer than a data line), pandas and most
  tools write it (e.g. "GENE", "gene_id" or ""); a table may lead with more than one name column
  ("gene_id,gene_name,cell1,..."), counted as the leading fields of the first data line that are
  not numbers;
- orientation: whichever axis holds names that look like genes (symbols of the shipped tables,
  any case, or Ensembl ids) holds the genes. A table where neither does is refused, with
  examples of both axes' names;
- lines that end in the delimiter (an empty last field) are read without it; a long table (two
  names and one value per line) is refused with the pivot to make.

Values are parsed in blocks of rows into a sparse float32 matrix, so a large count table never
sits in memory as float64 text-parsed frames. The file is opened read-only.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import logging
import lzma
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import IO

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import InputFileError
from .genes import ENSEMBL_ID, ensembl_to_symbol_table, human_alias_table, mouse_to_human_table, split_compound_name

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".tab")
_OPENERS: dict[str, Callable[..., IO[str]]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_PANDAS_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
MIN_GENE_LIKE = 0.2  # share of an axis's names that must look like genes (GEO tables: 0.7 to 1.0)
_SAMPLE_NAMES = 2000
_BLOCK_VALUES = 20_000_000  # values parsed per block: about 80 MB as float32
_MAX_NAME_COLUMNS = 4


def is_text_table(path: Path) -> bool:
    """Whether `path` is named as a delimited text table (compressed or not)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _OPENERS:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in TABLE_SUFFIXES


def _compression(path: Path) -> str | None:
    return _PANDAS_COMPRESSION.get(path.suffix.lower())


def _open_text(path: Path) -> IO[str]:
    opener = _OPENERS.get(path.suffix.lower(), open)
    return opener(path, "rt", encoding="utf-8-sig", newline="")


def head_lines(path: Path) -> tuple[str, str]:
    """The header and first data line, without line ends; refused when either is missing."""
    try:
        with _open_text(path) as fh:
            header, first = fh.readline(), fh.readline()
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path} could not be read as a text table ({type(exc).__name__}: {exc}); a "
                             f"{path.suffix} file must hold {_compression(path) or 'plain'} text") from exc
    if not header.strip() or not first.strip():
        raise InputFileError(f"{path} holds {'no lines' if not header.strip() else 'a header and no data'}; "
                             "expected a table of genes x cells (or cells x genes) with a header line")
    return header.rstrip("\r\n"), first.rstrip("\r\n")


def delimiter_of(header: str, first: str) -> str | None:
    """'\\t' or ',' when both lines hold it, else None (runs of blanks)."""
    for delimiter in ("\t", ","):
        if delimiter in header and delimiter in first:
            return delimiter
    if "\t" in first or "," in first:
        return "\t" if "\t" in first else ","  # a one-cell table: the header has no delimiter
    return None


def fields_of(line: str, delimiter: str | None) -> list[str]:
    """A line's fields, quotes removed (None: split on runs of blanks)."""
    if delimiter is None:
        return [f.strip('"') for f in line.split()]
    return next(csv.reader([line], delimiter=delimiter))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.strip().upper() in ("", "NA", "NAN")  # a missing value is a value, not a name
    return True


def _layout(header: list[str], first: list[str], path: Path) -> tuple[int, list[str], list[str]]:
    """(number of leading name columns, the value columns' names, the name columns' headers)."""
    lead = 0
    while lead < len(first) and lead < _MAX_NAME_COLUMNS and not _is_number(first[lead]):
        lead += 1
    lead = max(lead, 1)  # numeric row names ("1", "2", ...) are still names
    n_values = len(first) - lead
    if n_values < 1:
        raise InputFileError(f"{path}: its first data line holds names and no values ({first[:5]}); expected "
                             "a table of genes x cells (or cells x genes) with a header line")
    if n_values == 1 and lead >= 2:
        raise InputFileError(f"{path} looks like a long table, one value per line after {lead} names "
                             f"({', '.join(first)}); pivot it to genes x cells first, e.g. in pandas: "
                             "df.pivot_table(index='gene', columns='cell', values='count', fill_value=0)")
    if len(header) == n_values:  # R's write.csv: no corner cell
        return lead, header, [""] * lead
    if len(header) == len(first):
        return lead, header[lead:], header[:lead]
    raise InputFileError(f"{path}: the header has {len(header):,} fields and the first data line {len(first):,} "
                         f"({lead} name field(s) and {n_values:,} values); each line must have the header's "
                         "fields, or one fewer header field when the header leaves the row-name corner out")


@lru_cache(maxsize=1)
def _known_gene_names() -> frozenset[str]:
    """Upper-case gene names the shipped tables know: human symbols and aliases, mouse symbols."""
    names = {s.upper() for s in ensembl_to_symbol_table().values()}
    names.update(a.upper() for a in human_alias_table())
    names.update(m.upper() for m in mouse_to_human_table())
    return frozenset(names)


def gene_like_share(names: Sequence[object]) -> float:
    """Share of `names` (a sample of at most 2,000) that look like genes."""
    sample = [str(n).strip() for n in names[:: max(1, len(names) // _SAMPLE_NAMES)]][:_SAMPLE_NAMES]
    if not sample:
        return 0.0
    known = _known_gene_names()

    def gene_like(name: str) -> bool:
        if ENSEMBL_ID.match(name) or name.upper() in known:
            return True
        return split_compound_name(name) is not None

    return sum(map(gene_like, sample)) / len(sample)


def _parse_values(path: Path, delimiter: str | None, lead: int, n_values: int,
                  trailing: bool) -> tuple[sp.csr_matrix, pd.Index]:
    """Every data line's values as a sparse float32 matrix, and its name columns as an index
    (`trailing`: each line ends in a delimiter, whose empty last field is left out)."""
    # Only the name columns get a type: the parser's own integer and float columns are faster to
    # read than a float32 type named for each of 10,000s of columns (16.0 against 9.4 s for
    # zheng2017's cells x genes), and a column holding text fails the conversion below all the same.
    dtypes = {i: str for i in range(lead)}
    block = max(16, _BLOCK_VALUES // max(n_values, 1))
    blocks, names = [], []
    try:
        reader = pd.read_csv(path, sep=delimiter if delimiter is not None else r"\s+", header=None, skiprows=1,
                             index_col=list(range(lead)), dtype=dtypes, chunksize=block,
                             usecols=range(lead + n_values) if trailing else None,
                             compression=_compression(path), encoding="utf-8")
        with reader:
            for chunk in reader:
                blocks.append(sp.csr_matrix(chunk.to_numpy(dtype=np.float32, copy=False)))
                names.append(chunk.index)
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputFileError(f"{path} could not be read as a table of numbers after {lead} name column(s) "
                             f"({type(exc).__name__}: {exc}); every value must be a number (counts, CPM/TPM or "
                             "log-normalised values)") from exc
    index = names[0].append(names[1:]) if len(names) > 1 else names[0]
    X = sp.vstack(blocks, format="csr", dtype=np.float32)
    if np.isnan(X.data).any():
        _refuse_gaps(path, X, delimiter, lead + n_values)
    return X, index


def _refuse_gaps(path: Path, X: sp.csr_matrix, delimiter: str | None, n_fields: int) -> None:
    """Refuse a table with an empty or NA field, or a line cut short (the parser fills both with
    NaN), naming the first such line; no model can read a gene's missing value."""
    row = int(np.searchsorted(X.indptr, np.flatnonzero(np.isnan(X.data))[0], side="right")) - 1
    with _open_text(path) as fh:
        for number, line in enumerate(fh, start=1):
            if number == row + 2:  # line 1 is the header
                break
    held = len(fields_of(line.rstrip("\r\n"), delimiter))
    what = f"{held:,} fields where the first data line holds {n_fields:,}" if held != n_fields else \
        "an empty or NA value"
    raise InputFileError(f"{path}: line {row + 2:,} holds {what}; every line must hold a number for every "
                         "cell (0 for a gene not detected)")


def _name_frame(index: pd.Index, headers: list[str]) -> pd.DataFrame:
    """The most gene-like (or, for cells, the first) level of `index` as the index; the others as columns."""
    levels = [index.get_level_values(i).astype(str) for i in range(index.nlevels)]
    best = max(range(len(levels)), key=lambda i: gene_like_share(levels[i]))
    columns = {}
    for i, level in enumerate(levels):
        if i != best:
            columns[headers[i] or f"name_{i}"] = np.asarray(level)
    return pd.DataFrame(columns, index=pd.Index(np.asarray(levels[best]), dtype=object))


def read_text_table(path: Path) -> anndata.AnnData:
    """The cells x genes AnnData of a delimited text table (see the module docstring).

    Raises
    ------
    InputFileError
        For an empty or unreadable file, lines of unequal length, a value that is not a number,
        or names on neither axis that look like genes.
    """
    header_line, first_line = head_lines(path)
    delimiter = delimiter_of(header_line, first_line)
    header, first = fields_of(header_line, delimiter), fields_of(first_line, delimiter)
    # Some scripts end every line with the delimiter: an empty last field on each line, not a cell.
    trailing = delimiter is not None and len(first) > 2 and header[-1] == "" and first[-1] == ""
    if trailing:
        header, first = header[:-1], first[:-1]
    lead, column_names, name_headers = _layout(header, first, path)
    X, index = _parse_values(path, delimiter, lead, len(column_names), trailing)
    row_frame = _name_frame(index, name_headers)
    row_names = row_frame.index
    row_share, column_share = gene_like_share(list(row_names)), gene_like_share(column_names)
    if max(row_share, column_share) < MIN_GENE_LIKE:
        raise InputFileError(
            f"{path}: neither its row names (e.g. {', '.join(list(row_names[:3]))}) nor its column names (e.g. "
            f"{', '.join(column_names[:3])}) look like genes (symbols or Ensembl ids); one axis must name the genes")
    genes_in_rows = row_share >= column_share
    if genes_in_rows:
        adata = anndata.AnnData(X=X.T.tocsr(), obs=pd.DataFrame(index=pd.Index(column_names, dtype=object)),
                                var=row_frame)
    else:
        adata = anndata.AnnData(X=X, obs=row_frame, var=pd.DataFrame(index=pd.Index(column_names, dtype=object)))
    adata.var_names_make_unique()
    adata.obs_names_make_unique()
    logger.info("%s: a %s-delimited table, genes in %s (%.0f%% of row names and %.0f%% of column names look "
                "like genes)", path, {"\t": "tab", ",": "comma", None: "blank"}[delimiter],
                "rows" if genes_in_rows else "columns", 100 * row_share, 100 * column_share)
    return adata
