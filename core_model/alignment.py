"""Align a user's AnnData to the model's gene vocabulary.

The steps: pick the matrix (X, a layer or raw), detect its value type and bring it to a linear
scale, map gene names to human symbols (Ensembl ids, mouse orthologs, renamed aliases), and sum
the columns that land on the same vocabulary gene. Vocabulary genes the input lacks stay zero.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import GeneOverlapError, InputFileError, InvalidValuesError, LabelKeyError
from .genes import (detect_gene_id_type, earlier_name, split_compound_name, split_compound_names,
                    to_human_symbols)
from .genomes import genome_prefixes, strip_genome_prefix
from .io import select_matrix
from .values import detect_value_type, to_count_scale

logger = logging.getLogger(__name__)

# var columns that commonly hold symbols when var_names are Ensembl ids (10x, CELLxGENE, scanpy).
SYMBOL_COLUMNS: tuple[str, ...] = (
    "gene_symbols", "gene_symbol", "feature_name", "gene_name", "gene_names", "symbol", "symbols",
    "gene_ids_symbol", "name",
)
_N_EXAMPLES = 10


@dataclass(frozen=True)
class AlignmentReport:
    """How well an input matched the vocabulary, and what was done to it."""

    n_vocab: int
    n_input_genes: int
    n_matched: int
    matched_fraction: float  # of the vocabulary
    input_matched_fraction: float  # of the input genes
    id_type: str
    species: str
    value_type: dict[str, Any]
    missing_examples: tuple[str, ...]
    unmatched_input_examples: tuple[str, ...]
    notes: tuple[str, ...]
    names_from: str = "var_names"  # or "var['<column>']": where the gene names were read

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dictionary."""
        return {
            "n_vocab": self.n_vocab,
            "n_input_genes": self.n_input_genes,
            "n_matched": self.n_matched,
            "matched_fraction": self.matched_fraction,
            "input_matched_fraction": self.input_matched_fraction,
            "id_type": self.id_type,
            "species": self.species,
            "value_type": dict(self.value_type),
            "missing_examples": list(self.missing_examples),
            "unmatched_input_examples": list(self.unmatched_input_examples),
            "notes": list(self.notes),
            "names_from": self.names_from,
        }

    def summary(self) -> str:
        """A few human-readable lines."""
        vt = self.value_type
        kind = str(vt.get("kind"))
        if vt.get("log_base") is not None:
            base = vt["log_base"]
            kind += f" (base {'e' if abs(base - np.e) < 1e-9 else f'{base:g}'})"
        if vt.get("assumed"):
            kind += ", assumed"
        ids = "Ensembl ids" if self.id_type == "ensembl" else "gene symbols"
        lines = [
            f"Matched {self.n_matched:,} of {self.n_vocab:,} vocabulary genes "
            f"({100 * self.matched_fraction:.1f}%) from {self.n_input_genes:,} input genes "
            f"({100 * self.input_matched_fraction:.1f}% of them used).",
            f"Input: {self.species} {ids}; values: {kind}.",
        ]
        if self.missing_examples:
            lines.append("Missing vocabulary genes, e.g.: " + ", ".join(self.missing_examples))
        if self.unmatched_input_examples:
            lines.append("Unused input genes, e.g.: " + ", ".join(self.unmatched_input_examples))
        lines.extend(f"Note: {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass(frozen=True)
class AlignedData:
    """The input on the vocabulary's genes.

    Attributes
    ----------
    X
        cells x len(vocab), float32 CSR on a linear scale (see ``values.to_count_scale``);
        zero where the input lacks a vocabulary gene.
    obs_names
        Cell names, in input order.
    report
        What matched and what was done.
    matched
        Sorted vocabulary positions the input has a gene for (the others are absent, not zero).
    """

    X: sp.csr_matrix
    obs_names: list[str]
    report: AlignmentReport
    matched: np.ndarray


def _var_frame(adata: anndata.AnnData, use_raw: bool) -> pd.DataFrame:
    return adata.raw.var if use_raw and adata.raw is not None else adata.var


def _gene_names(
    var: pd.DataFrame, var_names: list[str], gene_key: str | None
) -> tuple[list[str], list[str] | None, list[str]]:
    """Return (names to map, fallback symbols or None, notes)."""
    if gene_key is None and (genomes := genome_prefixes(var_names)) is not None:
        names, fallback, notes = _gene_names(var, _one_genome_names(var_names, genomes), None)
        return names, fallback, [f"gene names carry the genome prefix {genomes.dropna().iloc[0]!r} (a combined "
                                 "reference's naming): read without it", *notes]
    if gene_key is not None:
        if gene_key not in var.columns:
            available = ", ".join(repr(str(c)) for c in var.columns) or "none"
            raise LabelKeyError(
                f"var has no column {gene_key!r} (gene_key); available var columns: {available}. "
                "Omit gene_key to use var_names"
            )
        return [str(v) for v in var[gene_key].astype(object).tolist()], None, [
            f"gene names taken from var[{gene_key!r}]"
        ]
    if detect_gene_id_type(var_names) == "ensembl":
        for column in SYMBOL_COLUMNS:
            if column in var.columns:
                fallback = [str(v) for v in var[column].astype(object).tolist()]
                note = f"Ensembl ids the table lacks or names unlike the model were named from var[{column!r}]"
                return var_names, fallback, [note]
    if (pairs := split_compound_names(var_names)) is not None:
        example = next(n for n in var_names if split_compound_name(n) is not None)
        return pairs[0], pairs[1], [f"names such as {example!r} read as an Ensembl id (first) and a symbol (second)"]
    return var_names, None, []


def _one_genome_names(var_names: list[str], genomes: pd.Series) -> list[str]:
    """Names without their genome prefix, where every prefixed name is of one genome; a matrix
    of several genomes (a barnyard or xenograft experiment) is refused: its cells are of several
    species, which the reader's genome selection separates (cells as well as genes)."""
    counts = genomes.value_counts()
    if len(counts) > 1:
        held = ", ".join(f"{g} {n:,}" for g, n in counts.items())
        raise InputFileError(
            f"the genes carry the prefixes of {len(counts)} genomes ({held} genes): a mixed-species matrix "
            f"(barnyard or xenograft). Read the file with ica.read_cells(path, genome={counts.index[0]!r}) "
            f"(command line: --genome {counts.index[0]}), which keeps that genome's genes and the cells whose "
            "counts lie on them")
    return strip_genome_prefix(var_names, str(counts.index[0]))


class SmallPanelWarning(UserWarning):
    """The matrix read holds far fewer of the model's genes than `adata.raw` does."""


def _vocab_targets(names: list[str], fallback: list[str] | None, species: str | None,
                   vocab_index: dict[str, int]) -> tuple[np.ndarray, str, Any, list[tuple[str, str]]]:
    """Each name's vocabulary position (-1: none), the names' id type, the symbol mapping's info,
    and the (name, vocabulary name) pairs matched through the gene's earlier name."""
    id_type = detect_gene_id_type(names)
    symbols, info = to_human_symbols(names, species=species, id_type=id_type)
    # The file's own symbols (beside Ensembl ids) name a gene the table lacks, or one whose id the
    # table gives a newer name the model never saw (an id retired or reassigned since the file
    # was made): tried second.
    second = to_human_symbols(fallback, id_type="symbol")[0] if fallback is not None else [None] * len(names)
    # A human symbol that is itself in the vocabulary wins over its alias renaming: the model
    # was trained on that name.
    direct = id_type == "symbol" and info.species == "human"
    present = set(names) | {s for s in symbols if s is not None}
    targets = np.full(len(names), -1, dtype=np.int64)
    earlier: list[tuple[str, str]] = []
    for i, (name, symbol, other) in enumerate(zip(names, symbols, second)):
        if direct and name in vocab_index:
            targets[i] = vocab_index[name]
        elif symbol is not None and symbol in vocab_index:
            targets[i] = vocab_index[symbol]
        elif other is not None and other in vocab_index:
            targets[i] = vocab_index[other]
        # Last: the gene's name in an older release, which the vocabulary may hold (it is built
        # from the training files' own names), unless the file also holds that name itself.
        elif (old := earlier_name(name, symbol)) is not None and old in vocab_index and old not in present:
            targets[i] = vocab_index[old]
            earlier.append((name, old))
    return targets, id_type, info, earlier


# var_names matching fewer genes than this send alignment looking for a var column of gene names
_FEW_GENES = 100

# Why warn: a file cut to its 2,000 most variable genes (the usual scanpy workflow, with the
# full matrix kept in adata.raw) holds 13-17% of the vocabulary, and on the valid splits the
# answers from such copies lost up to 0.2 macro-F1 (benchmarks/EXPERIMENTS.md, "files cut to
# their most variable genes").
_RAW_GAIN, _RAW_EXTRA = 1.5, 1000


def _raw_panel_hint(adata: anndata.AnnData, gene_key: str | None, species: str, vocab_index: dict[str, int],
                    n_matched: int) -> str | None:
    """A note when adata.raw holds many more vocabulary genes than the matrix used (None otherwise)."""
    raw_names = [str(n) for n in adata.raw.var_names]
    try:
        names, fallback, _ = _gene_names(adata.raw.var, raw_names, gene_key)
    except (LabelKeyError, InputFileError):  # gene_key names a column raw's var lacks; raw of several genomes
        return None
    targets = _vocab_targets(names, fallback, species, vocab_index)[0]
    n_raw = int(np.unique(targets[targets >= 0]).size)
    if n_raw < _RAW_GAIN * n_matched or n_raw - n_matched < _RAW_EXTRA:
        return None
    return (f"adata.raw holds {n_raw:,} of the model's genes, the matrix used only {n_matched:,}: answers "
            "read from fewer genes are less accurate; pass use_raw=True (CLI: --use-raw) to read adata.raw")


def align_to_vocab(
    adata: anndata.AnnData,
    vocab: Sequence[str],
    *,
    layer: str | None = None,
    use_raw: bool = False,
    gene_key: str | None = None,
    species: str | None = None,
    min_genes: int = 100,
) -> AlignedData:
    """Put an AnnData's expression on the model's gene vocabulary.

    Parameters
    ----------
    adata
        Input cells (never modified).
    vocab
        The model's genes, human symbols, without duplicates.
    layer, use_raw
        Which matrix to use (see :func:`instructcell_agent.core_model.io.select_matrix`).
    gene_key
        A var column with gene names to use instead of var_names. Without it, Ensembl
        var_names are mapped through the shipped table, and a symbol column such as
        ``"gene_symbols"`` or ``"feature_name"`` names the ids the table lacks.
    species
        ``"human"`` or ``"mouse"``; detected from the gene names when None.
    min_genes
        Refuse when fewer vocabulary genes than this (or than the whole vocabulary, if it is
        smaller) are matched.

    Returns
    -------
    AlignedData

    Raises
    ------
    InvalidValuesError
        No cells, or values negative / non-finite.
    GeneOverlapError
        Too few vocabulary genes matched.
    LabelKeyError
        ``gene_key`` is not a var column.
    InputFileError
        The layer or raw matrix is missing.
    """
    vocab = [str(g) for g in vocab]
    vocab_index = {g: i for i, g in enumerate(vocab)}
    if len(vocab_index) != len(vocab):
        raise ValueError("the vocabulary has duplicate genes")
    if adata.n_obs == 0:
        raise InvalidValuesError("the input has no cells (0 observations); nothing to align")

    X, var_names = select_matrix(adata, layer=layer, use_raw=use_raw)
    names, fallback, notes = _gene_names(_var_frame(adata, use_raw), var_names, gene_key)
    if X.shape[1] != len(names):
        raise InvalidValuesError(
            f"the matrix has {X.shape[1]:,} columns but {len(names):,} gene names"
        )

    try:
        value_report = detect_value_type(X)
    except InvalidValuesError as exc:  # say which matrix was read and which others the file holds
        raise InvalidValuesError(f"{exc}; {matrices_note(adata, layer, use_raw)}") from exc
    targets, id_type, info, earlier = _vocab_targets(names, fallback, species, vocab_index)
    notes.extend(info.notes)
    if earlier:
        examples = ", ".join(f"{name} as {old}" for name, old in earlier[:3])
        notes.append(f"{len(earlier):,} gene(s) matched under the name an older annotation release gave them, "
                     f"which the model learned ({examples})")

    used = np.flatnonzero(targets >= 0)
    matched = np.unique(targets[used])
    n_matched = int(matched.size)
    if not use_raw and layer is None and adata.raw is not None:
        hint = _raw_panel_hint(adata, gene_key, info.species, vocab_index, n_matched)
        if hint:
            notes.append(hint)
            warnings.warn(hint, SmallPanelWarning, stacklevel=2)
    n_dup = int(used.size - n_matched)
    if n_dup:
        notes.append(
            f"{n_dup:,} input genes shared a vocabulary gene with another; their values were summed"
        )
    if value_report.assumed:
        notes.append(value_report.note)

    matched_set = set(matched.tolist())
    missing = tuple(g for i, g in enumerate(vocab) if i not in matched_set)[:_N_EXAMPLES]
    unmatched_input = tuple(names[i] for i in np.flatnonzero(targets < 0)[:_N_EXAMPLES])
    report = AlignmentReport(
        n_vocab=len(vocab),
        n_input_genes=len(names),
        n_matched=n_matched,
        matched_fraction=n_matched / len(vocab) if vocab else 0.0,
        input_matched_fraction=used.size / len(names) if names else 0.0,
        id_type=id_type,
        species=info.species,
        value_type=value_report.to_dict(),
        missing_examples=missing,
        unmatched_input_examples=unmatched_input,
        notes=tuple(notes),
        names_from="var_names" if gene_key is None else f"var[{gene_key!r}]",
    )

    needed = min(min_genes, len(vocab))
    enough = max(needed, min(_FEW_GENES, len(vocab)))  # independent of min_genes: inspection asks for 0
    if n_matched < enough and gene_key is None:
        # var_names that are no genes' names (row numbers, barcodes of another export) beside a
        # column that holds them: read that column, as gene_key would, and say so
        column = _gene_name_column(_var_frame(adata, use_raw), species, vocab_index, enough)
        if column is not None:
            aligned = align_to_vocab(adata, vocab, layer=layer, use_raw=use_raw, gene_key=column, species=species,
                                     min_genes=min_genes)
            note = (f"var_names matched {n_matched:,} of the model's genes (e.g. {', '.join(names[:3])}); gene names "
                    f"read from var[{column!r}] instead (gene_key={column!r})")
            return replace(aligned, report=replace(aligned.report, notes=(note, *aligned.report.notes)))
    if n_matched < needed:
        examples = ", ".join(names[:5]) or "none"
        raise GeneOverlapError(
            f"only {n_matched:,} of {len(vocab):,} vocabulary genes matched the input's "
            f"{len(names):,} genes (at least {needed:,} needed). Input genes look like "
            f"{info.species} {id_type} (e.g. {examples}). Pass gene_key naming a var column of "
            "gene symbols, use human symbols or Ensembl ids, or set species='mouse'/'human' if "
            "the detection is wrong"
        )

    # Sum columns onto the vocabulary with one sparse product: duplicates add up for free.
    # Only the used columns are converted, which bounds memory for wide inputs.
    columns = X[:, used] if sp.issparse(X) else np.asarray(X)[:, used]
    counts = to_count_scale(columns, value_report)
    mapping = sp.csr_matrix(
        (np.ones(used.size, dtype=np.float32), (np.arange(used.size), targets[used])),
        shape=(used.size, len(vocab)),
    )
    aligned = sp.csr_matrix(counts @ mapping, dtype=np.float32)
    aligned.sort_indices()
    logger.info("%s", report.summary().splitlines()[0])
    return AlignedData(X=aligned, obs_names=[str(n) for n in adata.obs_names], report=report, matched=matched)


def _gene_name_column(var: pd.DataFrame, species: str | None, vocab_index: dict[str, int],
                      needed: int) -> str | None:
    """The var column of text whose values match the most vocabulary genes, if it matches at
    least `needed` of them; None otherwise."""
    best, best_n = None, needed - 1
    for column in var.columns:
        values = var[column]
        if not (pd.api.types.is_object_dtype(values) or isinstance(values.dtype, pd.CategoricalDtype)
                or pd.api.types.is_string_dtype(values)):
            continue
        names = [str(v) for v in values.astype(object).tolist()]
        targets = _vocab_targets(names, None, species, vocab_index)[0]
        n = int(np.unique(targets[targets >= 0]).size)
        if n > best_n:
            best, best_n = str(column), n
    return best


def matrices_note(adata: anndata.AnnData, layer: str | None, use_raw: bool) -> str:
    """'read adata.X; the file also holds adata.raw and layers 'counts'' (what to pass instead)."""
    read = f"layer {layer!r}" if layer is not None else "adata.raw" if use_raw else "adata.X"
    others = [] if use_raw or adata.raw is None else ["adata.raw (use_raw=True)"]
    others += [f"layer {name!r} (layer={name!r})" for name in adata.layers.keys() if name != layer]
    return f"read {read}; " + (f"the file also holds {', '.join(others)}" if others
                               else "the file holds no other matrix (no adata.raw, no layers)")


def empty_cells(X: sp.csr_matrix) -> np.ndarray:
    """Cells (bool per row of an aligned matrix) with no counts on any vocabulary gene: nothing to
    answer from. Annotation leaves them unlabelled rather than let the model guess."""
    return np.asarray(X.sum(axis=1)).ravel() <= 0
