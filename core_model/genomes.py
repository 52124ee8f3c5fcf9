"""Matrices counted against a multi-species reference: one species' cells and genes from them.

Barnyard experiments (human and mouse cells mixed on purpose) and xenografts (a human tumour
grown in a mouse) are counted against a combined reference, e.g. 10x's GRCh38-and-mm10: every
gene carries its genome's prefix (GRCh38_CD3E, mm10___Cd3e) and every cell has counts on both
genomes' genes, mostly on its own. The model answers for one species at a time, so a reader
keeps one genome's genes (prefix removed, so the vocabulary matches them) and the cells whose
counts lie mostly on them; the other species' cells and the cells with counts on both (droplets
holding a cell of each, most often) are left out and counted, never answered as if they were
the chosen species.

Cell Ranger's .h5 records each feature's genome; its matrix folders do not, so there the genome
is read from the id prefix, and only where every id carries one in front of an Ensembl gene id
(a single-genome file's ids have no prefix).
"""

from __future__ import annotations

import re

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import InputFileError

# The share of a cell's counts on the chosen genome's genes above which it is kept. Reads that
# map to both genomes are discarded by the aligner, so a cell of one species has nearly all its
# counts on its own genome; cells between the two cut-offs hold both species' transcripts.
GENOME_SHARE = 0.9
_PREFIXED = re.compile(r"^([A-Za-z0-9.\-]+?)_+(.+)$")
_ENSEMBL_GENE = re.compile(r"^ENS[A-Z]*G\d{6,}")
SELECTION_KEY = "genome_selection"  # uns entry the selection is recorded under


# How combined references name their genomes (10x: GRCh38, mm10; older builds hg19, GRCm39...):
# a gene name's prefix is read as a genome only when it looks like one of these.
_GENOME_NAME = re.compile(r"^(GRC[hm]\d+|hg\d+|mm\d+)([.\-][\w.\-]*)?$", re.IGNORECASE)
# the share of gene names that must carry a genome prefix before names are read as prefixed
_PREFIXED_SHARE = 0.95


def genome_prefixes(names: list[str]) -> pd.Series | None:
    """Each name's genome prefix ('GRCh38' of 'GRCh38_CD3E', 'mm10' of 'mm10___Cd3e') when nearly
    all names carry one (an AnnData made from a combined reference's matrix, kept whole or cut to
    one genome's genes); None otherwise (a name like 'HLA_A' alone is no genome's)."""
    parts = pd.Series([str(n) for n in names], dtype=str).str.extract(_PREFIXED)
    genome = parts[0].where(parts[0].fillna("").str.match(_GENOME_NAME))
    if not len(names) or genome.notna().mean() < _PREFIXED_SHARE:
        return None
    return genome


def strip_genome_prefix(names: list[str], genome: str) -> list[str]:
    """The names without `genome`'s prefix (others as they are)."""
    prefix = re.compile(rf"^{re.escape(genome)}_+")
    return [prefix.sub("", str(n)) for n in names]


def feature_genomes(adata: anndata.AnnData) -> pd.Series | None:
    """Each feature's genome when the matrix holds several genomes, else None."""
    if "genome" in adata.var:
        genomes = adata.var["genome"].astype(str)
        return genomes if genomes.nunique() > 1 else None
    ids = pd.Series(adata.var["gene_ids"] if "gene_ids" in adata.var else adata.var_names, index=adata.var_names,
                    dtype=str)
    parts = ids.str.extract(_PREFIXED)
    if (not parts[0].isna().any() and parts[0].nunique() > 1
            and parts[1].str.match(_ENSEMBL_GENE).mean() >= 0.9):  # else prefixes of some other naming
        return parts[0]
    # an AnnData made from such a matrix may keep only the prefixed symbols (GRCh38_CD3E)
    named = genome_prefixes(list(adata.var_names))
    if named is None or named.isna().any() or named.nunique() < 2:
        return None
    return pd.Series(named.to_numpy(), index=adata.var_names, dtype=str)


