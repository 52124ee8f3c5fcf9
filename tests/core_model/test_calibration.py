"""Batch label-prior correction: removes a preference shared by all cells, keeps what differs."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import CELL_TYPES, make_counts

import instructcell_agent as ica
from instructcell_agent.core_model.calibration import MIN_CELLS, label_prior_correction
from instructcell_agent.core_model.evaluation import evaluate


def test_a_shared_label_preference_is_removed():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 10)
    signal = np.eye(4)[truth] * 2.0 + rng.normal(0, 0.3, size=(40, 4))
    biased = signal + np.array([5.0, 0.0, -1.0, 0.5])  # the LM's prior over the label strings
    assert (biased.argmax(1) == 0).all()
    assert (label_prior_correction(biased).argmax(1) == truth).all()


def test_too_few_cells_are_refused():
    with pytest.raises(ValueError, match="at least"):
        label_prior_correction(np.zeros((MIN_CELLS - 1, 3)))


def test_annotate_with_calibration_gives_probabilities_and_says_so(tiny_model):
    cells = make_counts(40, seed=5)
    result = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), calibrate=True)
    probs = result.probabilities.to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert result.provenance["calibration"] == "batch label-prior correction"
    with pytest.raises(ValueError, match="candidates"):
        ica.annotate(cells, model=tiny_model, calibrate=True)


def test_evaluate_records_the_calibration(tiny_checkpoint, synthetic_set):
    loaded = ica.load_model(tiny_checkpoint)
    own = evaluate(loaded, synthetic_set["path"], synthetic_set["split_path"], "cta", "cell_type",
                   n_instructions=4, seed=1, calibrate=True, split="train")  # enough cells asked with options
    assert own["calibration"].startswith("batch") and own["n_cells"] == 160
