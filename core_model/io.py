"""Reading and writing AnnData files with errors that say what was expected and what to do."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import CheckpointError, InputFileError, LabelKeyError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_EXPECTED = "expected an AnnData .h5ad file (HDF5), e.g. written by adata.write_h5ad()"


def _describe_non_hdf5(head: bytes) -> str:
    """A short guess at what a non-HDF5 file is, from its first bytes."""
    if not head:
        return "the file is empty"
    if head.startswith(b"PK"):
        return "it is a zip archive (a zipped zarr store or .npz?)"
    if head.startswith(b"\x1f\x8b"):
        return "it is gzip-compressed (a text table? name it .csv.gz, .tsv.gz or .txt.gz)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "its content is not HDF5"
    if "," in text or "\t" in text:
        return "it looks like a text table (CSV/TSV): name it .csv, .tsv or .txt to have it read as one"
    return "it looks like a text file"


def _is_hdf5(path: Path) -> bool:
    """HDF5 signature at offset 0 or at a user-block offset (512, 1024, 2048, ...)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        offset = 0
        while offset + len(_HDF5_SIGNATURE) <= size:
            fh.seek(offset)
            if fh.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def read_h5ad(path: PathLike, *, expected: str = _EXPECTED) -> anndata.AnnData:
    """Read an ``.h5ad`` file into memory, read-only.

    Parameters
    ----------
    path
        Path to the file.
    expected
        What the error messages say was expected (callers that read other formats too say so).

    Returns
    -------
    anndata.AnnData

    Raises
    ------
    InputFileError
        When the path is missing, a directory, unreadable, not HDF5, or HDF5 but not AnnData.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputFileError(f"input file not found: {p}; {expected}")
    if p.is_dir():
        raise InputFileError(
            f"{p} is a directory; {expected} (for a zarr store use anndata.read_zarr)"
        )
    try:
        if not _is_hdf5(p):
            with p.open("rb") as fh:
                head = fh.read(512)
            raise InputFileError(
                f"{p} is not an HDF5 file: {_describe_non_hdf5(head)}; {expected}"
            )
    except OSError as exc:
        raise InputFileError(f"cannot read {p}: {exc.strerror or exc}; {expected}") from exc
    try:
        # anndata opens the file in mode "r": it never writes to the input.
        adata = anndata.read_h5ad(p)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a readable AnnData"
        raise InputFileError(
            f"{p} is an HDF5 file but could not be read as AnnData ({type(exc).__name__}: {exc}); "
            f"{expected}"
        ) from exc
    logger.info("read %s: %d cells x %d genes", p, adata.n_obs, adata.n_vars)
    return adata


def obs_column(adata: anndata.AnnData, key: str, hint: str) -> pd.Series:
    """``adata.obs[key]`` as it is (missing values kept); a missing column is refused with a
    message listing the columns there are, then `hint`."""
    if key not in adata.obs.columns:
        available = ", ".join(repr(str(c)) for c in adata.obs.columns) or "none"
        raise LabelKeyError(f"obs has no column {key!r}; available obs columns: {available}. {hint}")
    return adata.obs[key]


def get_labels(adata: anndata.AnnData, key: str) -> np.ndarray:
    """Return the ``obs[key]`` column as an array of strings.

    Parameters
    ----------
    adata
        The AnnData object.
    key
        Name of an ``obs`` column (cell type, condition, ...).

    Returns
    -------
    numpy.ndarray
        One string per cell (unicode dtype).

    Raises
    ------
    LabelKeyError
        When the column is missing (the message lists the available columns) or some cells
        have no label (NaN/None).
    """
    column = obs_column(adata, key, "Pass the name of the column that holds the labels")
    n_missing = int(column.isna().sum())
    if n_missing:
        raise LabelKeyError(
            f"obs column {key!r} has no label for {n_missing:,} of {adata.n_obs:,} cells (NaN); "
            f"fill them or drop those cells first, e.g. adata = adata[adata.obs[{key!r}].notna()]"
        )
    return np.asarray(column.astype(str).to_numpy(), dtype=str)


def select_matrix(
    adata: anndata.AnnData, *, layer: str | None = None, use_raw: bool = False
) -> tuple[Any, list[str]]:
    """Pick the expression matrix and its gene names.

    Parameters
    ----------
    adata
        The AnnData object (not modified).
    layer
        Name of a layer in ``adata.layers`` to use instead of ``adata.X``.
    use_raw
        Use ``adata.raw.X`` and ``adata.raw.var_names``.

    Returns
    -------
    X : numpy.ndarray or scipy.sparse matrix
        Cells x genes (the object stored in ``adata``, not a copy: do not modify it).
    var_names : list of str
        Gene names of the columns of ``X``.

    Raises
    ------
    InputFileError
        When the layer or ``adata.raw`` is missing.
    ValueError
        When both ``layer`` and ``use_raw`` are given.
    """
    if layer is not None and use_raw:
        raise ValueError("pass either layer=... or use_raw=True, not both")
    if use_raw:
        if adata.raw is None:
            layers = ", ".join(map(repr, adata.layers.keys())) or "none"
            raise InputFileError(
                f"use_raw=True but the input has no adata.raw; use adata.X (use_raw=False) or "
                f"a layer (available layers: {layers})"
            )
        return _in_memory(adata.raw.X), [str(n) for n in adata.raw.var_names]
    if layer is not None:
        if layer not in adata.layers:
            layers = ", ".join(map(repr, adata.layers.keys())) or "none"
            raw = "; adata.raw is present (use_raw=True)" if adata.raw is not None else ""
            raise InputFileError(
                f"the input has no layer {layer!r}; available layers: {layers}{raw}; "
                "omit layer to use adata.X"
            )
        return _in_memory(adata.layers[layer]), [str(n) for n in adata.var_names]
    if adata.X is None:
        layers = ", ".join(map(repr, adata.layers.keys())) or "none"
        raw = "; adata.raw is present (use_raw=True, CLI --use-raw)" if adata.raw is not None else ""
        raise InputFileError(f"the input has no expression matrix (adata.X is None); name a layer to read instead "
                             f"(layer=..., CLI --layer; available layers: {layers}){raw}")
    return _in_memory(adata.X), [str(n) for n in adata.var_names]


def _in_memory(X: Any) -> Any:
    """The matrix of a file opened with `backed="r"` (anndata's backed sparse dataset, an h5py
    dataset) read into memory, as a file read whole would hold it; arrays and sparse matrices as
    they are. The value checks and the alignment slice and sum it like an array."""
    if isinstance(X, np.ndarray) or sp.issparse(X):
        return X
    if hasattr(X, "to_memory"):
        return X.to_memory()
    return np.asarray(X[()])


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


# mkstemp makes 0600 files; results and checkpoints are for sharing, as a plain open() would make them.
SHARED_MODE = 0o644


def write_h5ad_atomic(
    adata: anndata.AnnData, path: PathLike, *, protect: Sequence[PathLike] = ()
) -> Path:
    """Write ``adata`` to ``path`` atomically (temporary file in the same folder, then rename).

    A reader never sees a half-written file, and a failure leaves any previous file in place.

    Parameters
    ----------
    adata
        The object to write.
    path
        Destination ``.h5ad`` path; missing parent folders are created.
    protect
        Paths that must never be overwritten (typically the input file).

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    InputFileError
        When ``path`` is a protected file or a directory, or the write fails.
    """
    target = Path(path).expanduser()
    for protected in protect:
        if _same_file(target, Path(protected).expanduser()):
            raise InputFileError(
                f"refusing to overwrite the input file {target}; choose another output path"
            )
    if target.is_dir():
        raise InputFileError(
            f"output path {target} is a directory; give a file name ending in .h5ad"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp.h5ad"
    )
    os.close(fd)
    try:
        with _string_columns_writable():
            adata.write_h5ad(tmp_name)
        os.chmod(tmp_name, SHARED_MODE)
        os.replace(tmp_name, target)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise InputFileError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    logger.info("wrote %s", target)
    return target


def _string_columns_writable():
    """pandas 3 stores text columns as string arrays, which anndata 0.11+ writes only when allowed
    (files older anndata cannot read); without this every annotated file under pandas 3 fails to
    write. A no-op where the setting does not exist."""
    settings = anndata.settings
    if hasattr(settings, "allow_write_nullable_strings") and hasattr(settings, "override"):
        return settings.override(allow_write_nullable_strings=True)
    return contextlib.nullcontext()


def file_sha256(path: PathLike) -> str:
    """sha256 of a file's bytes, read in 4 MB blocks (data files and weights are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def vocab_sha256(vocab: Sequence[str]) -> str:
    """Hash of a gene vocabulary (order matters: weights are laid out in it)."""
    return hashlib.sha256(json.dumps(list(vocab)).encode()).hexdigest()


