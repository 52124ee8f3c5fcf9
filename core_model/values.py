"""Detect what kind of expression values a matrix holds, and bring them back to a linear scale.

Users bring raw counts, log1p of normalised data (natural log, log2 or log10), or normalised but
unlogged data (CPM/TPM). The model re-normalises every cell itself, so all it needs is a
non-negative matrix on a linear scale; :func:`to_count_scale` produces it from what
:func:`detect_value_type` found.

How the log base is found: after inverting ``log_b(1 + x)`` with the right base ``b``, a cell of
UMI data normalised to a total has non-zero values that are integer multiples of its smallest
non-zero value (one count times the cell's size factor). For other protocols (TPM) the per-cell
totals become nearly constant instead. A wrong base breaks both.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from .errors import InvalidValuesError

logger = logging.getLogger(__name__)

ValueKind = Literal["raw_counts", "log1p", "normalized"]

MAX_SAMPLE_CELLS = 2000
_CANDIDATE_BASES: tuple[float, ...] = (math.e, 2.0, 10.0)
_INT_TOL = 1e-3  # absolute tolerance for "is an integer"
_MULTIPLE_TOL = 0.02  # tolerance on value / cell minimum being an integer
_MULTIPLE_CELL_FRACTION = 0.9  # share of a cell's informative values that must be multiples
_MULTIPLE_PASS = 0.8  # share of informative cells that must pass
_TOTAL_MAD_LOG10 = 0.025  # median |log10(total / median total)| below this: "constant totals"
_LOG_MAX = 20.0  # log2(1e6) ~ 19.9: larger values cannot be log1p of normalised data
_NORMALIZED_MAX = 50.0
_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class ValueReport:
    """What :func:`detect_value_type` found.

    Attributes
    ----------
    kind
        ``"raw_counts"``, ``"log1p"`` or ``"normalized"``.
    log_base
        The base of the logarithm for ``"log1p"`` (``math.e``, 2 or 10), else None.
    assumed
        True when the kind or base is a guess that the data did not confirm.
    note
        One sentence on the evidence.
    """

    kind: ValueKind
    log_base: float | None = None
    assumed: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dictionary."""
        return asdict(self)


def _base_name(base: float) -> str:
    return "e" if base == math.e else f"{base:g}"


def _check_finite_nonnegative(X: Any) -> None:
    """Refuse negative or non-finite entries anywhere in the matrix (chunked to bound memory)."""
    if sp.issparse(X):
        # Only these formats keep exactly the stored values in `.data` (LIL/DOK/DIA do not).
        stored = X if X.format in ("csr", "csc", "coo") else X.tocsr()
        chunks = [np.asarray(stored.data)]
    else:
        arr = np.asarray(X)
        chunks = (arr[i : i + _CHUNK_ROWS] for i in range(0, max(arr.shape[0], 1), _CHUNK_ROWS))
    n_bad = n_neg = 0
    for chunk in chunks:
        if chunk.size == 0:
            continue
        kind = chunk.dtype
        if not np.issubdtype(kind, np.number) or np.issubdtype(kind, np.complexfloating):
            raise InvalidValuesError(
                f"expression values have dtype {chunk.dtype}; pass a real-valued numeric matrix"
            )
        finite = np.isfinite(chunk)
        n_bad += int(chunk.size - np.count_nonzero(finite))
        n_neg += int(np.count_nonzero(chunk[finite] < 0))
    if n_bad:
        raise InvalidValuesError(
            f"{n_bad:,} expression values are NaN or infinite; the model needs finite, "
            "non-negative values: pass raw counts (a counts layer or adata.raw) or log-normalised "
            "data without missing entries"
        )
    if n_neg:
        raise InvalidValuesError(
            f"values look z-scored or centred ({n_neg:,} negative entries); pass the un-scaled "
            "data: adata.raw or a counts layer (layer=... / use_raw=True)"
        )


def _sample_rows(X: Any, max_cells: int) -> sp.csr_matrix:
    """Evenly spaced rows (deterministic) as float64 CSR."""
    n = X.shape[0]
    if sp.issparse(X) and X.format != "csr":
        X = sp.csr_matrix(X)
    rows = np.arange(n) if n <= max_cells else np.linspace(0, n - 1, max_cells).round().astype(int)
    sub = X[rows] if sp.issparse(X) else np.asarray(X)[rows]
    out = sp.csr_matrix(sub, dtype=np.float64)
    out.eliminate_zeros()
    return out


def _inverse(data: np.ndarray, base: float | None) -> np.ndarray:
    """Undo log_base(1 + x) elementwise; None means identity."""
    if base is None:
        return data
    if base == math.e:
        return np.expm1(data)
    return np.expm1(data * math.log(base))


def _multiples_score(sample: sp.csr_matrix, values: np.ndarray) -> float | None:
    """Share of informative cells whose non-zeros are integer multiples of the cell's minimum.

    Returns None when no cell is informative (every non-zero equals the cell minimum).
    """
    counts = np.diff(sample.indptr)
    nonempty = counts > 0
    if not nonempty.any():
        return None
    starts = sample.indptr[:-1][nonempty]
    row_min = np.minimum.reduceat(values, starts)
    ratio = values / np.repeat(row_min, counts[nonempty])
    # Only ratios clearly above 1 and not huge carry information: 1 is trivially a multiple,
    # and large ratios are integers within any tolerance relative to float error.
    informative = (ratio > 1.5) & (ratio < 50)
    is_multiple = informative & (np.abs(ratio - np.round(ratio)) < _MULTIPLE_TOL)
    row_id = np.repeat(np.arange(len(starts)), counts[nonempty])
    n_inf = np.bincount(row_id, weights=informative, minlength=len(starts))
    n_ok = np.bincount(row_id, weights=is_multiple, minlength=len(starts))
    usable = n_inf >= 3
    if not usable.any():
        return None
    return float(np.mean(n_ok[usable] / n_inf[usable] >= _MULTIPLE_CELL_FRACTION))


