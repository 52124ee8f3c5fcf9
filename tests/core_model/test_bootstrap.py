"""The paired bootstrap scores macro-F1 as sklearn does and brackets real and null differences."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from instructcell_agent.core_model.bootstrap import macro_f1_weighted, paired_f1_bootstrap

LABELS = ["a", "b", "c", "never_seen"]


def _cells(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.choice(LABELS[:3], size=n, p=[0.6, 0.3, 0.1])
    noisy = np.where(rng.random(n) < 0.3, rng.choice(LABELS[:3], size=n), truth)
    return truth, noisy.astype(object)


def test_unit_weights_give_sklearn_macro_f1_with_invalid_answers_and_absent_labels():
    truth, predicted = _cells(200)
    predicted[:7] = "<invalid>"
    got = macro_f1_weighted(truth, predicted, LABELS, np.ones((1, len(truth))))[0]
    assert got == pytest.approx(f1_score(truth, predicted, labels=LABELS, average="macro", zero_division=0))


def test_integer_weights_equal_scoring_the_repeated_cells():
    truth, predicted = _cells(60, seed=1)
    counts = np.random.default_rng(2).integers(0, 3, size=60)
    repeated = np.repeat(np.arange(60), counts)
    expected = f1_score(truth[repeated], predicted[repeated], labels=LABELS, average="macro", zero_division=0)
    assert macro_f1_weighted(truth, predicted, LABELS, counts[None, :].astype(float))[0] == pytest.approx(expected)


def test_identical_predictions_differ_by_exactly_zero():
    truth, predicted = _cells(100)
    result = paired_f1_bootstrap(truth, predicted, predicted.copy(), LABELS, n_boot=200)
    assert (result.delta, result.low, result.high, result.share_a_ahead) == (0.0, 0.0, 0.0, 0.0)


def test_a_much_better_classifier_has_an_interval_above_zero_and_a_slight_edge_does_not():
    truth, noisy = _cells(300, seed=3)
    clear = paired_f1_bootstrap(truth, truth, noisy, LABELS, n_boot=500)
    assert clear.delta > 0 and clear.low > 0 and clear.share_a_ahead == 1.0
    # One more cell right out of 300: a real but tiny lead that the interval must straddle.
    wrong = np.flatnonzero(noisy != truth)
    slightly = noisy.copy()
    slightly[wrong[0]] = truth[wrong[0]]
    edge = paired_f1_bootstrap(truth, slightly, noisy, LABELS, n_boot=500)
    assert edge.delta > 0 and edge.low <= 0 < edge.high


def test_seeded_and_checked():
    truth, predicted = _cells(50)
    other = np.roll(predicted, 1)
    assert paired_f1_bootstrap(truth, predicted, other, LABELS, seed=4) == paired_f1_bootstrap(
        truth, predicted, other, LABELS, seed=4)
    with pytest.raises(ValueError, match="same non-zero number"):
        paired_f1_bootstrap(truth, predicted[:-1], other, LABELS)
