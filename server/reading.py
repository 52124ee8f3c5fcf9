"""Reading the service's input files: a cheap look at one (obs and the first cells), and a file
read whole held for the call that runs on it next."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import anndata as ad

from instructcell_agent.core_model.errors import InputFileError
from instructcell_agent.core_model.genomes import selection_note
from instructcell_agent.core_model.obs_table import join_note
from instructcell_agent.core_model.readers import cell_file_format, read_cells


@contextlib.contextmanager
def opened(path: Path, genome: str | None = None) -> Iterator[ad.AnnData]:
    """The cells at `path` for a look at obs and the first cells: an .h5ad opened backed (its
    matrix stays on disk; closed on exit), other formats, or one genome's cells, read whole
    (core_model/readers.py)."""
    if cell_file_format(path) != "h5ad" or genome is not None:
        yield read_cells(path, genome=genome)
        return
    try:
        backed = ad.read_h5ad(path, backed="r")
    except Exception as exc:  # noqa: BLE001
        read_cells(path)  # the full reader says what the file is instead (not HDF5, a CSV, ...)
        raise InputFileError(f"{path} could not be opened as AnnData: {type(exc).__name__}: {exc}") from exc
    try:
        yield backed
    finally:
        backed.file.close()


class HeldRead:
    """A file read whole to count its cells or to inspect it (a Cell Ranger matrix, a zarr store,
    a count table, one genome's cells), held for the call that runs on it next, which would
    otherwise read it again. One file at a time, taken once (by any call that reads cells); a file
    changed since is read afresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: tuple[tuple, ad.AnnData] | None = None

    def put(self, paths: list[Path], genome: str | None, cells: ad.AnnData) -> None:
        with self._lock:
            self._entry = (files_key(paths, genome), cells)

    def take(self, paths: list[Path], genome: str | None) -> ad.AnnData | None:
        with self._lock:
            entry, self._entry = self._entry, None
        return entry[1] if entry is not None and entry[0] == files_key(paths, genome) else None

    def drop(self) -> None:
        with self._lock:
            self._entry = None


def files_key(paths: list[Path], genome: str | None) -> tuple:
    """What identifies the content read cheaply: paths, genome and each file's size and mtime (the
    files of a matrix folder)."""
    def stats(path: Path) -> tuple:
        files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
        return str(path), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)

    return genome, tuple(stats(p) for p in paths)


def read_notes(adata: ad.AnnData, req) -> list[str]:
    """What this call's reading left out or added (the other species' cells where it chose a
    genome; the columns of its obs_table; a file written after such a reading keeps the record,
    which is not this call's doing)."""
    notes = [selection_note(adata) if req.genome else None,
             join_note(adata) if getattr(req, "obs_table", None) else None]
    return [n for n in notes if n]
