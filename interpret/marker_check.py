"""Do the cells given a label express that label's known markers? A check that asks no model.

`marker_check` scores every cell on each label's known markers (the shipped PanglaoDB or
CellMarker 2.0 genes, ``markers.py``) and asks, per label, how well that score singles out the
cells given the label from the cells given the others: an AUROC. It is the look at a dot plot of
canonical markers a reader takes before trusting an annotation, put in numbers.

What it can and cannot tell (``benchmarks/results/marker_check.md``): markers of a lineage (B,
NK, monocytes, islet hormones) single their cells out at AUROC 0.8 to 1.0 on the shared test
splits' known labels; subsets of one lineage (naive and memory CD4 T) share their markers and
score 0.5 to 0.8 even when every label is right, so the table names the labels a label shares most of its markers with. Cell by cell
the score tells right answers from wrong ones far less well than the model's confidence, so it
is reported per label, not per cell.

A cell's score for a label is the mean, over the label's known markers the file holds, of the
gene's log1p(CP10k) expression z-scored over the file's labelled cells (scanpy's ``score_genes``
idea without control genes: the AUROC compares cells of one file, which share the same genes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata

from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.cell_encoder import log_normalize_csr
from instructcell_agent.core_model.errors import LabelKeyError
from instructcell_agent.core_model.labels import ontology_id
from instructcell_agent.core_model.vocab import read_vocab

from .markers import DEFAULT_DB, MarkerDB, load_marker_db
from .targets import given_labels, without_unlabelled

SUPPORTED = 0.8  # AUROC at or above: the markers single the label's cells out
WEAK = 0.6  # below: they do not
SHARED = 0.5  # Jaccard overlap of two labels' known markers above which the table names the other label
COLUMNS = ["label", "n_cells", "n_markers", "auroc", "support", "top_markers", "shares_markers_with"]


@dataclass
class MarkerCheck:
    """Per label: how well its known markers single out the cells given it.

    Attributes
    ----------
    table
        One row per label: n_cells, n_markers (known markers the file holds and expresses),
        auroc (the label's marker score, its cells against the cells of other labels; another
        spelling of the same Cell Ontology type is not another label), support
        ('supported' at AUROC >= 0.8, 'weak' from 0.6, 'not supported' below, 'no known markers',
        'no other label'), top_markers (the known markers most above the other cells, with the
        fraction of the label's cells and of the others expressing each), shares_markers_with
        (labels whose known markers overlap this one's by Jaccard > 0.5).
    scores
        Each labelled cell's marker score for its own label (NaN where the label has none).
    provenance
        Database, species, label source, cells left out.
    """

    table: pd.DataFrame
    scores: pd.Series
    provenance: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line per label, weakest first, with the counts of each verdict."""
        counts = self.table["support"].value_counts()
        head = (f"marker check ({self.provenance['marker_db']}, {self.provenance['species']}): "
                + ", ".join(f"{int(counts[v])} {v}" for v in ("supported", "weak", "not supported",
                                                            "no known markers", "no other label") if v in counts))
        lines = [head]
        for row in self.table.sort_values("auroc", na_position="last").itertuples(index=False):
            auroc = "-" if np.isnan(row.auroc) else f"{row.auroc:.2f}"
            others = row.shares_markers_with.split(", ") if row.shares_markers_with else []
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            shares = f"; shares markers with {', '.join(others[:3])}{more}" if others else ""
            cells = f"{row.n_cells:,} cell{'' if row.n_cells == 1 else 's'}"
            lines.append(f"  {row.label}: {row.support} (AUROC {auroc}, {cells}, {row.n_markers} known markers"
                         f"{'; ' + row.top_markers if row.top_markers else ''}{shares})")
        return "\n".join(lines + self.provenance.get("notes", []))

    def note_answers_from_these_markers(self, provenance: dict) -> None:
        """Say which answers the same database's markers chose (`provenance` of the answers: the
        marker route's, or the model's where those markers decided the types it never learned).
        Checked against the markers that chose them, such answers are supported by construction,
        so for them the check is no second opinion; it still is for the other labels."""
        gate = provenance.get("marker_gate") or {}
        found = gate.get("markers") or provenance.get("markers") or {}
        chosen = [c for c, source in zip(found.get("candidate", ()), found.get("source", ()))
                  if source == self.provenance["marker_db"] and (not gate or c in gate.get("unlearned", ()))]
        same = [c for c in chosen if c in set(self.table["label"])]
        if same:
            self.provenance["notes"].append(
                f"note: {', '.join(repr(c) for c in same)} {'was' if len(same) == 1 else 'were'} answered from "
                f"{self.provenance['marker_db']}'s markers, the ones checked here, so 'supported' is expected of "
                f"{'it' if len(same) == 1 else 'them'} and says little; the check speaks for the other labels")

    def to_adata(self, adata: ad.AnnData, key_added: str = "instructcell") -> ad.AnnData:
        """A copy of `adata` with ``obs[f'{key_added}_marker_score']`` and the table in
        ``uns[f'{key_added}_marker_check']`` (stored by column: an .h5ad keeps labels with '/' as keys badly)."""
        return self.store(adata.copy(), key_added)

    def store(self, out: ad.AnnData, key_added: str = "instructcell") -> ad.AnnData:
        """Write the scores and the table into `out` itself (a new object the caller made)."""
        out.obs[f"{key_added}_marker_score"] = self.scores.reindex(out.obs_names).to_numpy(dtype=float)
        out.uns[f"{key_added}_marker_check"] = {c: self.table[c].to_numpy() for c in COLUMNS}
        return out


def model_genes(model) -> list[str]:
    """The gene universe to read a file on: the model's, a checkpoint's, or the shipped one's."""
    if model is not None and hasattr(model, "vocab"):
        return list(model.vocab)
    if model is None:
        from instructcell_agent.api import default_checkpoint_path

        model = default_checkpoint_path()
    return read_vocab(os.fspath(model))


def column_moments(X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean and standard deviation over the rows (the cells), from a sparse matrix
    without densifying it; a constant column gets sd 1e-12, so its z-scores are 0, not NaN."""
    mean = np.asarray(X.mean(0)).ravel()
    sd = np.sqrt(np.maximum(np.asarray(X.multiply(X).mean(0)).ravel() - mean ** 2, 0)).clip(min=1e-12)
    return mean, sd


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUROC with ties at half; NaN without both sides."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def marker_check(adata: ad.AnnData, labels: str | Sequence[str] = "instructcell_label", *, model=None,
                 marker_db: str | MarkerDB = DEFAULT_DB, species: str | None = None, layer: str | None = None,
                 use_raw: bool = False, gene_key: str | None = None, n_top: int = 3) -> MarkerCheck:
    """Check each label's cells against the label's known markers.

    Parameters
    ----------
    adata
        The cells (never modified): raw counts or log-normalized values, any gene naming the
        data layer reads.
    labels
        An obs column (default: annotate's ``instructcell_label``) or one label per cell. Cells
        without a label or labelled 'Unassigned' are left out, with a note.
    model
        A loaded model, a checkpoint directory, or None (the shipped checkpoint): only its gene
        list is used, as the genes to read the file on.
    marker_db
        ``"panglaodb"``, ``"cellmarker2"`` or a :class:`MarkerDB` of your own.
    species
        ``"human"`` / ``"mouse"`` (which database entries to use); detected from the genes when None.
    layer, use_raw, gene_key
        Which matrix and gene names to read, as ``annotate`` reads them.
    n_top
        Known markers listed per label.

    Raises
    ------
    LabelKeyError
        When `labels` names no obs column, or no cell has a label.
    """
    given = given_labels(adata, labels)
    if isinstance(given, str):
        raise LabelKeyError(f"labels {labels!r} is not an obs column; columns: {', '.join(map(str, adata.obs.columns))}")
    cells, given, note = without_unlabelled(adata, given, None)
    db = marker_db if isinstance(marker_db, MarkerDB) else load_marker_db(marker_db)
    vocab = model_genes(model)
    aligned = align_to_vocab(cells, vocab, layer=layer, use_raw=use_raw, gene_key=gene_key, species=species,
                             min_genes=1)
    species = species or aligned.report.species
    X = log_normalize_csr(aligned.X)
    genes = np.array([g.upper() for g in vocab])
    expressed = np.asarray((X > 0).sum(0)).ravel() > 0
    column = {g: i for i, g in enumerate(genes) if expressed[i]}

    names = sorted(set(given))
    known = {name: db.markers_for(name, species) for name in names}
    cols = {name: sorted(column[g] for g in (known[name] or ()) if g in column) for name in names}
    union = sorted({c for v in cols.values() for c in v})
    # kept sparse (an atlas of a million cells would not fit dense): z = (x - mean) / sd per gene
    sub = sp.csr_matrix(X[:, union], dtype=np.float64)
    mean, sd = column_moments(sub)
    where = {c: i for i, c in enumerate(union)}

    # free answers may name one population under several training sets' spellings ('CD14+Mono',
    # 'CD14+ Monocyte'): a label is compared with the cells of other populations only
    term = {name: ontology_id(name) for name in names}
    same = {name: {o for o in names if o == name or (term[name] is not None and term[o] == term[name])}
            for name in names}
    rows, own = [], np.full(len(given), np.nan)
    for name in names:
        mine = given == name
        other = ~np.isin(given, list(same[name]))
        idx = [where[c] for c in cols[name]]
        row = {"label": name, "n_cells": int(mine.sum()), "n_markers": len(idx), "auroc": np.nan,
               "top_markers": "", "shares_markers_with": ", ".join(
                   o for o in names if o not in same[name] and known[name] and known[o]
                   and _jaccard(known[name], known[o]) > SHARED)}
        if not idx:
            row["support"] = "no known markers"
        else:
            # the mean of the label's markers' z-scores, as a sparse product
            score = (sub[:, idx] @ (1 / sd[idx]) - (mean[idx] / sd[idx]).sum()) / len(idx)
            own[mine] = score[mine]
            row["auroc"] = auroc = _auroc(score[mine | other], mine[mine | other])
            shown = round(auroc, 2)  # the verdict agrees with the AUROC as printed (0.7997 reads 0.80)
            row["support"] = ("no other label" if np.isnan(auroc) else "supported" if shown >= SUPPORTED
                              else "weak" if shown >= WEAK else "not supported")
            if other.any():
                inside, outside = sub[mine][:, idx], sub[other][:, idx]
                lift = (np.asarray(inside.mean(0)).ravel() - np.asarray(outside.mean(0)).ravel()) / sd[idx]
                # ties (markers alike in every cell) in the vocabulary's order, not by rounding noise
                best = np.argsort(-np.round(lift, 9), kind="stable")[:n_top]
                frac_in = np.asarray((inside > 0).mean(0)).ravel()
                frac_out = np.asarray((outside > 0).mean(0)).ravel()
                row["top_markers"] = ", ".join(f"{genes[union[idx[i]]]} {frac_in[i]:.2f}/{frac_out[i]:.2f}"
                                               for i in best)
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    provenance = {"marker_db": db.name, "marker_db_source": db.source, "species": species,
                  "labels": labels if isinstance(labels, str) else "given per cell",
                  "thresholds": {"supported": SUPPORTED, "weak": WEAK, "shared_markers": SHARED},
                  "notes": [note] if note else []}
    return MarkerCheck(table, pd.Series(own, index=pd.Index(aligned.obs_names), name="marker_score"), provenance)
