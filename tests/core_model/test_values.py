"""Value-type detection (raw counts, log1p with its base, normalised) and inversion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from instructcell_agent.core_model.errors import InvalidValuesError
from instructcell_agent.core_model.values import ValueReport, detect_value_type, to_count_scale


def _counts(n_cells: int = 300, n_genes: int = 400, seed: int = 0) -> sp.csr_matrix:
    """Sparse UMI-like counts: gamma-Poisson genes, varying library sizes."""
    rng = np.random.default_rng(seed)
    gene_means = rng.gamma(0.3, 2.0, size=n_genes)
    size = rng.lognormal(0.0, 0.4, size=(n_cells, 1))
    counts = rng.poisson(gene_means[None, :] * size).astype(np.float32)
    return sp.csr_matrix(counts)


def _normalize(counts: sp.csr_matrix, total: float) -> sp.csr_matrix:
    sums = np.asarray(counts.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(total / sums) @ counts)


def _log(x: sp.csr_matrix, base: float) -> sp.csr_matrix:
    out = x.copy().astype(np.float32)
    out.data = (np.log1p(x.data.astype(np.float64)) / math.log(base)).astype(np.float32)
    return out


def test_raw_counts_sparse_and_dense() -> None:
    counts = _counts()
    for matrix in (counts, counts.toarray(), counts.astype(np.int64)):
        report = detect_value_type(matrix)
        assert report.kind == "raw_counts"
        assert report.log_base is None and not report.assumed


def test_log1p_base_e_of_cp10k() -> None:
    report = detect_value_type(_log(_normalize(_counts(), 1e4), math.e))
    assert report.kind == "log1p"
    assert report.log_base == pytest.approx(math.e)
    assert not report.assumed


@pytest.mark.parametrize("base", [2.0, 10.0])
def test_log1p_other_bases(base: float) -> None:
    report = detect_value_type(_log(_normalize(_counts(seed=1), 1e4), base).toarray())
    assert report.kind == "log1p"
    assert report.log_base == base
    assert not report.assumed


@pytest.mark.parametrize("base", [math.e, 2.0])
def test_log1p_of_gene_subset_found_from_count_multiples(base: float) -> None:
    # Keeping a third of the genes after normalising breaks constant totals, as in the shared
    # gene-subset sets; the integer-multiple structure of UMI counts still gives the base.
    logged = _log(_normalize(_counts(seed=5), 1e4), base)[:, ::3]
    report = detect_value_type(logged)
    assert (report.kind, report.log_base, report.assumed) == ("log1p", base, False)
    assert "multiples" in report.note


def test_log2_of_tpm_like_data_found_from_constant_totals() -> None:
    # Non-UMI data: values are not multiples of a unit, but totals are fixed (1e6).
    rng = np.random.default_rng(3)
    tpm = rng.lognormal(1.0, 1.5, size=(120, 300)) * (rng.random((120, 300)) < 0.4)
    tpm = tpm / tpm.sum(axis=1, keepdims=True) * 1e6
    report = detect_value_type(np.log2(1 + tpm))
    assert (report.kind, report.log_base, report.assumed) == ("log1p", 2.0, False)


def test_normalized_cpm_not_logged() -> None:
    report = detect_value_type(_normalize(_counts(), 1e6))
    assert report.kind == "normalized"
    assert report.log_base is None


def test_unconfirmed_log_data_is_assumed_base_e() -> None:
    rng = np.random.default_rng(4)
    x = rng.uniform(0.0, 5.0, size=(50, 60)) * (rng.random((50, 60)) < 0.5)
    report = detect_value_type(x)
    assert report.kind == "log1p" and report.log_base == pytest.approx(math.e)
    assert report.assumed
    assert "assumed" in report.note
    assert report.to_dict() == {
        "kind": "log1p", "log_base": math.e, "assumed": True, "note": report.note
    }


def test_negative_values_refused() -> None:
    x = _counts().toarray()
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1)
    with pytest.raises(InvalidValuesError, match="z-scored") as info:
        detect_value_type(x)
    assert "adata.raw" in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_refused(bad: float) -> None:
    x = _counts().toarray()
    x[5, 7] = bad
    with pytest.raises(InvalidValuesError, match="NaN or infinite"):
        detect_value_type(sp.csr_matrix(x))


def test_sampling_caps_cells_but_checks_all_for_negatives() -> None:
    x = _counts(n_cells=2500, n_genes=50).toarray()
    x[-1, 0] = -1.0
    with pytest.raises(InvalidValuesError):
        detect_value_type(x, max_cells=100)


@pytest.mark.parametrize("base", [math.e, 2.0, 10.0])
def test_to_count_scale_inverts_log(base: float) -> None:
    cp10k = _normalize(_counts(), 1e4)
    logged = _log(cp10k, base)
    before = logged.copy()
    report = detect_value_type(logged)
    out = to_count_scale(logged, report)
    assert isinstance(out, sp.csr_matrix) and out.dtype == np.float32
    np.testing.assert_allclose(out.toarray(), cp10k.toarray(), rtol=1e-3, atol=1e-3)
    assert (logged != before).nnz == 0  # input untouched


def test_to_count_scale_keeps_counts_and_normalized() -> None:
    counts = _counts()
    out = to_count_scale(counts.toarray(), ValueReport("raw_counts"))
    assert out.dtype == np.float32 and (out != counts).nnz == 0
    cpm = _normalize(counts, 1e6)
    out = to_count_scale(cpm, ValueReport("normalized"))
    np.testing.assert_allclose(out.toarray(), cpm.toarray(), rtol=1e-6)
