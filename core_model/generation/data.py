"""Training and evaluation cells for generation: counts on the vocabulary plus each cell's condition.

The generator models counts, so log-normalized sets are brought back to counts: for UMI data
normalized to a total, one count is the cell's smallest non-zero value, so dividing by it gives
integers exactly (kang2018_pbmc_ifnb and pbmc3k_seurat pass this check). Sets where it fails
(TPM-like, e.g. Smart-seq) become rounded CP10k pseudo-counts, and say so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ..alignment import align_to_vocab
from ..datasets import DatasetSpec, load_catalog, prompt_fields, read_split, subset_by_names
from ..io import get_labels, read_h5ad, select_matrix
from ..values import detect_value_type, to_count_scale
from .conditions import Condition, ConditionRecord, ConditionTable, condition_text

log = logging.getLogger(__name__)

CONDITION_KEY = "condition"
_INTEGER_TOL = 0.02  # median |ratio - round(ratio)| below this: the ratios are counts
PSEUDO_TOTAL = 1e4


def restore_counts(adata: ad.AnnData) -> tuple[ad.AnnData, str]:
    """A copy of `adata` whose X holds integer counts, and how they were obtained.

    Parameters
    ----------
    adata
        Cells with raw counts, or log-normalized / normalized values in X.

    Returns
    -------
    (AnnData, str)
        The counts (float32 CSR, same obs/var) and ``"raw_counts"``, ``"restored"`` (exact
        counts recovered from normalized UMI data) or ``"pseudo"`` (rounded CP10k).
    """
    X, _ = select_matrix(adata)
    report = detect_value_type(X)
    if report.kind == "raw_counts":
        counts, how = sp.csr_matrix(X, dtype=np.float32), "raw_counts"
    else:
        lin = sp.csr_matrix(to_count_scale(X, report), dtype=np.float64)
        lin.eliminate_zeros()
        counts, how = _counts_from_linear(lin)
    out = ad.AnnData(counts.astype(np.float32), obs=adata.obs.copy(), var=adata.var.copy())
    return out, how


def _counts_from_linear(lin: sp.csr_matrix) -> tuple[sp.csr_matrix, str]:
    nnz = np.diff(lin.indptr)
    rows = np.flatnonzero(nnz)
    mins = np.full(lin.shape[0], 1.0)
    if rows.size:
        mins[rows] = np.minimum.reduceat(lin.data, lin.indptr[rows])
    ratio = lin.data / np.repeat(mins, nnz)
    if ratio.size and np.median(np.abs(ratio - np.round(ratio))) < _INTEGER_TOL:
        out = lin.copy()
        out.data = np.round(ratio)
        return out, "restored"
    totals = np.asarray(lin.sum(1)).ravel()
    out = sp.csr_matrix(sp.diags(PSEUDO_TOTAL / np.maximum(totals, 1e-12)) @ lin)
    out.data = np.round(out.data)
    out.eliminate_zeros()
    return out, "pseudo"


def cell_conditions(adata: ad.AnnData, spec: DatasetSpec | None, label_key: str,
                    condition_key: str | None = CONDITION_KEY) -> list[Condition]:
    """Each cell's condition: type from `label_key`, species/tissue/sequencing method from obs or
    the catalog entry, and condition text from `condition_key` (when that column exists)."""
    types = get_labels(adata, label_key)
    fields = prompt_fields(adata, spec)
    if condition_key and condition_key in adata.obs.columns:
        conds = [condition_text(v) for v in adata.obs[condition_key].astype(str)]
    else:
        conds = [""] * adata.n_obs
    return [Condition(str(t), f["species"], f["tissue"], f["sequencing_method"], c)
            for t, f, c in zip(types, fields, conds)]


@dataclass
class GenerationSplit:
    """One split of one dataset: counts on the vocabulary and per-cell conditions."""

    name: str
    X: sp.csr_matrix
    conditions: list[Condition]
    counts_from: str
    obs_names: list[str] = field(default_factory=list)


def load_generation_split(spec: DatasetSpec, vocab: Sequence[str], split: str = "train",
                          label_key: str | None = None, condition_key: str | None = CONDITION_KEY) -> GenerationSplit:
    """Read `spec`'s file, keep `split` (``"all"`` for every cell), restore counts, align to `vocab`."""
    adata = read_h5ad(spec.path)
    if spec.split_path is not None and split != "all":
        adata = subset_by_names(adata, read_split(spec.split_path)[split], split)
    counts, how = restore_counts(adata)
    if how == "pseudo":
        log.warning("%s: values are not UMI-derived; training on rounded CP10k pseudo-counts", spec.name)
    aligned = align_to_vocab(counts, vocab)
    conds = cell_conditions(adata, spec, label_key or spec.label_key, condition_key)
    return GenerationSplit(spec.name, aligned.X, conds, how, list(adata.obs_names))


@dataclass
class GenerationData:
    """All training cells stacked, with each cell's row in the condition table."""

    X: sp.csr_matrix
    cond_index: np.ndarray
    table: ConditionTable
    sources: dict[str, str]  # dataset -> how its counts were obtained


def build_generation_data(splits: Sequence[GenerationSplit]) -> GenerationData:
    """Stack splits and index their conditions (one table row per distinct normalized condition)."""
    records: list[ConditionRecord] = []
    where: dict[tuple[str, ...], int] = {}
    index = []
    for s in splits:
        for cond in s.conditions:
            key = cond.key()
            if key not in where:
                where[key] = len(records)
                records.append(ConditionRecord(cond, s.name, 0))
            records[where[key]].n_cells += 1
            index.append(where[key])
    X = sp.vstack([s.X for s in splits]).tocsr() if splits else sp.csr_matrix((0, 0))
    return GenerationData(X.astype(np.float32), np.asarray(index, dtype=np.int64), ConditionTable(records),
                          {s.name: s.counts_from for s in splits})


def default_specs(names: Sequence[str] = ()) -> list[DatasetSpec]:
    """Catalog annotation sets (all by default; kang2018_pbmc_ifnb brings cell type x condition)."""
    specs = load_catalog(tasks=("annotation",))
    if not names:
        return specs
    known = {s.name: s for s in specs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; choose from {sorted(known)}")
    return [known[n] for n in names]
