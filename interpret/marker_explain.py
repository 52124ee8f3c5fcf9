"""Explaining answers the known markers gave, by the markers that gave them.

`annotate` answers some cells from known markers rather than from the model: every cell with
``by_markers=True``, and, where the candidates mix learned types with types the checkpoint never
learned, the cells the marker gate gives a never-learned type (marker_annotation.py,
unlearned_candidates.py). The model's gradients do not explain those answers: for a name it
never learned they move its score for the name as text. What does is the marker score the answer
won on, a sum over the candidate's n markers the file expresses: each adds its rank within the
cell, centred, times sqrt(12 / n), and its z-score over the cells, over sqrt(n) (`marker_scores`,
pooling 'both'). The terms of that sum are an exact additive attribution, each marker's share of
the cell's score; ranked as the model's attributions are (aggregate.py), they name the markers
that made the answer.

The z-scores are over the cells explained, so with `max_cells_per_label` they are measured
against the other cells drawn rather than the whole file annotate scored (a note says so).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from instructcell_agent.core_model.cell_encoder import log_normalize_csr

from .aggregate import cell_scores, label_means
from .attribution import Attributions
from .marker_annotation import POOLING, POOLINGS, rank_percentiles, read_for_markers
from .marker_check import column_moments
from .markers import MarkerDB

ATTRIBUTION = "known-marker score"


@dataclass
class MarkerAttributions:
    """Per cell, each marker's share of its answer's marker score.

    Attributes
    ----------
    genes
        The columns: the markers of the labels explained that the cells express (upper-case
        symbols, the model's genes and beyond them).
    values
        cells x genes; 0 off the cell's own answer's markers and for cells the model answered.
    expressed
        cells x genes, True where the cell expresses the gene (what rankings count).
    means
        labels x genes: the mean per-cell score of each label's cells, scaled per cell as the
        model's attributions are (aggregate.py).
    n_markers
        Per label, its markers the cells express (those scored).
    """

    genes: list[str]
    values: np.ndarray
    expressed: np.ndarray
    means: pd.DataFrame
    n_markers: dict[str, int]

    @property
    def labels(self) -> list[str]:
        """The labels explained by their markers."""
        return list(self.n_markers)

    def on(self, genes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`values` and `expressed` on other columns (`genes`, matched upper-case): zero and False
        on genes that are not markers, and markers that are not among `genes` dropped."""
        where = {g: i for i, g in enumerate(self.genes)}
        pairs = [(j, where[g.upper()]) for j, g in enumerate(genes) if g.upper() in where]
        values = np.zeros((self.values.shape[0], len(genes)), dtype=np.float32)
        expressed = np.zeros(values.shape, dtype=bool)
        if pairs:
            to, src = map(list, zip(*pairs))
            values[:, to], expressed[:, to] = self.values[:, src], self.expressed[:, src]
        return values, expressed


def merged(values: np.ndarray, counted: np.ndarray, by_markers: MarkerAttributions | None, groups: Sequence[str],
           genes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The model's per-cell attributions over `genes` and what rankings count (> 0: counted), with
    the rows of the cells given a label the markers explain replaced by their markers' shares and
    expression: what every per-cell view of an explanation reads."""
    rows = np.isin(np.asarray(groups, dtype=str), by_markers.labels) if by_markers is not None else None
    if rows is None or not rows.any():
        return values, counted
    shares, expressed = by_markers.on(genes)
    values, counted = values.copy(), counted.copy()
    values[rows], counted[rows] = shares[rows], expressed[rows]
    return values, counted


def marker_attributions(adata: ad.AnnData, groups: Sequence[str], marker_sets: Mapping[str, set[str]], *,
                        vocab: Sequence[str], db: MarkerDB, species: str | None = None, layer: str | None = None,
                        use_raw: bool = False, gene_key: str | None = None, normalize: str = "minmax",
                        pooling: str = POOLING) -> MarkerAttributions:
    """Each cell's markers' shares of its answer's marker score, for the cells whose `groups`
    entry is a key of `marker_sets` (upper-case marker symbols per label, as annotate recorded
    them or the database lists them); the other cells get zeros (a cell with no counts, given "",
    too). Cells are read on the genes the marker route reads (`read_for_markers`), so a cell's
    ranks are those annotate saw; the means are scaled per cell as `normalize` says."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    groups = np.asarray(groups, dtype=str)
    aligned, genes = read_for_markers(adata, db, marker_sets, vocab, layer=layer, use_raw=use_raw,
                                      gene_key=gene_key, species=species)
    X_log = sp.csr_matrix(log_normalize_csr(aligned.X))
    expressed_anywhere = np.asarray((X_log > 0).sum(0)).ravel() > 0
    column = {g: i for i, g in enumerate(genes) if expressed_anywhere[i]}
    cols = {label: sorted({column[g] for g in found if g in column}) for label, found in marker_sets.items()}
    union = sorted({c for found in cols.values() for c in found})
    where = {c: i for i, c in enumerate(union)}
    values = np.zeros((X_log.shape[0], len(union)), dtype=np.float32)
    if union:
        sub = X_log[:, union].astype(np.float64)
        mean, sd = column_moments(sub)
        z = (sub.toarray() - mean) / sd
        ranks = rank_percentiles(X_log, union) if pooling in ("rank", "both") else None
        for label, found in cols.items():
            rows, idx, n = np.flatnonzero(groups == label), [where[c] for c in found], len(found)
            if not n or not rows.size:
                continue
            # the terms whose sum is marker_scores' score for this label (same pooling)
            share = np.zeros((rows.size, n))
            if ranks is not None:
                share += (ranks[np.ix_(rows, idx)] - 0.5) * np.sqrt(12 / n)
            if pooling != "rank":
                share += z[np.ix_(rows, idx)] / (n if pooling == "mean" else np.sqrt(n))
            values[np.ix_(rows, idx)] = share
        expressed = X_log[:, union].toarray() > 0
    else:
        expressed = np.zeros(values.shape, dtype=bool)
    order = np.argsort([genes[c] for c in union], kind="stable")  # columns by name, for a readable table
    names, values, expressed = [genes[union[i]] for i in order], values[:, order], expressed[:, order]
    mine = np.isin(groups, list(marker_sets))
    means = label_means(cell_scores(values[mine], expressed[mine], normalize), groups[mine], names,
                        order=list(marker_sets))
    return MarkerAttributions(names, values, expressed, means, {label: len(c) for label, c in cols.items()})


def answering_markers(adata: ad.AnnData, labels, unlearned: Sequence[str], candidates: Sequence[str],
                      db: MarkerDB, species: str | None) -> tuple[dict[str, set[str]], str | None]:
    """The labels explained that known markers answer, each with the markers it is scored on, and
    the database named where annotate recorded one.

    Answers annotate wrote (`labels` naming its ``<key>_label`` column) are taken as recorded:
    with ``by_markers`` every candidate, with the marker gate its never-learned types, each with
    the markers it was scored on. Otherwise the never-learned types among `candidates` (`unlearned`)
    are, as annotate answers them: from the database's markers, unless it lacks markers for one of
    the candidates, when annotate scores the names as strings and so does this explanation.
    """
    from .marker_annotation import ROUTE, UnknownMarkersError, candidate_markers

    key, _, kind = labels.rpartition("_") if isinstance(labels, str) else ("", "", "")
    record = adata.uns.get(key) if kind == "label" and key else None
    if isinstance(record, Mapping):
        gate = record.get("marker_gate")
        if record.get("candidate_route") == ROUTE:
            return _recorded(record.get("markers"), None), record.get("marker_db")
        if isinstance(gate, Mapping):
            return _recorded(gate.get("markers"), [str(n) for n in gate.get("unlearned", ())]), gate.get("marker_db")
        return {}, None
    if not unlearned:
        return {}, None
    try:
        found = candidate_markers(list(candidates), db, species)
    except UnknownMarkersError:
        return {}, None
    return {name: found[name] for name in unlearned}, None


def _recorded(markers, names: Sequence[str] | None) -> dict[str, set[str]]:
    """{candidate: markers} from a recorded ``markers`` entry (by column: candidate, genes), for
    `names` (all when None); a candidate the file expressed none of the markers of keeps an
    empty set (the route scored it too, and never answered it)."""
    if not isinstance(markers, Mapping):
        return {}
    pairs = zip(map(str, markers.get("candidate", ())), map(str, markers.get("genes", ())))
    found = {cand: {g for g in genes.split(",") if g} for cand, genes in pairs}
    return {name: found[name] for name in (names if names is not None else list(found)) if name in found}


def by_markers_note(found: MarkerAttributions, n_cells: int, subsampled: bool, markers_only: bool = False) -> str:
    """Which labels the markers explain, and how (and, where they answered every candidate, that
    the model was not run)."""
    names = ", ".join(repr(n) for n in found.labels)
    one = len(found.labels) == 1
    against = "the other cells drawn" if subsampled else f"the {n_cells:,} cells explained"
    note = (f"{names} {'was' if one else 'were'} answered from known markers, so {'its' if one else 'their'} genes "
            f"are those markers' shares of the marker score the answer won on (rank within the cell, and z-score "
            f"against {against}), not the model's gradients")
    if silent := [n for n, k in found.n_markers.items() if not k]:
        note += f"; the cells express none of the markers of {', '.join(map(repr, silent))}"
    if markers_only:
        note += "; the markers answer every candidate, so the model was not run (probabilities: the marker route's)"
    return note


def circular_precision(report: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """The marker report with no precision for labels ranked by their own known markers: counting
    the markers an answer was scored on among its genes checks nothing."""
    report = report.copy()
    mine = report["label"].isin(list(labels))
    report.loc[mine, "precision_at_k"] = np.nan
    report.loc[mine, "note"] = "ranked by the known markers it was answered on: no precision to check"
    return report


def markers_only_attributions(adata: ad.AnnData, counts: sp.spmatrix, candidates: Sequence[str],
                              target: np.ndarray | None, found: Mapping[str, set[str]], *, model, db: MarkerDB,
                              species: str | None, method: str, recorded: np.ndarray | None, layer: str | None = None,
                              use_raw: bool = False, gene_key: str | None = None) -> Attributions:
    """Attributions for cells every candidate of which the known markers answer (``by_markers``,
    or no candidate the checkpoint learned), with no model run: the values are left to the
    markers' shares (`merged`). The probabilities are those annotate recorded (`recorded`, in
    candidate order) where the file has them, else the marker route's own over these cells; a cell
    with no target is explained for its most probable candidate, the marker route's answer.
    `counts` are the cells on the model's genes (``AlignedData.X``): the model input kept beside;
    `model` gives the gene list the marker route reads the cells on."""
    from .marker_annotation import annotate_by_markers

    if recorded is None:
        with warnings.catch_warnings():  # the route's own warnings were given when the cells were answered
            warnings.simplefilter("ignore")
            routed = annotate_by_markers(adata, list(candidates), markers={c: sorted(found[c]) for c in candidates},
                                         marker_db=db, species=species, layer=layer, use_raw=use_raw,
                                         gene_key=gene_key, model=model)
        recorded = routed.probabilities.to_numpy(dtype=np.float32)
    probabilities = np.nan_to_num(recorded, nan=0.0)
    inputs = log_normalize_csr(counts).toarray()
    if target is None:
        target = probabilities.argmax(1)
    return Attributions(np.zeros_like(inputs), inputs, np.asarray(target, dtype=np.int64), probabilities,
                        [str(c) for c in candidates], method)
