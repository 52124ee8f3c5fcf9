"""The gene vocabulary: highly variable genes as human symbols, in a reproducible order."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from instructcell_agent.core_model.vocab import build_vocab, highly_variable_symbols


def _counts(seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = rng.poisson(1.0, size=(200, 60)).astype(np.float32)
    X[:, 21] = X[:, 20] = X[:, 12]  # two exact copies of one gene: tied dispersions
    adata = ad.AnnData(sp.csr_matrix(X))
    adata.var_names = [f"GENE{i}" for i in range(60)]
    return adata


def test_tied_genes_are_ordered_by_symbol_whatever_their_column_order():
    adata = _counts()
    top = highly_variable_symbols(adata, 40)
    copies = [g for g in top if g in ("GENE12", "GENE20", "GENE21")]
    assert copies == ["GENE12", "GENE20", "GENE21"]
    first = top.index("GENE12")
    assert top[first : first + 3] == copies  # tied, so side by side
    shuffled = adata[:, np.random.default_rng(1).permutation(adata.n_vars)].copy()
    assert highly_variable_symbols(shuffled, 40) == top


def test_the_vocabulary_is_the_union_in_order_of_first_appearance():
    a, b = _counts(0), _counts(1)
    b.var_names = [f"GENE{i + 30}" for i in range(60)]  # overlaps a in GENE30..GENE59
    vocab = build_vocab([a, b], 10)
    first = highly_variable_symbols(a, 10)
    assert vocab[: len(first)] == first
    assert len(vocab) == len(set(vocab))
    assert set(vocab) == set(first) | set(highly_variable_symbols(b, 10))