def several_genomes_error(where: str, adata: anndata.AnnData, genomes: pd.Series) -> InputFileError:
    """The refusal of a multi-genome matrix read without a genome, with each genome's cells."""
    _, shares = _shares(adata, genomes)
    names = list(shares)
    cells = ", ".join(f"{g} {(s >= GENOME_SHARE).sum():,}" for g, s in shares.items())
    mixed = int((np.max(np.stack(list(shares.values())), axis=0) < GENOME_SHARE).sum())
    return InputFileError(
        f"{where} was counted against {len(names)} genomes ({', '.join(names)}): a mixed-species experiment "
        f"(barnyard or xenograft). Cells with at least {GENOME_SHARE:.0%} of their counts on one genome's genes: "
        f"{cells}; {mixed:,} others. Choose the species to answer for with genome= (command line: --genome), e.g. "
        f"genome={names[0]!r}: its genes are read with the prefix removed, and its cells are kept")


def _shares(adata: anndata.AnnData, genomes: pd.Series) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every cell's total counts, and each genome's share of them (0 for a cell without counts)."""
    X = sp.csr_matrix(adata.X)
    total = np.asarray(X.sum(axis=1)).ravel()
    shares = {}
    for genome in sorted(set(genomes)):
        on_genome = np.asarray(X[:, (genomes == genome).to_numpy()].sum(axis=1)).ravel()
        shares[genome] = np.divide(on_genome, total, out=np.zeros(len(total)), where=total > 0)
    return total, shares


def keep_genome(adata: anndata.AnnData, genomes: pd.Series, genome: str, where: str) -> anndata.AnnData:
    """The cells of `genome` over its genes (names without the prefix), as a new AnnData; what
    was left out is recorded in `uns['genome_selection']` (with a sentence under 'note') and each
    kept cell's share of counts on the genome in `obs['genome_share']`."""
    names = sorted(set(genomes))
    if genome not in names:
        raise InputFileError(f"genome {genome!r} is not in {where}; its genomes are {', '.join(names)}")
    mine = (genomes == genome).to_numpy()
    total, shares = _shares(adata, genomes)
    share = shares[genome]
    keep = share >= GENOME_SHARE
    if not keep.any():
        raise InputFileError(f"no cell of {where} has {GENOME_SHARE:.0%} of its counts on {genome}'s genes; "
                             f"choose another genome ({', '.join(names)})")
    out = adata[keep, mine].copy()
    out.var_names = strip_genome_prefix(list(out.var_names), genome)
    if "gene_ids" in out.var:
        out.var["gene_ids"] = strip_genome_prefix(list(out.var["gene_ids"]), genome)
    if "genome" in out.var:
        out.var = out.var.drop(columns="genome")
    out.var_names_make_unique()
    out.obs["genome_share"] = share[keep].astype(np.float32)
    empty = int((total == 0).sum())
    mixed = int(((share > 1 - GENOME_SHARE) & ~keep).sum())
    other = int((~keep).sum()) - mixed - empty
    out.uns[SELECTION_KEY] = {
        "genome": genome, "genomes": names, "min_share": GENOME_SHARE, "cells_kept": int(keep.sum()),
        "cells_other_genome": other, "cells_mixed": mixed, "cells_without_counts": empty,
        "note": _note(genome, int(keep.sum()), len(keep), other, mixed, empty)}
    return out


def _note(genome: str, kept: int, n: int, other: int, mixed: int, empty: int) -> str:
    left = [f"{other:,} mostly on another genome's genes" if other else "",
            f"{mixed:,} with counts on several genomes (likely cells of two species in one droplet)" if mixed else "",
            f"{empty:,} without counts" if empty else ""]
    left = [part for part in left if part]
    text = (f"{genome}: kept {kept:,} of {n:,} cells, those with at least {GENOME_SHARE:.0%} of their counts "
            "on its genes")
    return text + (f"; left out {'; '.join(left)}" if left else "")


def selection_note(adata: anndata.AnnData) -> str | None:
    """The sentence saying which cells a genome choice kept, if the cells were read with one."""
    record = adata.uns.get(SELECTION_KEY)
    return str(record["note"]) if isinstance(record, dict) and "note" in record else None
