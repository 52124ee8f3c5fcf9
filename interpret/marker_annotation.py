"""Cell types named from their known markers alone: for candidates the model never learned.

The model learned 53 labels in blood, pancreas and head-and-neck sets. Asked to choose among
types it never learned ('Hepatocyte', 'Kupffer cell', 'Alveolar type II cell'), it can only score
the strings, which says more about the strings than the cells (core_model/candidate_route.py).
Known markers carry what it lacks: PanglaoDB lists genes for 178 cell types across organs.

`annotate_by_markers` scores every cell on each candidate's markers and answers the best-scoring
candidate. A cell's score for a candidate sums two z-tests over the candidate's markers the file
expresses: one of their log1p(CP10k) values z-scored over the file's cells (do these cells express
the markers more than the file's other cells?), one of the markers' ranks among all the genes of
the cell itself (does this cell express them at all?, ranks uniform under the null). Each mean is
scaled by its null spread, so a type with 9 markers is not favoured over one with 80 by noise.
The first tells apart the types a file holds; the second keeps cells off types absent from it,
which relative z-scores alone hand out freely. Confidences are the softmax of the scores over a
temperature. These choices, and the temperature, were made on the shared sets' valid splits with
five distractors (types of other organs) among the candidates (`benchmarks/marker_annotation.py`,
``benchmarks/results/marker_annotation.md``): the z-scores alone gave 0.21 of the cells an absent
type, the sum 0.11.

What it can and cannot do (same report, test splits): types of different lineages (islet
hormones, B / T / NK / myeloid) it tells apart nearly as well as the model trained on them (macro-F1
0.97 to 1.00 on xin2016, baron2016 and tabula muris); subsets of one lineage (naive and memory CD4 T)
share their markers and it does not (0.39 to 0.45 on the PBMC sets, against 0.80 to 0.95 for the
model). Where the model learned the types, ask the model; this route is for the types it did not.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata

from instructcell_agent.core_model.alignment import align_to_vocab, empty_cells
from instructcell_agent.core_model.cell_encoder import log_normalize_csr
from instructcell_agent.core_model.errors import InputFileError, InstructCellError, InvalidValuesError
from instructcell_agent.results import AnnotationResult, check_unassigned_below

from .marker_check import column_moments, model_genes
from .markers import DEFAULT_DB, MarkerDB, fold_cell_type, load_marker_db

ROUTE = "known markers"
# the settings `python benchmarks/marker_annotation.py` chose on the nine cell-type sets' valid
# splits (PanglaoDB): the pooling by macro-F1 with distractors among the candidates, then the
# softmax temperature by log loss with the sets' own labels
POOLINGS = ("mean", "ztest", "rank", "both")  # z-scores over the file's cells, ranks within each cell, or both
POOLING = "both"
TEMPERATURE = 1.2612
HEADER_WORDS = ("gene", "genes", "marker", "markers", "symbol", "symbols", "gene_symbol")


class UnknownMarkersError(InstructCellError, ValueError):
    """A candidate whose known markers cannot be found: not in the database, or none in the file."""


class MarkerCoverageWarning(UserWarning):
    """A candidate none of whose markers the file expresses: it cannot be scored, and is never answered."""


def read_marker_file(path) -> dict[str, list[str]]:
    """A user's markers: a JSON object ``{cell type: [genes]}``, or a table (.csv, .tsv, .txt) whose
    first column names the cell type and second the genes (one per row, or several separated by
    commas, semicolons or spaces), a header row allowed.

    Raises
    ------
    InputFileError
        A missing or unreadable file, or one that names no genes.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read the marker file {path}: {exc}") from exc
    out: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            found = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{path} is not valid JSON ({exc}); write {{\"cell type\": [\"GENE1\", ...]}}"
                                 ) from exc
        if not isinstance(found, dict) or not all(isinstance(v, list) for v in found.values()):
            raise InputFileError(f"{path}: expected a JSON object of gene lists, {{\"cell type\": [\"GENE1\", ...]}}")
        out = {str(k): [str(g) for g in v] for k, v in found.items()}
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in text.partition("\n")[0] else ","
        rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
        if rows and len(rows[0]) > 1 and rows[0][1].strip().casefold() in HEADER_WORDS:
            rows = rows[1:]  # a header row ('cell_type,gene')
        for row in rows:
            if len(row) >= 2 and row[0].strip():
                out.setdefault(row[0].strip(), []).extend(g for g in re.split(r"[,;\s]+", row[1]) if g)
    out = {k: v for k, v in out.items() if v}
    if not out:
        raise InputFileError(f"{path} names no markers; write one row per gene: cell type, gene")
    return out


def _unknown_message(db: MarkerDB, missing: Sequence[str]) -> str:
    names = sorted(db.genes)
    folded = {fold_cell_type(n): n for n in names}
    hints = []
    for label in missing:
        close = difflib.get_close_matches(fold_cell_type(label), list(folded), n=3, cutoff=0.5)
        hints.append(f"{label!r}" + (f" (close: {', '.join(repr(folded[c]) for c in close)})" if close else ""))
    return (f"no known markers for {', '.join(hints)} in {db.name}: name the database's cell type "
            f"(`instructcell_agent.interpret.markers.load_marker_db({db.name!r}).genes` lists its {len(names)}), "
            "or give the markers yourself (markers={label: [genes]}, CLI --markers FILE)")


def candidate_markers(candidates: Sequence[str], db: MarkerDB, species: str | None,
                      markers: Mapping[str, Sequence[str]] | None = None) -> dict[str, set[str]]:
    """Upper-case marker symbols per candidate: the caller's own where given, else the database's
    entries for `species` (``"human"`` / ``"mouse"``; every species' entries when None).

    Raises
    ------
    UnknownMarkersError
        For candidates neither the caller nor the database gives markers for.
    """
    markers = {str(k): v for k, v in (markers or {}).items()}
    out, missing = {}, []
    for label in candidates:
        if label in markers:
            out[label] = {str(g).strip().upper() for g in markers[label] if str(g).strip()}
            continue
        types = db.cell_types_for(label)
        genes: set[str] = set()
        for cell_type in types or ():
            by_species = db.genes.get(cell_type, {})
            keys = [species, "any"] if species in ("human", "mouse") else list(by_species)
            for key in keys:
                genes |= set(by_species.get(key, ()))
        if genes:
            out[label] = genes
        else:
            missing.append(label)
    if missing:
        raise UnknownMarkersError(_unknown_message(db, missing))
    return out


def rank_percentiles(X_log: sp.csr_matrix, columns: Sequence[int]) -> np.ndarray:
    """Cells x `columns`: each gene's rank within its cell among all genes read, as a fraction in
    (0, 1) (ties averaged; the genes a cell does not express tie at the bottom). Cell by cell, so
    a cell's score does not depend on the other cells of the file."""
    X = sp.csr_matrix(X_log)
    n_genes = X.shape[1]
    position = np.full(n_genes, -1)
    position[np.asarray(columns, dtype=int)] = np.arange(len(columns))
    out = np.empty((X.shape[0], len(columns)))
    for i in range(X.shape[0]):
        values, cols = X.data[X.indptr[i]:X.indptr[i + 1]], X.indices[X.indptr[i]:X.indptr[i + 1]]
        values, cols = values[values > 0], cols[values > 0]  # a stored zero is not expressed
        k = len(values)
        out[i] = ((n_genes - k + 1) / 2 - 0.5) / n_genes
        if k:
            mine = position[cols] >= 0
            ranks = rankdata(values)[mine]
            out[i, position[cols[mine]]] = (n_genes - k + ranks - 0.5) / n_genes
    return out


def read_for_markers(adata: ad.AnnData, db: MarkerDB, markers: Mapping[str, set[str]], vocab: Sequence[str], *,
                     layer: str | None = None, use_raw: bool = False, gene_key: str | None = None,
                     species: str | None = None):
    """The cells on the genes the marker route reads, and those genes (upper-case): the model's,
    then every gene the database lists and the given markers beyond them. They size each cell's
    library and are what a marker is ranked among within the cell, so they do not depend on
    which candidates are asked."""
    listed = {g for by_species in db.genes.values() for found in by_species.values() for g in found}
    extra = sorted((listed | {g for found in markers.values() for g in found}) - {g.upper() for g in vocab})
    aligned = align_to_vocab(adata, list(vocab) + extra, layer=layer, use_raw=use_raw, gene_key=gene_key,
                             species=species, min_genes=1)
    return aligned, [g.upper() for g in vocab] + extra


def marker_scores(X_log: sp.csr_matrix, genes: Sequence[str], marker_sets: Mapping[str, set[str]],
                  pooling: str = POOLING) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Cells x candidates scores (module doc; `pooling` one of POOLINGS), and per candidate the
    markers used (those the file expresses). z-scores are kept sparse: z = (x - mean) / sd per
    gene. A candidate none of whose markers the file expresses scores -inf (with a
    `MarkerCoverageWarning`).

    Raises
    ------
    UnknownMarkersError
        When fewer than two candidates have markers the file expresses.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    X_log = sp.csr_matrix(X_log)
    expressed = np.asarray((X_log > 0).sum(0)).ravel() > 0
    column = {g: i for i, g in enumerate(genes) if expressed[i]}
    cols = {label: sorted({column[g] for g in genes_ if g in column}) for label, genes_ in marker_sets.items()}
    empty = [label for label, c in cols.items() if not c]
    if len(cols) - len(empty) < 2:
        raise UnknownMarkersError(f"none of the known markers of {', '.join(map(repr, empty))} is expressed in this "
                                  "file, which leaves fewer than two candidates to tell apart; give markers the file "
                                  "holds (markers={label: [genes]})")
    if empty:
        # a small gene panel (a targeted assay, a file cut to its variable genes) may lack a type's
        # markers altogether: that candidate cannot be scored, and is never answered
        warnings.warn(f"none of the known markers of {', '.join(map(repr, empty))} is expressed in this file: "
                      "never answered (give markers the file holds: markers={label: [genes]})",
                      MarkerCoverageWarning, stacklevel=3)
    union = sorted({c for v in cols.values() for c in v})
    where = {c: i for i, c in enumerate(union)}
    if pooling in ("rank", "both"):
        ranks = rank_percentiles(X_log, union)
    if pooling != "rank":
        sub = sp.csr_matrix(X_log[:, union], dtype=np.float64)
        mean, sd = column_moments(sub)
    scores = np.full((X_log.shape[0], len(cols)), -np.inf)
    for j, c in enumerate(cols.values()):
        if not c:
            continue
        idx = [where[i] for i in c]
        n = len(idx)
        scores[:, j] = 0.0
        if pooling in ("rank", "both"):  # a z-test of the markers' mean rank in the cell (uniform: mean 1/2, var 1/12)
            scores[:, j] += (ranks[:, idx].mean(1) - 0.5) * np.sqrt(12 * n)
        if pooling != "rank":  # the markers' mean z-score, or its z-test (times sqrt(n))
            z_mean = (np.asarray(sub[:, idx] @ (1 / sd[idx])).ravel() - (mean[idx] / sd[idx]).sum()) / n
            scores[:, j] += z_mean if pooling == "mean" else z_mean * np.sqrt(n)
    genes_used = {label: [genes[i] for i in c] for label, c in cols.items()}
    return scores, genes_used


def annotate_by_markers(adata: ad.AnnData, candidates: Sequence[str], *,
                        markers: Mapping[str, Sequence[str]] | None = None,
                        marker_db: str | MarkerDB = DEFAULT_DB, species: str | None = None, layer: str | None = None,
                        use_raw: bool = False, gene_key: str | None = None, model=None,
                        unassigned_below: float | None = None, temperature: float = TEMPERATURE,
                        pooling: str = POOLING) -> AnnotationResult:
    """Each cell's candidate, chosen from the candidates' known markers alone (no model is asked).

    Parameters
    ----------
    adata
        The cells (never modified): raw counts or log-normalized values, any gene naming the
        data layer reads, human or mouse.
    candidates
        Two or more cell types: the database's names ('Kupffer cells', 'Hepatocytes'; case,
        plurals and a trailing 'cell' do not matter), the labels the shared sets use, or any
        name given in `markers`.
    markers
        ``{candidate: [gene symbols]}``: your own markers, used instead of the database's for
        those candidates (the other candidates still read the database).
    marker_db
        ``"panglaodb"`` (default; every cell type it lists), ``"cellmarker2"`` (the types our label
        table maps) or a :class:`MarkerDB`.
    species
        ``"human"`` / ``"mouse"``: which database entries to use; detected from the genes when None.
    layer, use_raw, gene_key
        Which matrix and gene names to read, as `annotate` reads them.
    model
        A loaded model, a checkpoint directory, or None (the shipped checkpoint): only its gene list
        is read, with the markers, to size each cell's library.
    unassigned_below
        Cells answered with a lower confidence are labelled 'Unassigned'.
    temperature, pooling
        The softmax temperature and how markers are pooled into a score (what
        ``benchmarks/marker_annotation.py`` fits and compares; keep the defaults otherwise).

    Returns
    -------
    AnnotationResult
        As `annotate` returns: labels, confidence, probabilities per candidate, and provenance
        (route 'known markers', the markers each candidate was scored on).

    Raises
    ------
    UnknownMarkersError
        A candidate without known markers, or none of whose markers the file expresses.
    ValueError
        Fewer than two candidates, or duplicates.
    """
    cands = [str(c) for c in candidates or ()]
    if len(cands) < 2:
        raise ValueError("annotating by markers needs at least two candidates to tell apart")
    if len(set(cands)) != len(cands):
        raise ValueError("candidates contain duplicates")
    if unassigned_below is not None:
        check_unassigned_below(unassigned_below)
    db = marker_db if isinstance(marker_db, MarkerDB) else load_marker_db(marker_db)
    vocab = model_genes(model)
    anyone = candidate_markers(cands, db, species, markers)  # unknown names refused before any reading
    aligned, genes = read_for_markers(adata, db, anyone, vocab, layer=layer, use_raw=use_raw, gene_key=gene_key,
                                      species=species)
    wanted = anyone if species else candidate_markers(cands, db, aligned.report.species, markers)
    species = species or aligned.report.species
    keep = ~empty_cells(aligned.X)
    if not keep.any():
        raise InvalidValuesError(f"none of the {len(keep):,} cells has counts on the genes read (the model's and "
                                 "the database's): nothing to answer from; check the matrix (layer, use_raw) and "
                                 "the gene names")
    X_log = log_normalize_csr(aligned.X[np.flatnonzero(keep)])
    scores, used = marker_scores(X_log, genes, wanted, pooling)
    logits = scores / temperature
    probs_kept = np.exp(logits - logits.max(1, keepdims=True))
    probs_kept /= probs_kept.sum(1, keepdims=True)
    probs = np.full((len(keep), len(cands)), np.nan)
    probs[keep] = probs_kept
    best = np.where(keep, np.nan_to_num(probs, nan=-1).argmax(1), -1)
    labels = np.array([cands[b] if b >= 0 else None for b in best], dtype=object)
    confidence = np.where(keep, np.nan_to_num(probs, nan=0).max(1), np.nan)
    kind = (aligned.report.value_type or {}).get("kind", "unknown").replace("_", " ")
    notes = [f"answered from known markers alone ({db.name}); no model was asked; values read as {kind}, "
             f"species {species}"]
    if not keep.all():
        notes.append(f"{int((~keep).sum()):,} cells have no counts on the genes read and are left unlabelled")
    own = set(map(str, markers or {}))
    provenance = {
        "task": "annotation", "candidate_route": ROUTE, "marker_db": db.name, "marker_db_source": db.source,
        "species": species, "temperature": temperature,
        # by column, not keyed by label: an .h5ad turns the '/' of a label such as 'CD4+/CD25 T Reg' into groups
        "markers": {"candidate": cands, "source": ["given" if c in own else db.name for c in cands],
                    "genes": [",".join(g) for g in _standing_out(X_log, genes, used, cands, scores.argmax(1))]},
        # the gene report under its own key: `AnnotationResult.summary` reads "alignment" as the model's genes
        "gene_alignment": aligned.report.to_dict(), "alignment_summary": aligned.report.summary(), "notes": notes,
    }
    result = AnnotationResult(aligned.obs_names, labels, confidence, [str(l) if l is not None else "" for l in labels],
                              pd.DataFrame(probs, index=aligned.obs_names, columns=cands), provenance)
    return result.unassigned_below(unassigned_below) if unassigned_below is not None else result


def _standing_out(X_log: sp.csr_matrix, genes: Sequence[str], used: Mapping[str, list[str]], cands: Sequence[str],
                  answered: np.ndarray) -> list[list[str]]:
    """Per candidate, the markers it was scored on, those most raised in the cells given it (mean
    log1p(CP10k) there minus in the other cells) first; alphabetical where no cell, or every cell,
    was given it. What a reader checks first, rather than 'ABCC3, ABCD3' for hepatocytes."""
    column = {g: i for i, g in enumerate(genes)}
    out = []
    for j, cand in enumerate(cands):
        names = sorted(used[cand])
        mine = answered == j
        if names and mine.any() and not mine.all():
            idx = [column[g] for g in names]
            lift = (np.asarray(X_log[mine][:, idx].mean(0)).ravel()
                    - np.asarray(X_log[~mine][:, idx].mean(0)).ravel())
            names = [names[i] for i in np.argsort(-np.round(lift, 9), kind="stable")]
        out.append(names)
    return out


def markers_line(result: AnnotationResult, n_genes: int = 5) -> str:
    """What each candidate was scored on: its number of markers the file expresses and those most
    raised in the cells given it."""
    found = result.provenance.get("markers") or {}
    parts = []
    for cand, source, genes in zip(found.get("candidate", ()), found.get("source", ()), found.get("genes", ())):
        listed = [g for g in str(genes).split(",") if g]
        shown = ", ".join(listed[:n_genes]) + (", ..." if len(listed) > n_genes else "")
        parts.append(f"  {cand} ({source}): {len(listed)} markers expressed" + (f", first {shown}" if listed else ""))
    return "\n".join(["scored on:", *parts])
