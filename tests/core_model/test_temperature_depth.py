"""The depth term of the confidence temperature: its fit and its factors."""

from __future__ import annotations

import numpy as np
import pytest

from instructcell_agent.core_model.temperature import calibration_error, confidences, fit_temperature
from instructcell_agent.core_model.temperature_depth import DepthTerm, fit_depth_temperature


def test_factors_grow_below_the_reference_only():
    term = DepthTerm(slope=0.5, genes_ref=400)
    np.testing.assert_allclose(term.factors(np.array([1600, 400, 100, 0])), [1.0, 1.0, 2.0, 20.0])
    assert DepthTerm.from_json(term.to_json()) == term
    with pytest.raises(ValueError, match="invalid depth term"):
        DepthTerm.from_json({"slope": float("nan"), "genes_ref": 400})


def test_fit_recovers_a_temperature_that_grows_in_shallow_cells():
    rng = np.random.default_rng(0)
    n = 6000
    genes = np.exp(rng.uniform(np.log(40), np.log(2000), n))
    truth_factor = DepthTerm(0.5, 400).factors(genes)  # shallow cells are this much less sure than they say
    logits = rng.normal(0, 2.0, (n, 5))
    probs = np.exp(logits / truth_factor[:, None])
    probs /= probs.sum(1, keepdims=True)
    truth = np.array([rng.choice(5, p=p) for p in probs])
    rows, correct = list(3.0 * logits), logits.argmax(1) == truth  # reported three times too sharp
    t0, term = fit_depth_temperature(rows, correct, genes)
    assert 2.6 < t0 < 3.4 and 0.35 <= term.slope <= 0.65 and term.genes_ref in (200, 400, 800)
    shallow = genes < 150
    one_t = fit_temperature(rows, correct)
    by_depth = confidences(rows, t0 * term.factors(genes))
    assert (calibration_error(by_depth[shallow], correct[shallow])
            < calibration_error(confidences(rows, one_t)[shallow], correct[shallow]) - 0.02)
    with pytest.raises(ValueError, match="gene count per score row"):
        fit_depth_temperature(rows, correct, genes[:-1])
