"""Cell encoder: log-normalized expression -> key/value tokens -> Q-Former query outputs.

Tensors only; knows nothing about genes' names, prompts or the language model.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .config import CellEncoderConfig


class QFormerLayer(nn.Module):
    """Pre-norm block: queries self-attend, cross-attend to the cell's key/value tokens, then MLP."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim)
        )

    def forward(self, queries: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        h = self.norm_self(queries)
        queries = queries + self.self_attn(h, h, h, need_weights=False)[0]
        h = self.norm_cross(queries)
        kv = self.norm_kv(kv)
        queries = queries + self.cross_attn(h, kv, kv, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


class CellEncoder(nn.Module):
    """Expression vector (B, n_genes), already log1p-normalized -> (B, n_queries, dim)."""

    def __init__(self, cfg: CellEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # The first layer is a learned gene embedding pooled by expression: each gene contributes
        # value * embedding, so missing genes (zeros) simply do not contribute.
        self.gene_proj = nn.Linear(cfg.n_genes, cfg.hidden_dim)
        self.to_kv = nn.Sequential(
            nn.GELU(),
            nn.LayerNorm(cfg.hidden_dim),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden_dim, cfg.n_kv_tokens * cfg.dim),
        )
        self.kv_pos = nn.Parameter(torch.randn(cfg.n_kv_tokens, cfg.dim) * 0.02)
        self.queries = nn.Parameter(torch.randn(cfg.n_queries, cfg.dim) * 0.02)
        self.layers = nn.ModuleList(
            QFormerLayer(cfg.dim, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers)
        )
        self.norm_out = nn.LayerNorm(cfg.dim)
        self.skip = nn.Linear(cfg.hidden_dim, cfg.dim) if cfg.linear_skip else None

    def forward(self, expr: torch.Tensor) -> torch.Tensor:
        """`expr` dense, or a sparse COO tensor (training batches: ~90% of entries are zero)."""
        batch = expr.shape[0]
        if expr.is_sparse:
            hidden = torch.sparse.mm(expr, self.gene_proj.weight.t()) + self.gene_proj.bias
        else:
            hidden = self.gene_proj(expr)
        kv = self.to_kv(hidden).view(batch, self.cfg.n_kv_tokens, self.cfg.dim) + self.kv_pos
        queries = self.queries.unsqueeze(0).expand(batch, -1, -1)
        for layer in self.layers:
            queries = layer(queries, kv)
        if self.skip is not None:
            queries = queries + self.skip(hidden).unsqueeze(1)
        return self.norm_out(queries)


def log_normalize(counts: torch.Tensor, target_sum: float = 1e4) -> torch.Tensor:
    """Scale each cell to `target_sum` over the vocabulary's genes, then log1p.

    Normalizing over the vocabulary (not over whatever genes a file happens to hold) keeps cells
    from gene panels of different sizes on one scale.
    """
    total = counts.sum(dim=1, keepdim=True).clamp_min(1e-6)
    return torch.log1p(counts / total * target_sum)


def log_normalize_csr(counts: sp.spmatrix, target_sum: float = 1e4) -> sp.csr_matrix:
    """`log_normalize` for a scipy matrix, kept sparse (float32 CSR)."""
    counts = sp.csr_matrix(counts, dtype=np.float32)
    total = np.asarray(counts.sum(axis=1)).ravel().clip(min=1e-6)
    data = np.log1p(counts.data / np.repeat(total, np.diff(counts.indptr)) * target_sum).astype(np.float32)
    return sp.csr_matrix((data, counts.indices.copy(), counts.indptr.copy()), shape=counts.shape)


def sparse_log_normalize(counts: sp.csr_matrix, target_sum: float = 1e4) -> torch.Tensor:
    """`log_normalize` for a scipy CSR batch, returned as a sparse COO tensor."""
    coo = log_normalize_csr(counts, target_sum).tocoo()
    index = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(index, torch.from_numpy(coo.data), coo.shape, check_invariants=False).coalesce()
