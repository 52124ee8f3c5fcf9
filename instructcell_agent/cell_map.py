"""A picture of the answers: the cells on a 2-D map, coloured by label and by confidence.

The map is the file's own embedding where it has one (obsm 'X_umap', else 'X_tsne', else a
Seurat export's obs columns UMAP_1 / UMAP_2): the picture its owner already knows, now with the
model's labels on it. Otherwise a UMAP is made the usual scanpy way from the file's values on all
of its genes (not only the model's): counts per 10,000, log1p, the 2,000 most variable genes, 30
principal components, 15 neighbours, seed 0; `keep_coords` stores such a map in the annotated
file's obsm.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from .core_model.errors import InputFileError
from .core_model.labels import UNASSIGNED

EMBEDDINGS = ("X_umap", "X_tsne")
_OBS_EMBEDDINGS = (("UMAP_1", "UMAP_2"), ("umap_1", "umap_2"), ("tSNE_1", "tSNE_2"))
MIN_CELLS = 5  # fewer cells make no neighbourhood graph worth drawing
_N_TOP_GENES, _N_PCS, _N_NEIGHBOURS = 2000, 30, 15
# Not-answered cells ('Unassigned', or no counts on the model's genes) are drawn grey, underneath.
_GREY = "#d0d0d0"
_LEGEND_WIDTH = 36  # characters per line of a label name in the legend


@dataclass
class CellMap:
    """Cells x 2 coordinates and where they came from."""

    coords: np.ndarray
    source: str
    computed: bool


def cell_map(adata: ad.AnnData, *, layer: str | None = None, use_raw: bool = False, seed: int = 0) -> CellMap:
    """The 2-D map of `adata`'s cells (see the module docstring); `adata` is not modified.

    Raises
    ------
    InputFileError
        For fewer than `MIN_CELLS` cells, or values that cannot be read as expression.
    """
    for key in EMBEDDINGS:
        if key in adata.obsm and np.asarray(adata.obsm[key]).shape[1] >= 2:
            coords = np.asarray(adata.obsm[key], dtype=np.float32)[:, :2]
            if np.isfinite(coords).all():
                return CellMap(coords, f"the file's obsm[{key!r}]", computed=False)
    for x, y in _OBS_EMBEDDINGS:  # Seurat's exports keep the embedding as two obs columns
        if x in adata.obs and y in adata.obs:
            coords = adata.obs[[x, y]].to_numpy(dtype=np.float32, na_value=np.nan)
            if np.isfinite(coords).all():
                return CellMap(coords, f"the file's obs[{x!r}] and obs[{y!r}]", computed=False)
    cells = linear_values(adata, layer, use_raw)
    # Cells without counts have no place on a map of expression: they get NaN coordinates.
    placed = np.flatnonzero(np.asarray(cells.X.sum(axis=1)).ravel() > 0)
    if len(placed) < MIN_CELLS:
        raise InputFileError(f"{len(placed)} cells with counts are too few to draw a map (at least {MIN_CELLS})")
    coords = np.full((adata.n_obs, 2), np.nan, dtype=np.float32)
    coords[placed] = _umap(cells[placed].copy(), seed)
    return CellMap(coords, _computed_source(), computed=True)


def keep_coords(adata: ad.AnnData, cmap: CellMap) -> str | None:
    """Store a computed map in `adata.obsm` for scanpy's plots: 'X_umap' where the file has none,
    else 'X_instructcell_umap' (a UMAP the file already holds is never replaced). Returns the key
    written (None for a map read from the file)."""
    if not cmap.computed:
        return None
    key = "X_umap" if "X_umap" not in adata.obsm else "X_instructcell_umap"
    adata.obsm[key] = cmap.coords
    return key


def _computed_source() -> str:
    return (f"UMAP computed from the file's genes (per 10,000 counts, log1p, {_N_TOP_GENES:,} most variable genes, "
            f"{_N_PCS} PCs, {_N_NEIGHBOURS} neighbours, seed 0)")


def _umap(cells: ad.AnnData, seed: int) -> np.ndarray:
    """UMAP coordinates of cells with counts on a linear scale (modified in place)."""
    import scanpy as sc

    sc.pp.normalize_total(cells, target_sum=1e4)
    sc.pp.log1p(cells)
    n = cells.n_obs
    if cells.n_vars > _N_TOP_GENES:
        sc.pp.highly_variable_genes(cells, n_top_genes=_N_TOP_GENES, subset=True)
    sc.pp.pca(cells, n_comps=max(2, min(_N_PCS, n - 1, cells.n_vars - 1)), random_state=seed)
    # Exact neighbours (scikit-learn): scanpy 1.11's approximate path, which it takes from 8,192
    # cells on, calls a method scipy 1.17's sparse arrays no longer have.
    sc.pp.neighbors(cells, n_neighbors=max(2, min(_N_NEIGHBOURS, n - 1)), random_state=seed, transformer="sklearn")
    sc.tl.umap(cells, random_state=seed)
    return np.asarray(cells.obsm["X_umap"], dtype=np.float32)


def linear_values(adata: ad.AnnData, layer: str | None = None, use_raw: bool = False) -> ad.AnnData:
    """The file's values on a linear scale, a new AnnData: log values are read back first
    (core_model/values.py), so a log-normalised file is not logged twice on the way to the map."""
    from .core_model.io import select_matrix
    from .core_model.values import detect_value_type, to_count_scale

    X, names = select_matrix(adata, layer=layer, use_raw=use_raw)
    cells = ad.AnnData(to_count_scale(X, detect_value_type(X)))
    cells.var_names = pd.Index(names).astype(str)
    cells.var_names_make_unique()
    return cells


def plot_answers(cmap: CellMap, labels: Sequence, confidence: np.ndarray, path: str | os.PathLike,
                 title: str = "") -> Path:
    """Two panels on the map: each cell's label (legend with counts, most frequent first) and its
    confidence. Written as PNG atomically."""
    import matplotlib.pyplot as plt

    from .interpret.figures import save_figure_atomic

    labels = pd.Series([None if _missing(v) else str(v) for v in labels], dtype=object)
    conf = np.asarray(confidence, dtype=float)
    if len(labels) != len(cmap.coords) or len(conf) != len(cmap.coords):
        raise ValueError(f"{len(cmap.coords)} cells on the map, {len(labels)} labels, {len(conf)} confidences")
    x, y = cmap.coords[:, 0], cmap.coords[:, 1]
    size = float(np.clip(12000 / max(len(x), 1), 1, 30))
    # the legend gets a column of its own between the panels, so long label names never overlap
    fig, (left, key, right) = plt.subplots(1, 3, figsize=(17, 6), gridspec_kw={"width_ratios": [1, 0.45, 1.1]})
    key.axis("off")
    grey = labels.isna().to_numpy() | (labels == UNASSIGNED).to_numpy()
    left.scatter(x[grey], y[grey], s=size, c=_GREY, linewidths=0, label=f"{UNASSIGNED} / not labelled ({grey.sum():,})")
    counts = labels[~grey].value_counts()
    for colour, (label, count) in zip(_palette(len(counts)), counts.items()):
        mine = (labels == label).to_numpy()
        name = textwrap.fill(label, width=_LEGEND_WIDTH)  # long names over two lines, not into the next panel
        left.scatter(x[mine], y[mine], s=size, color=colour, linewidths=0, label=f"{name} ({count:,})")
    handles, names = left.get_legend_handles_labels()
    if not grey.any():  # no grey entry in the legend when every cell has a label
        handles, names = handles[1:], names[1:]
    key.legend(handles, names, loc="center left", fontsize=7, markerscale=max(1, 6 / size), frameon=False,
               ncol=1 if len(names) <= 30 else 2)
    left.set_title("label")
    known = ~np.isnan(conf)
    right.scatter(x[~known], y[~known], s=size, c=_GREY, linewidths=0)
    points = right.scatter(x[known], y[known], s=size, c=conf[known], cmap="viridis", vmin=0, vmax=1, linewidths=0)
    fig.colorbar(points, ax=right, label="confidence", fraction=0.046)
    right.set_title("confidence")
    for ax in (left, right):
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(f"{title}\nmap: {cmap.source}" if title else f"map: {cmap.source}", fontsize=9)
    return save_figure_atomic(fig, path)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _palette(n: int) -> list:
    """`n` distinguishable colours: tab10's ten, then tab20's lighter shades, tab20b and tab20c,
    then round again (the ten most frequent labels get the ten most distinct colours)."""
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"].colors
    colours = [*matplotlib.colormaps["tab10"].colors, *tab20[1::2],
               *matplotlib.colormaps["tab20b"].colors, *matplotlib.colormaps["tab20c"].colors]
    return [colours[i % len(colours)] for i in range(n)]
