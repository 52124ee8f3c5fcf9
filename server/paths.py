"""Resolve user-supplied paths and keep them inside the configured data roots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from instructcell_agent.core_model.errors import InputFileError, InstructCellError
from instructcell_agent.core_model.mtx import is_matrix_file
from instructcell_agent.core_model.readers import cell_file_format
from instructcell_agent.core_model.text_matrix import is_text_table

# AnnData files, Cell Ranger's .h5, loom files, Matrix Market files (GEO's prefixed ones too) and
# text tables (by their own suffixes, core_model/mtx.py and text_matrix.py); folders (zarr stores,
# matrix folders) are admitted by what they hold instead (core_model/readers.py).
INPUT_SUFFIXES = (".h5ad", ".h5", ".loom", ".h5seurat")


class PathNotAllowedError(InstructCellError):
    """A path outside the data roots (and not a finished output), a missing file, a folder that
    holds no cells, or the wrong file type."""


def resolve_input(path: str | os.PathLike, roots: Sequence[Path], suffixes: Sequence[str] = INPUT_SUFFIXES,
                  outputs: Path | None = None) -> Path:
    """The real path of an existing input file, zarr store or matrix folder inside one of `roots`,
    or a finished file of the server's own output folder `outputs` (an annotated file to explain,
    generated cells to annotate; never one still being written in its staging area).

    Relative paths are taken relative to the first root (clients rarely know the server's working
    directory). The check runs on the fully resolved path, so `..` segments and symlinks that
    point outside every root are refused, while a symlink between two places inside the roots
    is fine.
    """
    raw = str(path).strip()
    if not raw:
        raise PathNotAllowedError("h5ad_path is empty; give the path of an .h5ad file inside a data root")
    if "\x00" in raw:
        raise PathNotAllowedError("h5ad_path contains a NUL byte")
    candidate = Path(raw).expanduser()
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise PathNotAllowedError(f"no such file: {raw}{_roots_hint(roots)}") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise PathNotAllowedError(f"cannot resolve {raw}: {exc}") from None
    if outputs is not None and real.is_relative_to(outputs):
        if any(part.startswith(".") for part in real.relative_to(outputs).parts):
            raise PathNotAllowedError(f"{raw} is not a finished output")
    elif not any(real.is_relative_to(root) for root in roots):
        raise PathNotAllowedError(f"{raw} is outside the allowed data roots{_roots_hint(roots)}")
    if real.is_dir():
        try:
            cell_file_format(real)
        except InputFileError as exc:
            raise PathNotAllowedError(str(exc)) from None
        return real
    if not real.is_file():
        raise PathNotAllowedError(f"{raw} is not a regular file or folder (a device?); give an .h5ad file")
    if suffixes and real.suffix.lower() not in suffixes and not is_matrix_file(real) and not is_text_table(real):
        raise PathNotAllowedError(f"{raw} does not end in {' or '.join(suffixes)}; give an AnnData .h5ad file "
                                  "(or a Cell Ranger .h5 file, matrix folder, AnnData .zarr store, or a .csv, .tsv or "
                                  ".txt count table)")
    return real


def resolve_output(relative: str, output_dir: Path) -> Path:
    """An existing file below `output_dir`, named relative to it (for resource reads)."""
    candidate = (output_dir / relative).resolve()
    if not candidate.is_relative_to(output_dir) or candidate == output_dir:
        raise PathNotAllowedError(f"{relative!r} is not inside the output directory")
    if not candidate.is_file():
        raise PathNotAllowedError(f"no output file {relative!r}")
    if any(part.startswith(".") for part in candidate.relative_to(output_dir).parts):
        raise PathNotAllowedError(f"{relative!r} is not a finished output")  # staging area
    return candidate


def _roots_hint(roots: Sequence[Path]) -> str:
    return "; allowed data roots: " + ", ".join(str(r) for r in roots)