def atomic_target(directory: PathLike, name: str) -> Path:
    """An empty temporary file in `directory` to write `name` into before renaming it in place."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}-", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def write_json_atomic(obj: Any, path: PathLike) -> Path:
    """Write `obj` as indented JSON to `path` atomically (temporary file, then rename)."""
    return write_text_atomic(json.dumps(obj, indent=1), path)


def write_text_atomic(text: str, path: PathLike) -> Path:
    """Write `text` to `path` atomically (temporary file, then rename), readable by everyone."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, SHARED_MODE)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def save_tensors_with_meta(root: PathLike, weights_name: str, meta_name: str, tensors: dict[str, Any],
                           meta: dict[str, Any]) -> None:
    """Write a safetensors file and the JSON describing it into a checkpoint directory, each
    atomically; the JSON gets the tensors file's sha256 (`weights_sha256`), so a pair torn by an
    interrupted write is refused on load. Both end readable by everyone (a checkpoint is shared)."""
    from safetensors.torch import save_file

    root = Path(root)
    weights_tmp, meta_tmp = atomic_target(root, weights_name), atomic_target(root, meta_name)
    try:
        save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(weights_tmp))
        meta_tmp.write_text(json.dumps({**meta, "weights_sha256": file_sha256(weights_tmp)}, indent=1))
        for tmp in (weights_tmp, meta_tmp):
            tmp.chmod(SHARED_MODE)
        os.replace(weights_tmp, root / weights_name)
        os.replace(meta_tmp, root / meta_name)
    finally:
        for tmp in (weights_tmp, meta_tmp):
            tmp.unlink(missing_ok=True)


