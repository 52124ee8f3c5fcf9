"""Several samples read as one file: each sample's cells, named by sample, over the genes all share.

A study is several samples, each its own Cell Ranger output or .h5ad. Read together they are
answered in one run, and `obs['sample']` says where each cell came from (what the command line
then reports on, sample by sample; 'sample_file' where the files already have a 'sample'
column). Cell names get the sample as a suffix ('AAACCTG-1-pbmc_ctrl'), since Cell Ranger's
barcodes repeat across samples.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import anndata

from .errors import InputFileError
from .io import PathLike
from .mtx import is_matrix_file
from .readers import read_cells
from .values import detect_value_type

logger = logging.getLogger(__name__)

SAMPLE_KEY = "sample"
# Folder names that say what a file is, not whose it is (Cell Ranger's output layout).
_LAYOUT_NAMES = {"outs", "count", "per_sample_outs", "filtered_feature_bc_matrix", "raw_feature_bc_matrix",
                 "filtered_gene_bc_matrices", "sample_filtered_feature_bc_matrix", "matrix",
                 # kallisto|bustools, alevin-fry and STARsolo outputs: the sample is the folder above
                 "cells_x_genes", "counts_unfiltered", "counts_filtered", "quants_mat", "af_quant", "alevin",
                 "Solo.out", "Gene", "GeneFull", "filtered", "raw"}


class SamplesJoinWarning(UserWarning):
    """Genes or obs columns not held by every sample were left out."""


def sample_name(path: PathLike) -> str:
    """A sample's name from its path: the first folder above Cell Ranger's layout folders
    ('run/pbmc_ctrl/outs/filtered_feature_bc_matrix.h5' -> 'pbmc_ctrl'), else the file's name
    without its suffix (and, for GEO's Matrix Market files, without '_matrix':
    'GSM1_ctrl_matrix.mtx.gz' -> 'GSM1_ctrl')."""
    p = Path(path).expanduser()
    stem = p.name.split(".")[0]
    if is_matrix_file(p) and stem.endswith("matrix") and stem != "matrix":
        stem = stem[: -len("matrix")].rstrip("_-.") or stem
    if stem not in _LAYOUT_NAMES and not stem.startswith("sample_filtered"):
        return stem
    for parent in p.parents:
        if parent.name and parent.name not in _LAYOUT_NAMES:
            return parent.name
    return stem


def read_samples(paths: Sequence[PathLike], genome: str | None = None,
                 names: Sequence[str] | None = None) -> anndata.AnnData:
    """The cells of every path (any format `read_cells` takes) as one AnnData: `obs['sample']`
    names each cell's sample (`names`, else `sample_name` of its path), cell names carry it as a
    suffix, and the genes are those every sample holds.

    Raises
    ------
    InputFileError
        For fewer than two paths, repeated names, or samples whose values are on different
        scales (raw counts beside log-normalised values), which one model run cannot read alike.
    """
    paths = [Path(p).expanduser() for p in paths]
    if len(paths) < 2:
        raise InputFileError("read_samples takes two or more samples; read one with read_cells")
    names = list(names) if names is not None else _unique([sample_name(p) for p in paths])
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise InputFileError(f"one distinct name per sample needed; got {names} for {len(paths)} samples")
    parts = [read_cells(p, genome=genome) for p in paths]
    kinds = {name: detect_value_type(part.X).kind for name, part in zip(names, parts)}
    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{name}: {kind}" for name, kind in kinds.items())
        raise InputFileError(f"the samples' values are on different scales ({listed}); give every sample the same "
                             "kind (raw counts, ideally) and read them again")
    genes = set(parts[0].var_names).intersection(*(set(p.var_names) for p in parts[1:]))
    columns = set(parts[0].obs.columns).intersection(*(set(p.obs.columns) for p in parts[1:]))
    left_genes = sum(p.n_vars for p in parts) - len(genes) * len(parts)
    left_columns = set().union(*(set(p.obs.columns) for p in parts)) - columns
    # Each file's embeddings (obsm: UMAP, PCA) and graphs (obsp) are coordinates of its own
    # analysis: stacked, they would share axes they do not share, so none is kept.
    embeddings = sorted(set().union(*(set(p.obsm.keys()) | set(p.obsp.keys()) for p in parts)))
    for part in parts:
        part.obsm.clear()
        part.obsp.clear()
    if left_genes or left_columns or embeddings:
        dropped = [f"genes not in every sample ({len(genes):,} kept)" if left_genes else "",
                   f"obs columns not in every sample ({', '.join(sorted(map(str, left_columns)))})"
                   if left_columns else "",
                   f"each file's own embeddings and graphs ({', '.join(embeddings)})" if embeddings else ""]
        warnings.warn("reading the samples together left out " + " and ".join(d for d in dropped if d),
                      SamplesJoinWarning, stacklevel=2)
    # A column the files already call 'sample' is theirs to keep: ours goes beside it.
    key = SAMPLE_KEY if SAMPLE_KEY not in columns else f"{SAMPLE_KEY}_file"
    joined = anndata.concat(parts, join="inner", label=key, keys=names, index_unique="-", merge="same")
    joined.uns["samples"] = {"key": key, "names": names, "paths": [str(p) for p in paths]}
    logger.info("read %d samples: %d cells x %d genes", len(parts), joined.n_obs, joined.n_vars)
    return joined


def _unique(names: list[str]) -> list[str]:
    """Repeated names numbered in order of appearance ('pbmc', 'pbmc_2')."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out
