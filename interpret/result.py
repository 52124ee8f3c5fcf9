"""`ExplanationResult`: per-cell attributions, per-label rankings, marker checks, and write-back."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .aggregate import cell_scores, per_cell_top, rank_genes_groups_layout, rankings
from .attribution import Attributions
from .marker_explain import ATTRIBUTION, MarkerAttributions, merged
from .markers import MarkerDB, is_known

log = logging.getLogger(__name__)

DEFAULT_KEY = "instructcell_saliency"
TOP_GENES_COLUMNS = ["label", "rank", "gene", "score", "is_known_marker", "attribution"]
MODEL_ATTRIBUTION = "model"


@dataclass
class ExplanationResult:
    """What :func:`instructcell_agent.explain` found.

    Attributes
    ----------
    obs_names
        The explained cells, in input order.
    genes
        The model's gene vocabulary (columns of the attributions).
    groups
        Per cell, the label it was explained for and aggregated under (predicted or given); with
        ``versus``, the contrast 'A vs B'.
    attributions
        Per-cell attributions, model inputs, probabilities, IG deltas.
    means
        labels x genes: mean per-cell score (see :mod:`~instructcell_agent.interpret.aggregate`).
    top_k
        Genes reported per label.
    normalize
        Per-cell normalisation used before the mean (``"none"`` or ``"minmax"``).
    marker_report
        Per label: mapped database cell types, known markers in the top 10, precision at 10,
        and the same for scanpy's wilcoxon ranking of the same cells (None without database).
    obs
        The input's ``obs`` (copied into :meth:`to_adata`'s new AnnData).
    provenance
        Method, instruction, candidates, checkpoint, alignment report, notes.
    contrasts
        ``{group: (label, versus)}`` when ``explain`` was asked ``versus`` (empty otherwise).
    by_markers
        For labels annotate answers from known markers (interpret/marker_explain.py): each of their
        cells' markers' shares of the marker score the answer won on, which replace the model's
        attributions for those cells in every view; None when no label is.
    """

    obs_names: list[str]
    genes: list[str]
    groups: np.ndarray
    attributions: Attributions
    means: pd.DataFrame
    top_k: int
    normalize: str
    marker_report: pd.DataFrame | None = None
    obs: pd.DataFrame | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    marker_db: MarkerDB | None = field(default=None, repr=False)
    species: str | None = None
    contrasts: dict[str, tuple[str, str]] = field(default_factory=dict)
    by_markers: MarkerAttributions | None = None

    # ------------------------------------------------------------------ views
    @property
    def labels(self) -> list[str]:
        """Labels with at least one cell, in report order."""
        return [str(l) for l in self.means.index]

    @property
    def predicted(self) -> np.ndarray:
        """The model's most probable candidate per cell."""
        cands = np.asarray(self.attributions.candidates, dtype=object)
        return cands[self.attributions.predicted]

    @property
    def top_genes(self) -> pd.DataFrame:
        """Tidy top-k genes per label: label, rank (1 = best), gene, score, is_known_marker, attribution.

        Only genes with a positive mean score are listed (fewer than k where fewer genes push
        the label up). ``is_known_marker`` is True/False against the marker database for mapped
        labels, and missing (NA) where it cannot be said (a label not in our mapping, a drug response).
        ``attribution`` is ``"model"``, or ``"known-marker score"`` for a label annotate answers
        from known markers (`by_markers`; its genes may lie beyond the model's).
        """
        rows = []
        for label, (names, scores) in self.rankings(self.top_k).items():
            known = is_known(self.marker_db, label, names, self.species, self.contrasts.get(label))
            how = self.attribution_of(label)
            rows += [(label, r + 1, g, float(s), k, how) for r, (g, s, k) in enumerate(zip(names, scores, known))]
        frame = pd.DataFrame(rows, columns=TOP_GENES_COLUMNS)
        frame["is_known_marker"] = frame["is_known_marker"].astype("boolean")
        return frame

    def attribution_of(self, label: str) -> str:
        """How `label`'s genes were found: "model", or "known-marker score" (`by_markers`)."""
        return ATTRIBUTION if self.by_markers is not None and label in self.by_markers.labels else MODEL_ATTRIBUTION

    def rankings(self, n: int) -> dict[str, tuple[list[str], np.ndarray]]:
        """Top `n` genes per label with a positive mean score, best first; a label the markers
        explain is ranked over all its markers, the model's genes or not."""
        ranked = rankings(self.means, n, positive_only=True)
        if self.by_markers is not None:
            ranked.update((label, found) for label, found in rankings(self.by_markers.means, n, positive_only=True)
                          .items() if label in ranked)
        return ranked

    def per_cell_top(self, k: int = 10) -> pd.DataFrame:
        """Each cell's `k` most salient expressed genes: cell, label, rank, gene, score (long format)."""
        idx, vals = per_cell_top(self.cell_scores(), self._merged()[1], k)
        genes = np.asarray(self.genes + [""], dtype=object)  # index -1 -> ""
        n, kk = idx.shape
        frame = pd.DataFrame({
            "cell": np.repeat(np.asarray(self.obs_names, dtype=object), kk),
            "label": np.repeat(np.asarray(self.groups, dtype=object), kk),
            "rank": np.tile(np.arange(1, kk + 1), n), "gene": genes[idx.ravel()], "score": vals.ravel(),
        })
        return frame[frame["gene"] != ""].reset_index(drop=True)

    def cell_scores(self) -> np.ndarray:
        """cells x genes scores as aggregated (genes at or below the reference 0, normalised as `normalize`)."""
        return cell_scores(*self._merged(), self.normalize)

    def _merged(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-cell attributions and what rankings count, marker-explained cells' rows their markers'."""
        return merged(self.attributions.values, self.attributions.above_reference, self.by_markers, self.groups,
                      self.genes)

    def summary(self) -> str:
        """A few readable lines: method, cells, top genes and marker precision per label, then the
        notes (cells left out, how candidates were scored)."""
        a = self.attributions
        by_markers = self.by_markers is not None and set(self.labels) <= set(self.by_markers.labels)
        how = f"the {ATTRIBUTION} each was answered on" if by_markers else f"{a.method} over {len(self.genes):,} genes"
        lines = [f"{len(self.obs_names):,} cells explained with {how}; {len(self.labels)} labels"]
        if a.delta is not None:
            steps = float(np.mean(a.steps_used)) if a.steps_used is not None else float("nan")
            lines.append(f"Integrated Gradients ({steps:.0f} integration points per cell): completeness |delta| "
                         f"median {np.median(np.abs(a.delta)):.4f}, max {np.max(np.abs(a.delta)):.4f}")
        report = self.marker_report.set_index("label") if self.marker_report is not None else None
        for label, (names, _) in self.rankings(min(self.top_k, 5)).items():
            extra = ""
            if report is not None and label in report.index and pd.notna(report.at[label, "precision_at_k"]):
                extra = f"  (marker precision@10 {report.at[label, 'precision_at_k']:.2f})"
            if self.attribution_of(label) == ATTRIBUTION:
                extra = f"  (by its {ATTRIBUTION}: answered from known markers)"
            lines.append(f"  {label}: {', '.join(names)}{extra}")
        lines += [f"note: {note}" for note in self.provenance.get("notes", [])]
        return "\n".join(lines)

    # -------------------------------------------------------------- write-back
    def to_adata(self, adata: ad.AnnData | None = None, key_added: str = DEFAULT_KEY) -> ad.AnnData:
        """The ranking in scanpy's ``rank_genes_groups`` layout under ``uns[key_added]``.

        Without `adata`: a new AnnData of the explained cells on the model's vocabulary, X the
        log1p(CP10k) input the model read, ``layers[key_added]`` the per-cell attributions; the
        ranked genes are its var_names, so ``sc.pl.rank_genes_groups_dotplot(ad, key=key_added)``
        works as is. With `adata` (the explained cells, same obs_names): written into it in place.

        Both get ``obs['<key>_label']`` (the groupby column), ``obs['<key>_predicted']``,
        ``obs['<key>_target_probability']``, ``obs['<key>_top_genes']`` (comma-separated top-k),
        ``obs['<key>_ig_delta']`` (IG), ``obs['<key>_versus']`` (a contrast), ``obsm['<key>_probabilities']``
        and ``uns['<key>_markers']``.
        """
        if adata is None:
            adata = self._vocab_adata(key_added)
        elif list(map(str, adata.obs_names)) != list(self.obs_names):
            raise ValueError("adata's cells differ from the explained cells (same obs_names in the same order needed; "
                             "after max_cells_per_label, pass adata[result.obs_names])")
        self._annotate(adata, key_added)
        # the genes the rank_genes_groups layout names (the model's; a marker-explained label's
        # markers beyond them are in top_genes only)
        ranked = {g for names, _ in rankings(self.means, self.top_k).values() for g in names}
        missing = sorted(ranked - set(map(str, adata.var_names)))
        if missing:
            log.warning("%d ranked genes are not var_names of this AnnData (e.g. %s); scanpy's rank_genes_groups "
                        "plots need them: use result.to_adata() for an AnnData on the model's genes",
                        len(missing), ", ".join(missing[:5]))
        return adata

    def _vocab_adata(self, key: str) -> ad.AnnData:
        obs = self.obs.copy() if self.obs is not None else pd.DataFrame(index=self.obs_names)
        obs.index = pd.Index(self.obs_names)
        inputs = self.attributions.inputs
        var = pd.DataFrame({"n_cells_expressed": (inputs > 0).sum(0)}, index=pd.Index(self.genes))
        out = ad.AnnData(sp.csr_matrix(inputs), obs=obs, var=var)
        out.layers[key] = self._merged()[0]
        out.uns["log1p"] = {"base": None}  # tells scanpy X is natural-log log1p
        return out

    def _annotate(self, adata: ad.AnnData, key: str) -> None:
        a = self.attributions
        idx, _ = per_cell_top(self.cell_scores(), self._merged()[1], self.top_k)
        genes = np.asarray(self.genes, dtype=object)
        adata.obs[f"{key}_label"] = pd.Categorical(self.groups, categories=self.labels)
        adata.obs[f"{key}_predicted"] = pd.Categorical(self.predicted.astype(str), categories=a.candidates)
        adata.obs[f"{key}_target_probability"] = a.probabilities[np.arange(len(a.target)), a.target].astype(np.float32)
        adata.obs[f"{key}_top_genes"] = [",".join(genes[r[r >= 0]]) for r in idx]
        if a.delta is not None:
            adata.obs[f"{key}_ig_delta"] = a.delta.astype(np.float32)
        if a.versus is not None:
            adata.obs[f"{key}_versus"] = pd.Categorical(np.asarray(a.explained, dtype=object)[a.versus].astype(str),
                                                        categories=a.explained)
        adata.obsm[f"{key}_probabilities"] = a.probabilities.astype(np.float32)
        params = {"target": self.provenance.get("target", ""), "normalize": self.normalize, "top_k": self.top_k,
                  "candidates": list(a.candidates), "probability_columns": a.explained, "attribution": a.method,
                  "reference": self.provenance.get("reference") or "none",
                  "versus": self.provenance.get("versus") or "none",
                  "n_steps": a.n_steps if a.n_steps is not None else 0}
        adata.uns[key] = rank_genes_groups_layout(self.means, self.top_k, f"{key}_label", f"instructcell_{a.method}",
                                                  a.inputs, self.groups, params)
        adata.uns[f"{key}_provenance"] = _plain(self.provenance)
        if self.marker_report is not None:
            adata.uns[f"{key}_markers"] = self.marker_report.reset_index(drop=True)

    def save_figures(self, out_dir: str | os.PathLike, key: str = DEFAULT_KEY, n_genes: int = 5) -> list[Path]:
        """Write ``saliency_dotplot.png`` and ``saliency_heatmap.png`` to `out_dir`."""
        from .figures import dotplot, heatmap

        out = Path(out_dir)
        vocab = self.to_adata(None, key)
        n = min(n_genes, self.top_k)
        paths = [dotplot(vocab, key, out / "saliency_dotplot.png", n_genes=n),
                 heatmap(self.means, out / "saliency_heatmap.png", n_genes=n, title=self._heatmap_title())]
        return paths

    def _heatmap_title(self) -> str:
        how = "mean of per-cell min-max scores" if self.normalize == "minmax" else "mean attribution"
        return f"{self.attributions.method} per label ({how})"


def _plain(value: Any) -> Any:
    """Provenance as h5ad-writable values (dicts, lists of str/numbers, no tuples or Paths)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [str(v) if not isinstance(v, (int, float)) else v for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
