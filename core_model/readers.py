"""Cell files as users have them: AnnData (.h5ad, .zarr), Cell Ranger's outputs, text tables, loom,
h5Seurat.

Cell Ranger writes each sample's cells twice, as an HDF5 file (`filtered_feature_bc_matrix.h5`)
and as a folder of Matrix Market files (`filtered_feature_bc_matrix/`: matrix.mtx.gz,
features.tsv.gz, barcodes.tsv.gz; genes.tsv in version 2). Most users hold those before they hold
an .h5ad, so the command line and the MCP server read them directly, the way scanpy's tutorials
do: gene symbols as var_names (made unique with scanpy's -1, -2 suffixes), Ensembl ids kept in
`var['gene_ids']`, gene-expression features only (antibody and CRISPR features dropped); the
Matrix Market files also as GEO serves them (core_model/mtx.py). Published sets often come as
one delimited table instead (core_model/text_matrix.py), or as loom or h5Seurat files
(core_model/loom.py, core_model/h5seurat.py).
Every reader opens the input read-only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import anndata

from .errors import InputFileError
from .genomes import feature_genomes, genome_prefixes, keep_genome, selection_note, several_genomes_error
from .io import PathLike, read_h5ad
from .h5seurat import is_h5seurat, read_h5seurat
from .loom import is_loom, read_loom
from .mtx import is_matrix_file, matrix_files, read_matrix_market
from .text_matrix import TABLE_SUFFIXES, is_text_table, read_text_table

logger = logging.getLogger(__name__)

FORMATS = ("h5ad", "zarr", "10x_h5", "10x_mtx", "text", "loom", "h5seurat")
ACCEPTED = ("an AnnData .h5ad file or .zarr store, Cell Ranger's filtered_feature_bc_matrix "
            "(the .h5 file, or matrix.mtx.gz or its folder; GEO's GSM..._matrix.mtx.gz too), or a table of "
            f"genes x cells or cells x genes ({', '.join(TABLE_SUFFIXES)}, optionally .gz), or a .loom or "
            ".h5Seurat file")
_ZARR_MARKERS = (".zgroup", ".zattrs", "zarr.json")
# Formats of other ecosystems, answered with the conversion to make rather than a reading error.
_CONVERT_FIRST = {
    ".rds": "an R object (Seurat or SingleCellExperiment?); write an .h5ad from R first, e.g. with "
            "zellkonverter::writeH5AD(sce, 'cells.h5ad'), or SeuratDisk::SaveH5Seurat(obj, 'cells.h5Seurat'), "
            "which is read directly",
    ".xlsx": "an Excel workbook; save the sheet of counts as .csv (genes x cells or cells x genes) and pass that",
    ".xls": "an Excel workbook; save the sheet of counts as .csv (genes x cells or cells x genes) and pass that",
}


def cell_file_format(path: PathLike) -> str:
    """Which of `FORMATS` the file or folder at `path` is. A file that is none of them is
    called "h5ad", so that `read_h5ad` says what it is instead (a CSV, not HDF5, ...).

    Raises
    ------
    InputFileError
        For a missing path, or a folder that is neither a zarr store nor a matrix folder (a Cell
        Ranger `outs` folder is answered with the file to pass).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputFileError(f"input not found: {p}; expected {ACCEPTED}")
    if p.is_dir():
        if any((p / m).exists() for m in _ZARR_MARKERS):
            return "zarr"
        if matrix_files(p):  # Cell Ranger's folder, or GEO's prefixed files (one or several samples)
            return "10x_mtx"
        raise InputFileError(f"{p} is a folder but neither a zarr store nor a matrix folder; "
                             f"expected {ACCEPTED}{_outs_hint(p)}")
    if is_matrix_file(p):
        return "10x_mtx"  # the matrix file itself: its folder holds the barcodes and features
    if is_text_table(p):
        return "text"
    if is_loom(p):
        return "loom"
    if is_h5seurat(p):
        return "h5seurat"
    if _is_10x_h5(p):
        return "10x_h5"
    return "h5ad"  # an AnnData saved under another suffix (.h5) is read as one too


def read_cells(path: PathLike, genome: str | None = None) -> anndata.AnnData:
    """Read the cells at `path` (see `FORMATS`) into memory, read-only.

    `genome`: for a matrix counted against several genomes (a barnyard or xenograft experiment,
    core_model/genomes.py), the one to read: its genes, and the cells counted mostly on them.

    Raises
    ------
    InputFileError
        When the path is missing or holds none of the accepted formats; the message says which
        format it was taken for and why it failed. For a multi-genome matrix read without
        `genome`, or a `genome` the file does not hold.
    """
    p = Path(path).expanduser()
    kind = cell_file_format(p)
    if kind == "h5ad":
        if p.suffix.lower() in _CONVERT_FIRST:
            raise InputFileError(f"{p}: {_CONVERT_FIRST[p.suffix.lower()]}; expected {ACCEPTED}")
        adata = read_h5ad(p, expected=f"expected {ACCEPTED}")
    else:
        if "raw_feature_bc_matrix" in str(p):
            logger.warning("%s is Cell Ranger's raw matrix: it holds every barcode, empty droplets "
                           "included; the filtered_feature_bc_matrix beside it holds the cells", p)
        adata = _READERS[kind](p)
    adata = _one_genome(adata, p, genome)
    logger.info("read %s (%s): %d cells x %d genes", p, kind, adata.n_obs, adata.n_vars)
    return adata