def _total_spread(sample: sp.csr_matrix, values: np.ndarray) -> float:
    """Median absolute deviation of log10 per-cell totals (0 means identical totals)."""
    totals = np.bincount(
        np.repeat(np.arange(sample.shape[0]), np.diff(sample.indptr)),
        weights=values,
        minlength=sample.shape[0],
    )
    totals = totals[totals > 0]
    if totals.size < 2:
        return math.inf
    logs = np.log10(totals)
    return float(np.median(np.abs(logs - np.median(logs))))


def detect_value_type(X: Any, *, max_cells: int = MAX_SAMPLE_CELLS) -> ValueReport:
    """Detect whether a cells x genes matrix holds raw counts, log1p or normalised values.

    Parameters
    ----------
    X
        numpy array or scipy.sparse matrix, cells in rows.
    max_cells
        At most this many evenly spaced cells are inspected (the whole matrix is still checked
        for negative and non-finite values).

    Returns
    -------
    ValueReport

    Raises
    ------
    InvalidValuesError
        When any value is negative (scaled data) or non-finite, or the matrix is not numeric.
    """
    _check_finite_nonnegative(X)
    sample = _sample_rows(X, max_cells)
    data = sample.data
    if data.size == 0:
        return ValueReport("raw_counts", assumed=True, note="matrix has no non-zero values")
    vmax = float(data.max())
    if np.all(np.abs(data - np.round(data)) < _INT_TOL):
        return ValueReport("raw_counts", note="all values are non-negative integers")

    # Candidates that could be exponentiated without overflow; None = values already linear.
    candidates: list[float | None] = [None]
    candidates += [b for b in _CANDIDATE_BASES if vmax * math.log(b) < 700]
    inverted = {b: _inverse(data, b) for b in candidates}

    scores = {b: _multiples_score(sample, inverted[b]) for b in candidates}
    passing = [b for b in candidates if (scores[b] or 0.0) >= _MULTIPLE_PASS]
    if passing:
        best = max(passing, key=lambda b: scores[b] or 0.0)
        why = "non-zero values of each cell are integer multiples of the cell's smallest value"
        if best is None:
            return ValueReport("normalized", note=f"{why} (normalised counts, not logged)")
        note = f"after inverting log base {_base_name(best)}, {why}"
        return ValueReport("log1p", best, note=note)

    spreads = {b: _total_spread(sample, inverted[b]) for b in candidates}
    best_total = min(candidates, key=lambda b: spreads[b])
    if spreads[best_total] < _TOTAL_MAD_LOG10:
        total = float(np.median(np.bincount(
            np.repeat(np.arange(sample.shape[0]), np.diff(sample.indptr)),
            weights=inverted[best_total], minlength=sample.shape[0],
        )))
        why = f"per-cell totals are nearly constant (median {total:,.0f})"
        if best_total is None:
            return ValueReport("normalized", note=f"{why}: normalised, not logged")
        return ValueReport(
            "log1p", best_total, note=f"after inverting log base {_base_name(best_total)}, {why}"
        )

    if vmax > _NORMALIZED_MAX:
        return ValueReport(
            "normalized",
            note=f"non-integer values up to {vmax:.3g}: normalised (CPM/TPM), not logged",
        )
    if vmax > _LOG_MAX:
        return ValueReport(
            "normalized",
            assumed=True,
            note=(
                f"non-integer values up to {vmax:.3g}: too large for log1p data, "
                "assumed normalised"
            ),
        )
    # Unconfirmed log data. A natural log above log1p(1e6) would mean one gene above a million
    # per cell, which no per-cell normalisation produces, so base 2 is the likelier guess there.
    base = 2.0 if vmax > math.log1p(1e6) else math.e
    return ValueReport(
        "log1p",
        base,
        assumed=True,
        note=(
            f"non-integer values up to {vmax:.3g} look log-transformed but the base could not be "
            f"confirmed; assumed log base {_base_name(base)}. Pass raw counts (a counts layer or "
            "adata.raw) for exact results"
        ),
    )


def to_count_scale(X: Any, report: ValueReport) -> sp.csr_matrix:
    """Return the values on a linear, non-negative scale as float32 CSR.

    Raw counts and normalised values are returned unchanged (as a new matrix); log1p values
    are inverted with their base (``expm1`` for e, ``2**x - 1``, ``10**x - 1``). The input is
    never modified.

    Parameters
    ----------
    X
        numpy array or scipy.sparse matrix, cells in rows.
    report
        The result of :func:`detect_value_type` on ``X``.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32, same shape as ``X``.
    """
    out = sp.csr_matrix(X, dtype=np.float64, copy=True)
    out.eliminate_zeros()
    if report.kind == "log1p":
        base = report.log_base if report.log_base is not None else math.e
        out.data = _inverse(out.data, base)
    np.maximum(out.data, 0.0, out=out.data)
    return out.astype(np.float32)
