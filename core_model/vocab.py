"""Build the model's gene vocabulary: the union of each training set's highly variable genes,
named as human symbols (mouse genes through their orthologs)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np

from .genes import to_human_symbols
from .io import select_matrix
from .values import detect_value_type, to_count_scale

log = logging.getLogger(__name__)


def highly_variable_symbols(adata: ad.AnnData, n_top: int) -> list[str]:
    """Top `n_top` highly variable genes of `adata` as human symbols, most variable first.

    Uses scanpy's dispersion-based ('seurat') ranking on log1p(CP10k) because half of the shared
    sets arrive log-normalized, where count-based flavours do not apply.
    """
    X, names = select_matrix(adata)
    counts = to_count_scale(X, detect_value_type(X))
    symbols, _ = to_human_symbols(names)
    keep = [i for i, s in enumerate(symbols) if s]
    if not keep:
        return []
    tmp = ad.AnnData(counts[:, keep].astype(np.float32))
    tmp.var_names = [f"g{i}" for i in range(len(keep))]
    tmp.var["symbol"] = [symbols[i] for i in keep]
    if tmp.n_vars <= n_top:
        return _dedupe(symbols[i] for i in keep)
    import scanpy as sc  # here, not at the top: only building a vocabulary needs it (slow to import)

    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.pp.highly_variable_genes(tmp, flavor="seurat", n_top_genes=n_top)
    # Genes with equal dispersion are common (46 ties in zheng2017's top 2,000): break ties by
    # symbol with a stable sort, or the order, and so the encoder's input layout, depends on
    # the pandas version's sorting algorithm.
    ranked = tmp.var.sort_values(["dispersions_norm", "symbol"], ascending=[False, True], kind="mergesort")
    ranked = ranked[ranked["highly_variable"]]
    return _dedupe(ranked["symbol"].astype(str))


def build_vocab(train_sets: Sequence[ad.AnnData], n_top: int) -> list[str]:
    """Union of the sets' HVGs in order of first appearance (deterministic for fixed inputs)."""
    vocab: list[str] = []
    seen: set[str] = set()
    for adata in train_sets:
        for gene in highly_variable_symbols(adata, n_top):
            if gene not in seen:
                seen.add(gene)
                vocab.append(gene)
    log.info("gene vocabulary: %d genes from %d sets", len(vocab), len(train_sets))
    return vocab


def _dedupe(genes) -> list[str]:
    out, seen = [], set()
    for g in genes:
        if g not in seen:
            seen.add(g)
            out.append(g)
    return out


def read_vocab(path: str | os.PathLike) -> list[str]:
    """A gene vocabulary from a gene_vocab.json file or a checkpoint directory holding one."""
    source = Path(path)
    return json.loads((source / "gene_vocab.json" if source.is_dir() else source).read_text())
