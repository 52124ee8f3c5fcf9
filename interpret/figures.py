"""Figures: a dot plot of the top salient genes per label, and a heatmap of per-label saliency.

Both are written as PNG with the non-interactive Agg backend, atomically (temporary file, then
rename), so a reader never sees half a picture.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

log = logging.getLogger(__name__)


def save_figure_atomic(fig: plt.Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save `fig` as PNG at `path` through a temporary file in the same folder, then close it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".png")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; a figure is for sharing
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        os.replace(tmp, target)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def dotplot(adata: ad.AnnData, key: str, path: str | os.PathLike, n_genes: int = 5) -> Path:
    """scanpy's ``rank_genes_groups_dotplot`` of the ranking in ``adata.uns[key]``, saved as PNG.

    Dots show each label's expression of its top salient genes (fraction of cells expressing,
    mean expression), the view a researcher compares against known markers.
    """
    import scanpy as sc

    groups = adata.uns[key]["names"].dtype.names
    # A dendrogram needs several groups and a PCA of its own; it adds nothing to this view.
    result = sc.pl.rank_genes_groups_dotplot(adata, key=key, n_genes=n_genes, dendrogram=False, show=False,
                                             return_fig=True, title=f"top {n_genes} salient genes per label")
    result.make_figure()
    fig = result.fig if getattr(result, "fig", None) is not None else plt.gcf()
    log.info("dot plot of %d labels", len(groups))
    return save_figure_atomic(fig, path)


def heatmap(means: pd.DataFrame, path: str | os.PathLike, n_genes: int = 5, title: str = "",
            scale_rows: bool = True) -> Path:
    """Per-label mean saliency of the union of every label's top `n_genes` genes, saved as PNG.

    Rows are labels, columns genes (grouped by the label they top). With `scale_rows` each row
    is divided by its largest absolute value, so a label the model is sure of (small gradients)
    shows its pattern as clearly as an uncertain one. Signed scores get a diverging map centred
    on 0 (red for, blue against the label); non-negative ones a sequential map.
    """
    genes: list[str] = []
    for _, row in means.iterrows():
        genes += [g for g in row.sort_values(ascending=False).index[:n_genes] if g not in genes]
    data = means[genes].to_numpy(dtype=float) if genes else np.zeros((len(means), 0))
    if scale_rows and data.size:
        peak = np.abs(data).max(1, keepdims=True)
        data = np.divide(data, peak, out=np.zeros_like(data), where=peak > 0)
    bound = float(np.nanmax(np.abs(data))) if data.size else 1.0
    bound = bound if bound > 0 else 1.0
    signed = data.size and float(np.nanmin(data)) < 0
    fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * len(genes) + 2.5), max(2.5, 0.4 * len(means) + 1.5)))
    if signed:
        image = ax.imshow(data, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -bound, bound))
    else:
        image = ax.imshow(data, aspect="auto", cmap="Reds", vmin=0.0, vmax=bound)
    ax.set_xticks(range(len(genes)), genes, rotation=90, fontsize=8)
    ax.set_yticks(range(len(means)), [str(i) for i in means.index], fontsize=9)
    ax.set_xlabel("gene")
    ax.set_ylabel("label")
    ax.set_title(title or "mean saliency per label")
    fig.colorbar(image, ax=ax, shrink=0.8, label="mean score / row max" if scale_rows else "mean score")
    return save_figure_atomic(fig, path)
