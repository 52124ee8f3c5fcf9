"""How typical a cell is of the training cells of the label it was given.

Why: the model always names a label. Asked among candidates, a cell of a type none of them names
gets a low confidence (benchmarks/results/missing_types.md); asked freely, the answer is chosen
among the labels learned for the tissue, and the confidence tells much less (pancreas cells given
as blood: 0.57 of them below 0.6). Whether a cell looks like the cells the model learned its label
from is a question the expression answers directly, without the language model.

The score, per cell: the Pearson correlation of its log1p(CP10k) profile with the log1p of its
label's mean training profile, over the genes both the file and that label's training file hold
(`MIN_SHARED`) among the `INFORMATIVE_GENES` whose mean differs most between the learned labels,
as a z-score against the same correlation of up to `PER_LABEL` of that label's training cells
(each against the mean of the others), on the Fisher scale (atanh), those cells thinned to the
cell's own depth where it is shallower than they are (`DepthCurve`). 0 is as alike as the label's
training cells are on average; -3 is three of their standard deviations less alike. Stored training cells, not stored
statistics, because the score's scale follows the file's genes: a file cut to its 2,000 most
variable genes correlates differently from a whole one, and the training cells are cut alike at
run time. Correlation rather than cosine: housekeeping genes lift every cosine (on whole files,
pancreas cells given as blood were told from blood cells with AUROC 0.87 by cosine, 0.99 by
correlation; benchmarks/EXPERIMENTS.md).

A label scores against the cells of every training set of the same tissue that names the same
population: spelled alike, or tied to the same Cell Ontology term ('CD14+ Monocyte', 'CD14+Mono'
and 'CD14+ Mono' of three PBMC sets); the best counts. Which set's spelling the model chose says
little about which set's cells a file resembles: scanpy's pbmc68k_reduced comes from zheng2017's
lab, and its monocytes, answered with another set's spelling, fell below -3 against that set's
cells alone (0.96 of them; benchmarks/EXPERIMENTS.md) and not against zheng2017's.

Files: reference.safetensors + reference.json beside the model's files; optional (a checkpoint
without them gives no typicality).
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .errors import CheckpointError
from .io import load_tensors_with_meta, save_tensors_with_meta, vocab_sha256
from .labels import ontology_id

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE, META_FILE = "reference.safetensors", "reference.json"
PER_LABEL = 40  # training cells kept per label: ~600 non-zero genes each, ~5 MB for the shipped sets
# Genes the score reads: those whose mean differs most between the learned labels (variance of
# log1p of the labels' mean profiles), 0 for all. On the valid splits 2,000 of the 11,117 read
# other tissues' cells as atypical more often (aissa2021 as blood 0.64 -> 0.96 below -3 against
# the best blood label) with no more in-set cells flagged (0.004 either way; cut to 2,000 HVGs
# 0.023 -> 0.007); all genes let depth and housekeeping genes, which every type shares, set the
# correlation (benchmarks/EXPERIMENTS.md).
INFORMATIVE_GENES = 2000
MIN_CELLS = 5  # fewer kept cells give no usable spread: such labels get no typicality
CHUNK = 4096  # cells scored at once: bounds the sparse copies a large file's call makes
STATS_CACHE = 1024  # (label, genes read) spreads kept between calls
# On the test splits at most 0.015 of a set's cells fell below typicality -3 (0.118 on a file cut
# to its 2,000 most variable genes), against 0.72 to 1.00 of other tissues' cells answered as
# blood (benchmarks/results/atypical_cells.md): half the cells of a call below -3 says the file
# (or, for generated cells, the generator's rendering of the type), not a few cells, is unlike
# what the model learned.
ATYPICAL_BELOW, ATYPICAL_SHARE = -3.0, 0.5
# A set's kept cells hold counts only on the genes its own file held (pbmc3k's file keeps 2,000
# genes, kang2018's 6,998, wang2016's 219), so each set is compared over the genes both it and the
# file hold: over the file's other genes its cells read as zeros they never measured, and cells of
# a study the reference holds none of fell below -3 for that alone (zheng2017's test cells scored
# without zheng2017's own kept cells: 1.00 of them, 0.00 over the shared genes; kang2018's 0.49 ->
# 0.19). A set sharing fewer than MIN_SHARED of the file's scored genes is not compared: over a few
# genes cells of other tissues pass (xin2016's 980-gene pancreas file scored as blood, best blood
# label per cell: below -3 for 1.00 of its cells before, 0.13 with every set compared over what it
# shares, pbmc3k's 75 genes included, 0.99 with sets under 0.4 left out; benchmarks/EXPERIMENTS.md,
# 2026-12-07).
MIN_SHARED = 0.4


class AtypicalCellsWarning(UserWarning):
    """Most cells are unlike the training cells of the label they were given (or, generated, of
    the type they were generated as)."""


def atypical_share(typicality: np.ndarray) -> float:
    """Share of the scored cells (typicality not NaN) below ATYPICAL_BELOW; 0 without any."""
    scored = np.asarray(typicality, dtype=float)
    scored = scored[~np.isnan(scored)]
    return float((scored < ATYPICAL_BELOW).mean()) if scored.size else 0.0


@dataclass
class Reference:
    """Per (label set, label): the mean CP10k profile of its training cells and a sample of them.

    keys[i] = (label set, label); mean_cp10k[i] its training cells' mean CP10k (genes,), over
    n_cells[i] cells; its kept cells are rows offsets[i]:offsets[i + 1] of `cells` (counts on the
    vocabulary, CSR)."""

    keys: list[tuple[str, str]]
    mean_cp10k: np.ndarray
    n_cells: np.ndarray
    cells: sp.csr_matrix
    offsets: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    tissues: dict[str, str] = field(default_factory=dict)  # label set -> its tissue (labels.json)

    def __post_init__(self) -> None:
        self.by_label: dict[str, list[int]] = {}
        for i, (_, label) in enumerate(self.keys):
            self.by_label.setdefault(label, []).append(i)
        self._populations: dict[str, list[int]] = {}
        self.genes = informative_genes(self.mean_cp10k, int(self.info.get("informative_genes", 0)))
        self.measured = measured_genes(self.keys, self.mean_cp10k)
        # (key, genes read) -> `_stats`: a file answered in chunks (the MCP server's 256 cells) reads
        # the same genes every time, and the kept cells' spread need not be measured again
        self._stats_cache: dict[tuple[int, bytes], tuple[np.ndarray, DepthCurve | None]] = {}

    def population(self, label: str) -> list[int]:
        """The keys a cell given `label` is scored against: the label's own, and those of labels
        tied to the same Cell Ontology term in training sets of the same tissue (a label no set
        holds: every set's labels of its term). Not across tissues: pooling more populations lets
        more cells pass, and a tumour's Smart-seq2 T cells are not what a blood file's T cells
        should be measured against (with all genes read, zheng2017's CD34+ cells asked among
        kang2018's labels fell below -3 0.97 of them by spelling alone, 0.07 with every set's
        population pooled in; benchmarks/EXPERIMENTS.md)."""
        if label not in self._populations:
            own = self.by_label.get(label, [])
            tissues = {self.tissues.get(self.keys[k][0], "") for k in own}
            term = ontology_id(label)
            alike = [k for k, (name, other) in enumerate(self.keys) if k not in own and term is not None
                     and ontology_id(other) == term and (not own or self.tissues.get(name, "") in tissues)]
            self._populations[label] = own + alike
        return self._populations[label]

    def typicality(self, counts: sp.spmatrix, present: np.ndarray, labels: Sequence[str | None]) -> np.ndarray:
        """z-score per cell (see the module docstring) of `counts` (cells x vocabulary, linear
        scale) against the kept cells of its label's population in `labels` (`population`) thinned
        to the cell's depth (`DepthCurve`), each set's over the vocabulary genes at positions
        `present` (the file's genes) that the set holds too (`MIN_SHARED`). NaN for a cell without
        a label, a label of no population this reference holds enough cells of over those genes, or
        a cell with no counts there."""
        counts = sp.csr_matrix(counts)
        present = np.asarray(present, dtype=np.int64)
        n_scored = (present if self.genes is None else np.intersect1d(present, self.genes)).size
        out = np.full(counts.shape[0], np.nan)
        names = np.asarray([str(l) if l is not None else "" for l in labels], dtype=object)
        for label in sorted(set(names) - {""}):
            reads = [read for k in self.population(label) if (read := self._read(k, present, n_scored)) is not None]
            if not reads:
                continue
            rows = np.flatnonzero(names == label)
            for lo in range(0, rows.size, CHUNK):
                cells = counts[rows[lo:lo + CHUNK]]
                best = np.full(cells.shape[0], -np.inf)
                for shared, at, mean_log, curve in reads:
                    part = sp.csr_matrix(cells[:, shared])
                    centre, spread = curve.at(np.asarray(pseudo_counts(part).sum(1)).ravel())
                    best = np.fmax(best, (fisher(correlation(part[:, at], mean_log)) - centre) / spread)
                out[rows[lo:lo + CHUNK]] = np.where(np.isfinite(best), best, np.nan)
        return out

    def _read(self, k: int, present: np.ndarray, n_scored: int):
        """How key k reads a file holding the genes `present`: (the genes both hold, the scored
        ones' positions among them, the label's mean profile there, its DepthCurve); None where
        the two share fewer than MIN_SHARED of the file's `n_scored` scored genes, or too few
        cells are kept."""
        shared = np.intersect1d(present, self.measured[self.keys[k][0]])
        scored = shared if self.genes is None else np.intersect1d(shared, self.genes)
        if scored.size == 0 or scored.size < MIN_SHARED * n_scored:
            return None
        at = np.searchsorted(shared, scored)
        cached = (k, hashlib.sha1(shared.tobytes()).digest())
        if cached not in self._stats_cache:
            if len(self._stats_cache) >= STATS_CACHE:
                self._stats_cache.clear()
            self._stats_cache[cached] = self._stats(k, shared, at)
        mean_log, curve = self._stats_cache[cached]
        return None if curve is None else (shared, at, mean_log, curve)

    def _stats(self, k: int, present: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, DepthCurve | None]:
        """Label k's mean profile over the scored genes `present[at]` (log1p CP10k after
        renormalising there), and its DepthCurve: its kept cells' depth on the genes `present`
        (those the file and the set both hold) and their Fisher-scaled correlations over the scored
        ones, each cell against the mean of the label's other training cells (its own counts would
        flatter it), at every depth they are thinned to; None where too few cells are kept."""
        scored = present[at]
        mean_log = log_profile(self.mean_cp10k[k][scored])
        kept = self.cells[self.offsets[k]:self.offsets[k + 1]]
        n = float(self.n_cells[k])
        if kept.shape[0] < MIN_CELLS or n < 2:
            return mean_log, None
        others = ((n * self.mean_cp10k[k][None, :] - cp10k(kept).toarray()) / (n - 1))[:, scored]
        profiles = np.log1p(others * (1e4 / np.clip(others.sum(1, keepdims=True), 1e-12, None)))
        # seeded by the label's name, not its index, so a label draws alike in every reference holding it
        seed = zlib.crc32("\t".join(self.keys[k]).encode())
        return mean_log, depth_curve(kept[:, present], at, profiles, seed=seed)

    def clear_cache(self) -> None:
        """Forget the spreads measured so far (benchmarks time a first call with it)."""
        self._stats_cache.clear()

    def permute_genes(self, order: Sequence[int]) -> None:
        """Reorder the gene columns (the checkpoint's vocabulary was reordered)."""
        order = list(order)
        self.mean_cp10k = self.mean_cp10k[:, order]
        self.cells = sp.csr_matrix(self.cells[:, order])
        self.genes = informative_genes(self.mean_cp10k, int(self.info.get("informative_genes", 0)))
        self.measured = measured_genes(self.keys, self.mean_cp10k)
        self.clear_cache()


def informative_genes(mean_cp10k: np.ndarray, n: int) -> np.ndarray | None:
    """Sorted positions of the `n` genes whose log1p mean varies most across the labels (exact ties
    broken by position); None for all genes (n = 0, or n not below the vocabulary's size)."""
    if n <= 0 or n >= mean_cp10k.shape[1] or len(mean_cp10k) < 2:
        return None
    spread = np.log1p(mean_cp10k).var(0)
    return np.sort(np.lexsort((np.arange(spread.size), -spread))[:n])


def measured_genes(keys: Sequence[tuple[str, str]], mean_cp10k: np.ndarray) -> dict[str, np.ndarray]:
    """Per label set: the sorted vocabulary positions where any of its labels' mean is above 0,
    the genes its training file held (a gene it held that none of its cells expressed is left
    out too: it says nothing about a type there)."""
    sets: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(keys):
        sets.setdefault(name, []).append(i)
    return {name: np.flatnonzero(mean_cp10k[rows].sum(0) > 0) for name, rows in sets.items()}


def cp10k(counts: sp.spmatrix) -> sp.csr_matrix:
    """Each row scaled to sum 10,000 (rows without counts stay zero)."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    total = np.asarray(counts.sum(1)).ravel()
    return sp.csr_matrix(sp.diags(np.where(total > 0, 1e4 / np.where(total > 0, total, 1), 0.0)) @ counts)


def log_profile(mean: np.ndarray) -> np.ndarray:
    """log1p of a mean CP10k profile renormalised to 10,000 over the genes it is given."""
    total = float(mean.sum())
    return np.log1p(mean * (1e4 / total if total > 0 else 0.0))


def correlation(counts: sp.spmatrix, profile: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row's log1p(CP10k) (normalised over these columns) with
    `profile`, computed on the sparse rows (zeros included). NaN for a row without counts."""
    x = cp10k(counts)
    x.data = np.log1p(x.data)
    g = profile.size
    sx, sxx = np.asarray(x.sum(1)).ravel(), np.asarray(x.multiply(x).sum(1)).ravel()
    sxy = x @ profile
    sy, syy = float(profile.sum()), float(profile @ profile)
    cov = sxy - sx * sy / g
    var = (sxx - sx ** 2 / g) * (syy - sy ** 2 / g)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, cov / np.sqrt(np.clip(var, 1e-300, None)), np.nan)