def _one_genome(adata: anndata.AnnData, p: Path, genome: str | None) -> anndata.AnnData:
    """One species' cells and genes of a multi-genome matrix, whose prefixed gene names
    (GRCh38_CD3E) no vocabulary matches; a file of one genome as it is."""
    genomes = feature_genomes(adata)
    if genomes is None:
        own = sorted(set(map(str, adata.var["genome"]))) if "genome" in adata.var else []
        if not own and (prefixed := genome_prefixes(list(adata.var_names))) is not None:
            own = sorted(set(prefixed.dropna()))  # one genome's genes, named with its prefix (alignment reads it off)
        if genome is not None and own != [genome]:
            held = f"one genome's genes ({own[0]})" if own else "genes without genome prefixes"
            raise InputFileError(f"genome={genome!r} selects one species of a mixed-species matrix; {p} holds "
                                 f"{held}: leave genome out")
        return adata
    if genome is None:
        raise several_genomes_error(str(p), adata, genomes)
    selected = keep_genome(adata, genomes, genome, str(p))
    if selected.n_obs < adata.n_obs:
        warnings.warn(selection_note(selected), GenomeSelectionWarning, stacklevel=3)
    return selected


class GenomeSelectionWarning(UserWarning):
    """Cells of a multi-genome matrix were left out: those of the other species, or of both."""


def _read_zarr(p: Path) -> anndata.AnnData:
    try:
        return anndata.read_zarr(str(p))
    except Exception as exc:  # noqa: BLE001 - any failure means "not a readable AnnData store"
        raise InputFileError(f"{p} looks like a zarr store but could not be read as AnnData "
                             f"({type(exc).__name__}: {exc}); expected {ACCEPTED}") from exc


def _read_10x_h5(p: Path) -> anndata.AnnData:
    import scanpy as sc

    try:
        with _duplicate_symbols_expected():
            adata = sc.read_10x_h5(p)  # gene expression only; no backup_url, so nothing is fetched
    except Exception as exc:  # noqa: BLE001 - scanpy's own errors (several genomes, damaged file)
        raise InputFileError(f"{p} could not be read as a Cell Ranger .h5 file ({type(exc).__name__}: {exc}); "
                             "read it with scanpy.read_10x_h5 (genome=...) and save an .h5ad") from exc
    adata.var_names_make_unique()
    return adata


def _read_10x_mtx(p: Path) -> anndata.AnnData:
    try:
        with _duplicate_symbols_expected():
            return read_matrix_market(p)
    except InputFileError as exc:
        raise InputFileError(f"{exc}; expected {ACCEPTED}") from exc


@contextlib.contextmanager
def _duplicate_symbols_expected() -> Iterator[None]:
    """Silence anndata's warning about repeated gene symbols: Cell Ranger's references repeat a
    few (one symbol, two Ensembl ids), and the names are made unique right after reading."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        yield


_READERS = {"zarr": _read_zarr, "10x_h5": _read_10x_h5, "10x_mtx": _read_10x_mtx, "text": read_text_table,
            "loom": read_loom, "h5seurat": read_h5seurat}


def _is_10x_h5(p: Path) -> bool:
    """Cell Ranger's HDF5 layout: a 'matrix' group with 'features' (version 3 onwards) or, in
    version 2, one group per genome holding 'genes' and 'barcodes'. An AnnData file has neither."""
    import h5py

    try:
        with h5py.File(p, "r") as f:
            matrix = f.get("matrix")
            if isinstance(matrix, h5py.Group) and "features" in matrix:
                return True
            if "X" in f or "obs" in f:
                return False
            return any(isinstance(g, h5py.Group) and {"genes", "barcodes", "data"} <= set(g) for g in f.values())
    except OSError:  # not HDF5 at all: read_h5ad says what it is
        return False


def _matrices_below(p: Path, depth: int = 5, max_folders: int = 500) -> list[Path]:
    """Cell Ranger's filtered .h5 files at most `depth` folders below `p`; the walk stops after
    `max_folders` folders, so naming a large data root costs little."""
    found, seen = [], 0
    for folder, subfolders, files in os.walk(p):
        seen += 1
        found += [Path(folder) / f for f in files if f.endswith("filtered_feature_bc_matrix.h5")]
        if seen >= max_folders:
            break
        if len(Path(folder).relative_to(p).parts) >= depth:
            subfolders.clear()
    return found


def _outs_hint(p: Path) -> str:
    """Name the matrices to pass when `p` holds Cell Ranger output: `outs/` of `count`, or the
    per-sample folders of `multi` (outs/per_sample_outs/<sample>/count/sample_filtered_...)."""
    found = sorted(_matrices_below(p), key=lambda f: (len(f.parts), str(f)))
    if not found:
        return ""
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    return f"; this looks like Cell Ranger's output: pass {' or '.join(map(str, found[:3]))}{more}"