def load_tensors_with_meta(root: PathLike, weights_name: str, meta_name: str, vocab: Sequence[str],
                           format_version: int, refit: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensors and JSON `save_tensors_with_meta` wrote, refused (CheckpointError, saying to run
    `refit`) when the format, the gene vocabulary or the tensors file's hash does not match."""
    from safetensors.torch import load_file

    root = Path(root)
    meta = json.loads((root / meta_name).read_text())
    if meta.get("format_version") != format_version:
        raise CheckpointError(f"{root}/{meta_name}: format {meta.get('format_version')} is not {format_version}")
    if meta.get("vocab_sha256") != vocab_sha256(vocab):
        raise CheckpointError(f"{root}: {weights_name} was written for another gene vocabulary; refit it "
                              f"(`{refit}`) or delete {weights_name} and {meta_name}")
    if meta.get("weights_sha256") != file_sha256(root / weights_name):
        raise CheckpointError(f"{root}: {weights_name} does not match {meta_name} (interrupted write?); refit it "
                              f"(`{refit}`)")
    return load_file(str(root / weights_name)), meta


def read_checkpoint_lists(root: PathLike) -> tuple[list[str], dict[str, Any]]:
    """A checkpoint directory's gene vocabulary and label sets, refused (CheckpointError) when it
    is not one. What the steps that fit beside the model (read-out, reference cells) read."""
    root = Path(root)
    for name in ("config.json", "gene_vocab.json", "labels.json"):
        if not (root / name).is_file():
            raise CheckpointError(f"{root} is not a checkpoint directory: missing {name}")
    return json.loads((root / "gene_vocab.json").read_text()), json.loads((root / "labels.json").read_text())
