"""Confidence temperatures: the fit, the calibration error, the file, and how answers use them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import instructcell_agent as ica
from synthetic import CELL_TYPES, make_counts
from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.errors import CheckpointError
from instructcell_agent.core_model.evaluation import evaluate
from instructcell_agent.core_model.temperature import (
    FILE, StaleTemperatureWarning, calibration_error, confidences, fit_temperature, load_temperatures,
    rebind_temperatures, save_temperatures, summary)
from instructcell_agent.core_model.io import file_sha256


def test_fit_recovers_the_factor_scores_are_overconfident_by():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (6000, 5))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    truth = np.array([rng.choice(5, p=p) for p in probs])
    correct = logits.argmax(1) == truth
    t = fit_temperature(list(3.0 * logits), correct)  # the model reports scores three times too sharp
    assert 2.6 < t < 3.4
    before = calibration_error(confidences(list(3.0 * logits)), correct)
    after = calibration_error(confidences(list(3.0 * logits), t), correct)
    assert after < 0.03 < before


def test_calibration_error_and_confidences_on_known_values():
    assert calibration_error(np.array([0.9, 0.9, 0.9, 0.9]), np.array([1, 1, 1, 0])) == pytest.approx(0.15)
    # two bins: 0.6 (right, right) and 0.95 (wrong): (2 * 0.4 + 1 * 0.95) / 3
    assert calibration_error(np.array([0.6, 0.6, 0.95]), np.array([1, 1, 0])) == pytest.approx(1.75 / 3)
    rows = [np.array([0.0, np.log(3.0), -np.inf]), np.array([2.0, 2.0])]
    np.testing.assert_allclose(confidences(rows), [0.75, 0.5])  # -inf (a label ruled out) takes no share
    np.testing.assert_allclose(confidences(rows, temperature=np.log(3.0) / np.log(2.0)), [2 / 3, 0.5])
    low = summary([np.array([0.0, np.log(3.0)]), np.zeros(3), np.zeros(4)], [True, False, True], 1.0)
    assert low["share_below_half"] == pytest.approx(2 / 3)  # confidences 0.75, 1/3, 1/4
    assert low["accuracy_below_half"] == 0.5 and low["accuracy_from_half"] == 1.0


def test_the_file_binds_to_the_weights_it_was_fitted_with(tiny_checkpoint, tmp_path):
    root = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, root)
    assert load_temperatures(root) == {}
    save_temperatures(root, {"readout": 2.5, "lm_alone": 1.5}, {"command": "test"})
    assert load_temperatures(root) == {"readout": 2.5, "lm_alone": 1.5}
    assert load_checkpoint(root).temperatures == {"readout": 2.5, "lm_alone": 1.5}
    with pytest.raises(ValueError, match="modes"):
        save_temperatures(root, {"chat": 2.0}, {})
    old = file_sha256(root / "weights.safetensors")
    with open(root / "weights.safetensors", "ab") as fh:  # another weights file (a retrained model copied in)
        fh.write(b" ")
    with pytest.warns(StaleTemperatureWarning, match="another weights file"):
        assert load_temperatures(root) == {}
    assert rebind_temperatures(root, "0" * 64) is False  # fitted with neither: stays stale
    assert rebind_temperatures(root, old) is True  # the same weights, stored anew
    assert load_temperatures(root) == {"readout": 2.5, "lm_alone": 1.5}
    meta = json.loads((root / FILE).read_text())
    meta["temperature"]["readout"] = -1.0
    (root / FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="invalid temperatures"):
        load_temperatures(root)


def test_answers_keep_their_labels_and_confidences_soften(tiny_checkpoint, tmp_path):
    root = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, root)
    loaded = load_checkpoint(root)
    cells = make_counts(24, seed=5)
    plain = ica.annotate(cells, model=loaded, candidates=list(CELL_TYPES))
    free_plain = ica.annotate(cells, model=loaded)
    loaded.temperatures = {"readout": 4.0, "lm_alone": 1.0}
    warm = ica.annotate(cells, model=loaded, candidates=list(CELL_TYPES))
    free_warm = ica.annotate(cells, model=loaded)
    assert list(warm.labels) == list(plain.labels) and list(free_warm.labels) == list(free_plain.labels)
    scores = np.log(plain.probabilities.to_numpy()) / 4.0
    expected = np.exp(scores - scores.max(1, keepdims=True))
    np.testing.assert_allclose(warm.probabilities.to_numpy(), expected / expected.sum(1, keepdims=True), rtol=1e-4)
    assert (warm.confidence <= plain.confidence + 1e-9).all() and (warm.confidence < plain.confidence).any()
    assert (free_warm.confidence < free_plain.confidence).any()
    assert warm.provenance["confidence_temperature"] == 4.0
    alone = ica.annotate(cells, model=loaded, candidates=list(CELL_TYPES), readout=False)
    assert alone.provenance["confidence_temperature"] == 1.0  # the LM-alone mode has its own
    loaded.temperatures = {"readout": 4.0, "lm_alone": 2.0}
    assert loaded.temperature(loaded.readout, list(CELL_TYPES)) == 4.0
    assert loaded.temperature(None, list(CELL_TYPES)) == 2.0
    # strings the checkpoint never learned: no read-out column, and no temperature fitted for them
    assert loaded.temperature(loaded.readout, ["nephron", "podocyte"]) == 1.0
    with pytest.warns(UserWarning):
        text = ica.annotate(cells, model=loaded, candidates=["nephron", "podocyte"])
    assert text.provenance["confidence_temperature"] == 1.0


def test_calibrate_fits_both_modes_and_evaluate_reports_the_confidences(tiny_checkpoint, planted_spec, tmp_path):
    from instructcell_agent.core_model.temperature_fit import calibrate_checkpoint

    root = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, root)
    readout_before = (root / "readout.safetensors").read_bytes()
    # the tiny model answers every planted valid cell right with its read-out: min_wrong=0 lets the
    # fit run (the default refuses, as the next test shows)
    record = calibrate_checkpoint(root, [planted_spec], command="test", min_wrong=0)
    assert set(record["temperature"]) == {"readout", "lm_alone"}
    assert (root / "readout.safetensors").read_bytes() == readout_before  # the refit for the fit stays in memory
    assert record["fitted_on"]["readout_fitted_on"] == "train"
    fit = record["fit_report"]["readout"]["pooled"]
    assert fit["fitted"]["log_loss"] <= fit["unscaled"]["log_loss"] + 1e-12
    assert fit["unscaled"]["n_cells"] == 40  # every valid cell: with options scored, without chosen by scoring
    loaded = load_checkpoint(root)
    assert loaded.temperatures == record["temperature"]
    result = evaluate(loaded, planted_spec.path, planted_spec.split_path, "cta", "cell_type", split="valid")
    conf = result["confidence"]
    assert conf["temperature"] == record["temperature"]["readout"] and conf["n_cells"] == 40
    assert 0 < conf["mean_confidence"] <= 1 and 0 <= conf["calibration_error"] <= 1


def test_calibrate_stores_no_temperature_where_too_few_answers_were_wrong(tiny_checkpoint, planted_spec, tmp_path):
    from instructcell_agent.core_model.temperature_fit import calibrate_checkpoint

    root = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, root)
    free = calibrate_checkpoint(root, [planted_spec], command="test", min_wrong=0)
    record = calibrate_checkpoint(root, [planted_spec], command="test")
    wrong = {mode: r["pooled"]["unscaled"]["n_cells"] * (1 - r["pooled"]["unscaled"]["accuracy"])
             for mode, r in free["fit_report"].items()}
    for mode, n_wrong in wrong.items():
        if round(n_wrong) < 5:  # a fit on these would only sharpen the scores without limit
            assert mode not in record["temperature"] and "too few" in record["fit_report"][mode]["skipped"]
        else:
            assert record["temperature"][mode] == free["temperature"][mode]
    assert any(round(n) < 5 for n in wrong.values())  # the read-out answers every valid cell right
    assert load_checkpoint(root).temperatures == record["temperature"]


def test_a_depth_term_softens_shallow_cells_more_and_keeps_every_answer(tiny_checkpoint, tmp_path):
    from instructcell_agent.core_model.alignment import align_to_vocab
    from instructcell_agent.core_model.temperature import DepthTerm, load_depth_terms

    root = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, root)
    loaded = load_checkpoint(root)
    cells = make_counts(24, seed=5)
    plain = ica.annotate(cells, model=loaded, candidates=list(CELL_TYPES))
    genes = np.asarray((align_to_vocab(cells, loaded.vocab).X > 0).sum(1)).ravel()
    term = DepthTerm(slope=1.0, genes_ref=float(np.median(genes)))  # the shallower half gets a higher temperature
    loaded.temperatures, loaded.temperature_depth = {"readout": 2.0}, {"readout": term}
    deep = ica.annotate(cells, model=loaded, candidates=list(CELL_TYPES))
    assert list(deep.labels) == list(plain.labels)
    per_cell = 2.0 * term.factors(genes)
    assert (per_cell > 2.0).any() and (per_cell == 2.0).any()
    scores = np.log(plain.probabilities.to_numpy()) / per_cell[:, None]
    expected = np.exp(scores - scores.max(1, keepdims=True))
    np.testing.assert_allclose(deep.probabilities.to_numpy(), expected / expected.sum(1, keepdims=True), rtol=1e-4)
    assert deep.provenance["confidence_depth_term"] == term.to_json()
    assert loaded.depth_term(None, list(CELL_TYPES)) is None  # the LM-alone mode has no temperature here
    # stored with the temperatures, bound to the same weights
    save_temperatures(root, {"readout": 2.0}, {"command": "test"}, {"readout": term})
    assert load_depth_terms(root) == {"readout": term} and load_checkpoint(root).temperature_depth == {"readout": term}


def test_calibrate_with_depths_fits_a_depth_term_on_thinned_cells(tiny_checkpoint, planted_spec, tmp_path):
    from instructcell_agent.core_model.temperature_fit import calibrate_checkpoint

    root = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, root)
    with pytest.raises(ValueError, match="fractions"):
        calibrate_checkpoint(root, [planted_spec], command="test", min_wrong=0, depths=[0.5, 2.0])
    record = calibrate_checkpoint(root, [planted_spec], command="test", min_wrong=0, depths=[0.3, 0.1])
    assert record["fitted_on"]["depths"] == [1.0, 0.3, 0.1]
    fit = record["fit_report"]["readout"]
    # the thinned copies were read too: three times the cells, each depth on its own in the record
    assert fit["pooled"]["unscaled"]["n_cells"] == 120 and len(fit["per_set"]) == 3
    assert any("at 0.1 of its counts" in name for name in fit["per_set"])
    assert fit["pooled"]["fitted"]["log_loss"] <= fit["pooled"]["unscaled"]["log_loss"] + 1e-12
    loaded = load_checkpoint(root)
    assert {m: t.to_json() for m, t in loaded.temperature_depth.items()} == record["depth"]
    assert set(record["depth"]) == set(record["temperature"])