def fisher(r: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(r, -0.999999, 0.999999))


# Fractions of their counts the kept cells are thinned to (binomially) when a label's spread is
# measured. A shallow cell correlates less with its label's mean profile however typical it is: with
# one spread measured at the training cells' own depth, zheng2017's test cells thinned to a fifth
# of their counts (median 299) fell below -3 0.66 of them, a twentieth 0.97, while the answers were
# still right for 0.75 and 0.57 (benchmarks/results/sequencing_depth_typicality_unmatched.md). So a
# cell is measured against the kept cells thinned to its own depth. Depth is counted, not read off
# the genes detected: how many genes a cell detects is also what type it is (aissa2021's PC9 cells
# detect 861 at 1,268 counts, zheng2017's blood cells 593 at 1,505), and matching on it let blood
# cells pass as PC9 cells (benchmarks/EXPERIMENTS.md, shallower cells).
DEPTH_FRACTIONS = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625)


@dataclass(frozen=True)
class DepthCurve:
    """A label's kept cells thinned to each of DEPTH_FRACTIONS: their median count on the file's
    genes (strictly descending from the full depth), and the mean and standard deviation of their
    Fisher-scaled correlations there."""

    depth: np.ndarray
    centre: np.ndarray
    spread: np.ndarray

    def at(self, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(centre, spread) for cells of `depth` counts: interpolated on log depth between the
        levels; cells as deep as the full depth's median or deeper take the full depth's (what
        every cell was measured against before depth was matched), cells shallower than the
        shallowest level take that level's."""
        x = np.log(np.maximum(np.asarray(depth, dtype=float), 1.0))
        xp = np.log(np.maximum(self.depth[::-1], 1.0))
        return np.interp(x, xp, self.centre[::-1]), np.interp(x, xp, self.spread[::-1])


def pseudo_counts(values: sp.spmatrix) -> sp.csr_matrix:
    """The counts behind each row of linear-scale values: the row divided by its smallest value
    (what one count became where counts were normalised per cell: exact for UMI data, a stand-in
    for reads and TPM; a row of raw counts holds a 1 as a rule) and rounded, at least 1."""
    out = sp.csr_matrix(values, dtype=np.float64, copy=True)
    out.eliminate_zeros()
    lengths = np.diff(out.indptr)
    if out.nnz == 0:
        return out
    smallest = np.ones(out.shape[0])
    filled = lengths > 0
    smallest[filled] = np.minimum.reduceat(out.data, out.indptr[:-1][filled])
    out.data = np.maximum(np.rint(out.data / np.repeat(smallest, lengths)), 1.0)
    return out


def thin(counts: sp.spmatrix, fraction: float | np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
    """Each count kept with probability `fraction` (one for every cell, or one per cell): binomial
    thinning, the same cells sequenced that much less deeply, as far as sampling goes. `counts`
    holds whole numbers (`pseudo_counts` for normalised values); it is not modified."""
    out = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    per_cell = np.broadcast_to(np.asarray(fraction, dtype=float), (out.shape[0],))
    per_entry = np.repeat(per_cell, np.diff(out.indptr))
    out.data = rng.binomial(np.rint(out.data).astype(np.int64), per_entry).astype(np.float64)
    out.eliminate_zeros()
    return out


def depth_curve(kept: sp.spmatrix, at: np.ndarray, profiles: np.ndarray, seed: int) -> DepthCurve | None:
    """The DepthCurve of kept cells (rows of `kept`: linear scale on the file's genes), scored over
    the columns `at`, each against its own row of `profiles` (log1p CP10k of the label's mean
    without it). Seeded, so a label's curve is the same on every call. None where fewer than
    MIN_CELLS cells have a correlation at the full depth."""
    kept = sp.csr_matrix(kept, dtype=np.float64)
    counts = pseudo_counts(kept)
    rng = np.random.default_rng(seed)
    depth: list[float] = []
    centre: list[float] = []
    spread: list[float] = []
    for fraction in DEPTH_FRACTIONS:
        thinned, cells = counts, kept  # the full depth scores the stored values themselves
        if fraction < 1.0:
            thinned = cells = thin(counts, fraction, rng)
        sims = row_correlation(cells[:, at], profiles)
        ok = np.isfinite(sims)
        if ok.sum() < MIN_CELLS:
            break
        median = float(np.median(np.asarray(thinned.sum(1)).ravel()[ok]))
        if depth and median >= depth[-1]:
            continue  # no shallower than the level before: nothing to interpolate between
        scores = fisher(sims[ok])
        depth.append(median)
        centre.append(float(scores.mean()))
        spread.append(float(max(scores.std(ddof=1), 1e-6)))
    if not depth:
        return None
    return DepthCurve(np.asarray(depth), np.asarray(centre), np.asarray(spread))


def row_correlation(cells: sp.csr_matrix, profiles: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row's log1p(CP10k) with the same row of `profiles` (dense,
    cells x genes); NaN for a row without counts."""
    x = cp10k(cells)
    x.data = np.log1p(x.data)
    x = x.toarray() - np.asarray(x.mean(1))
    p = profiles - profiles.mean(1, keepdims=True)
    denominator = np.sqrt((x * x).sum(1) * (p * p).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (x * p).sum(1) / np.where(denominator > 0, denominator, 1.0), np.nan)


# ---------------------------------------------------------------- fitting
def fit_reference(parts: Sequence[tuple[str, sp.spmatrix, np.ndarray]], n_genes: int, per_label: int = PER_LABEL,
                  seed: int = 0, info: dict[str, Any] | None = None, tissues: dict[str, str] | None = None,
                  n_informative: int = INFORMATIVE_GENES) -> Reference:
    """A reference from (label set, counts on the vocabulary, label per cell) parts: each label's
    mean CP10k over all its cells and `per_label` of them drawn at random (seeded). `tissues`:
    each label set's tissue (which sets pool a population, `Reference.population`).
    `n_informative`: how many of the genes the score reads (`informative_genes`; 0 for all)."""
    rng = np.random.default_rng(seed)
    keys, means, ns, kept = [], [], [], []
    for name, counts, labels in parts:
        counts = sp.csr_matrix(counts, dtype=np.float32)
        if counts.shape[1] != n_genes:
            raise ValueError(f"{name}: {counts.shape[1]} genes, the vocabulary {n_genes}")
        labels = np.asarray(labels, dtype=str)
        for label in sorted(set(labels)):
            rows = np.flatnonzero(labels == label)
            rows = rows[np.asarray(cp10k(counts[rows]).sum(1)).ravel() > 0]  # cells with counts only
            if rows.size == 0:
                continue
            pick = np.sort(rng.choice(rows, per_label, replace=False)) if rows.size > per_label else rows
            keys.append((name, label))
            means.append(np.asarray(cp10k(counts[rows]).mean(0)).ravel())
            ns.append(rows.size)
            kept.append(counts[pick])
    offsets = np.concatenate([[0], np.cumsum([k.shape[0] for k in kept])]).astype(np.int64)
    cells = sp.vstack(kept, format="csr") if kept else sp.csr_matrix((0, n_genes), dtype=np.float32)
    return Reference(keys, np.asarray(means).reshape(len(keys), n_genes), np.asarray(ns, dtype=np.int64), cells,
                     offsets, {"per_label": per_label, "seed": seed, "informative_genes": n_informative,
                               **(info or {})}, dict(tissues or {}))


def merged(new: Reference, old: Reference, sets: Sequence[str]) -> Reference:
    """`new` plus `old`'s labels of the label sets `sets` (inherited without data by a fine-tuning
    run: their training cells are the starting checkpoint's, and so is what they are scored against)."""
    take = [i for i, (name, _) in enumerate(old.keys) if name in set(sets)]
    rows = [old.cells[old.offsets[i]:old.offsets[i + 1]] for i in take]
    offsets = np.concatenate([new.offsets, new.offsets[-1] + np.cumsum([r.shape[0] for r in rows])]).astype(np.int64)
    return Reference(new.keys + [old.keys[i] for i in take],
                     np.concatenate([new.mean_cp10k, old.mean_cp10k[take]]),
                     np.concatenate([new.n_cells, old.n_cells[take]]),
                     sp.vstack([new.cells, *rows], format="csr"), offsets,
                     {**new.info, "inherited_sets": list(sets)}, {**old.tissues, **new.tissues})


# ---------------------------------------------------------------- files
def has_reference(path: str | os.PathLike | None) -> bool:
    return path is not None and all((Path(path) / f).is_file() for f in (WEIGHTS_FILE, META_FILE))


def save_reference(root: str | os.PathLike, reference: Reference, vocab: Sequence[str]) -> Path:
    """Write reference.safetensors + reference.json (each atomically). The kept cells are stored
    as float16 log1p(counts), 3 significant digits (counts of Smart-seq2 files pass float16's
    range; the score renormalises every cell, so the rounding is all that changes)."""
    cells = sp.csr_matrix(reference.cells)
    index_dtype = torch.int16 if len(vocab) < 2 ** 15 else torch.int32
    tensors = {"mean_cp10k": torch.as_tensor(reference.mean_cp10k, dtype=torch.float32).half(),
               "n_cells": torch.as_tensor(reference.n_cells, dtype=torch.int64),
               "offsets": torch.as_tensor(reference.offsets, dtype=torch.int64),
               "indptr": torch.as_tensor(cells.indptr, dtype=torch.int64),
               "indices": torch.as_tensor(cells.indices).to(index_dtype),
               "log_counts": torch.as_tensor(np.log1p(cells.data.astype(np.float32))).half()}
    meta = {"format_version": FORMAT_VERSION, "keys": [list(k) for k in reference.keys],
            "tissues": reference.tissues, "vocab_sha256": vocab_sha256(vocab), **reference.info}
    save_tensors_with_meta(root, WEIGHTS_FILE, META_FILE, tensors, meta)
    log.info("wrote %s and %s in %s", WEIGHTS_FILE, META_FILE, root)
    return Path(root) / META_FILE


def load_reference(root: str | os.PathLike, vocab: Sequence[str]) -> Reference | None:
    """The reference stored in a checkpoint directory, or None when it has none."""
    root = Path(root)
    if not has_reference(root):
        return None
    state, meta = load_tensors_with_meta(root, WEIGHTS_FILE, META_FILE, vocab, FORMAT_VERSION,
                                         "instructcell fit-reference --checkpoint DIR")
    keys = [(str(a), str(b)) for a, b in meta.pop("keys")]
    tissues = {str(k): str(v) for k, v in meta.pop("tissues", {}).items()}
    indptr = state["indptr"].numpy()
    cells = sp.csr_matrix((np.expm1(state["log_counts"].float().numpy()), state["indices"].long().numpy(), indptr),
                          shape=(indptr.size - 1, len(vocab)))
    mean = state["mean_cp10k"].float().numpy().astype(np.float64)
    offsets = state["offsets"].numpy()
    if mean.shape != (len(keys), len(vocab)) or offsets.shape != (len(keys) + 1,) or offsets[-1] != cells.shape[0]:
        raise CheckpointError(f"{root}/{WEIGHTS_FILE}: shapes do not fit {len(keys)} labels x {len(vocab)} genes")
    info = {k: v for k, v in meta.items() if k not in ("format_version", "vocab_sha256", "weights_sha256")}
    return Reference(keys, mean, state["n_cells"].numpy(), cells, offsets, info, tissues)
