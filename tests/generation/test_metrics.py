"""Generation metrics reproduce known values on constructed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from instructcell_agent.core_model.generation import metrics as M


def _clusters(seed: int, n: int = 100, gap: float = 30.0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    points = np.vstack([rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + gap])
    return points, ["a"] * n + ["b"] * n


def _counts(seed: int, n: int = 150, shift: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """Two cell types with planted markers; `shift` raises a block of genes in every cell."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(123).gamma(2.0, 1.0, size=200)
    lam = np.tile(base, (2 * n, 1))
    lam[:n, :10] += 15.0
    lam[n:, 10:20] += 15.0
    lam[:, 100:140] += shift
    return rng.poisson(lam), ["t1"] * n + ["t2"] * n


def test_identical_sets_give_zero_mmd_and_zero_delta_sknn():
    points, labels = _clusters(0)
    assert M.mmd(points, points) == 0.0
    for k in M.KS:
        assert M.sknn(points, labels, k) - M.sknn(points.copy(), labels, k) == 0.0
    ref = M.reference_metrics(points, points.copy(), labels, labels)
    assert ref["mmd"] == 0.0 and all(ref[f"delta_sknn@{k}"] == 0.0 for k in M.KS)


def test_mmd_grows_with_the_shift_between_sets():
    a, _ = _clusters(0)
    b, _ = _clusters(1)
    near, far = M.mmd(a, b), M.mmd(a, b + 3.0)
    assert 0.0 < near < far


def test_gamma_uses_the_median_25_nn_distance():
    points = np.arange(60, dtype=float)[:, None] * np.array([[1.0, 0.0]])  # points on a line, spacing 1
    dist = np.abs(points[:, None, 0] - points[None, :, 0])
    expected = np.median(np.sort(dist, 1)[:, 1:26])
    assert M.rbf_gamma(points) == pytest.approx(1.0 / expected**2)


def test_separated_clusters_give_pknn_one():
    real, labels = _clusters(0)
    gen, gen_labels = _clusters(5)
    for k in M.KS:
        assert M.pknn(real, labels, gen, gen_labels, k) == 1.0
    swapped = ["b" if l == "a" else "a" for l in gen_labels]
    assert M.pknn(real, labels, gen, swapped, 10) == 0.0


def test_sknn_is_one_for_pure_neighbourhoods():
    points, labels = _clusters(0)
    assert M.sknn(points, labels, 10) == 1.0


def test_classifier_auc_is_near_half_for_one_distribution_and_high_for_two():
    real, _ = _counts(0)
    same, _ = _counts(1)
    other, _ = _counts(2, shift=6.0)
    real_log, same_log, other_log = M.log_normalize(real), M.log_normalize(same), M.log_normalize(other)
    assert abs(M.classifier_auc(real_log, same_log, seed=0) - 0.5) < 0.1
    assert M.classifier_auc(real_log, other_log, seed=0) > 0.9


def test_gene_space_checks_on_identical_sets():
    real, labels = _counts(0)
    real_log = M.log_normalize(real)
    corr = M.mean_expression_correlation(real_log, real_log, labels, labels)
    assert corr["mean_expression_corr"] == pytest.approx(1.0)
    markers = M.marker_checks(real_log, real_log, labels, labels, [f"G{i}" for i in range(real.shape[1])])
    assert markers["marker_frac_expressing_abs_diff"] == 0.0 and markers["marker_mean_abs_diff"] == 0.0
    assert set(markers["markers"]["t1"]["genes"]) <= {f"G{i}" for i in range(10)}  # the planted markers
    assert M.nonzero_fraction_correlation(real, real) == pytest.approx(1.0)


def test_full_pipeline_identical_and_shifted():
    real, labels = _counts(0, n=80)
    same = M.generation_metrics(real, real.copy(), labels, labels, seed=0, ks=(5, 10))
    assert same["mmd"] == pytest.approx(0.0, abs=1e-9) and same["delta_sknn@5"] == pytest.approx(0.0, abs=1e-9)
    assert same["pknn@5"] > 0.95 and same["nonzero_fraction_corr"] == pytest.approx(1.0)
    other, _ = _counts(3, n=80, shift=6.0)
    shifted = M.generation_metrics(real, other, labels, labels, seed=0, ks=(5, 10))
    assert shifted["mmd"] > same["mmd"] and shifted["classifier_auc"] > 0.9
