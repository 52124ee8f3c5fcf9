"""The read-out's weight capped by each cell's detected genes (its depth curve)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import instructcell_agent as ica
from synthetic import CELL_TYPES, make_counts
from instructcell_agent.core_model import readout_first
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.errors import CheckpointError
from instructcell_agent.core_model.readout import (Readout, SetDepthCurve, add_readout, load_readout, readout_name,
                                                  save_readout)

pytestmark = pytest.mark.filterwarnings("ignore::instructcell_agent.api.AtypicalCellsWarning")


def _readout(depth_curve) -> Readout:
    torch.manual_seed(0)
    return Readout(["x", "y", "p", "q"], torch.randn(4, 6), torch.randn(4), 2.0, depth_curve=depth_curve)


def test_caps_follow_the_curve_in_log_genes_and_hold_flat_beyond_its_ends():
    readout = _readout([(10.0, 0.1), (1000.0, 1.0)])
    caps = readout.depth_caps(np.array([0, 1, 10, 100, 1000, 5000]))
    np.testing.assert_allclose(caps, [0.1, 0.1, 0.1, 0.55, 1.0, 1.0])  # 100 is halfway in log scale
    assert np.isinf(_readout([]).depth_caps(np.array([3, 300]))).all()


def test_a_shallow_cell_weighs_the_readout_less_and_a_deep_one_keeps_its_weight():
    readout = _readout([(2.0, 0.25), (5.0, 1.0)])
    expr = torch.zeros(3, 6)
    expr[0, :1] = 2.0  # one gene detected: capped at 0.25
    expr[1, :6] = 1.0  # six: past the curve's top, capped at 1 (below the set's weight, 2)
    expr[2, :3] = 1.5  # three: log-interpolated between the points
    scores = torch.randn(3, 2, dtype=torch.float64)
    got = add_readout(scores, readout, expr, ["x", "y"], [["x", "y"], ["p", "q"]])
    three = 0.25 + 0.75 * np.log(3 / 2) / np.log(5 / 2)
    expected = scores + torch.tensor([[0.25], [1.0], [three]], dtype=torch.float64) * \
        readout.log_probs(expr, ["x", "y"]).double()
    torch.testing.assert_close(got, expected)
    # across label sets each set re-ranks with the same per-cell weight
    across = add_readout(scores.clone(), readout, expr, ["x", "p"], [["x", "y"], ["p", "q"]])
    assert torch.isfinite(across).sum(1).eq(1).all()
    assert readout_name(readout, ["x", "y"]) == "linear gene read-out, weight 2, less for shallow cells"
    assert readout_name(_readout([]), ["x", "y"]) == "linear gene read-out, weight 2"


def test_depth_curve_round_trips_and_a_bad_one_is_refused(tmp_path):
    vocab = [f"G{i}" for i in range(6)]
    save_readout(tmp_path, _readout([(20.0, 0.1), (200.0, 1.0)]), vocab)
    assert load_readout(tmp_path, vocab).depth_curve == [(20.0, 0.1), (200.0, 1.0)]
    meta = json.loads((tmp_path / "readout.json").read_text())
    for bad in ([[200.0, 1.0], [20.0, 0.1]], [[0.0, 0.1], [20.0, 1.0]], [[20.0, -1.0]]):
        meta["depth_curve"] = bad
        (tmp_path / "readout.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match="depth curve"):
            load_readout(tmp_path, vocab)


def test_a_set_with_its_own_curve_uses_it_and_other_labels_the_pooled_one():
    readout = _readout([(2.0, 0.1), (5.0, 1.0)])
    readout.set_depth_curves = {"xy": SetDepthCurve(frozenset({"x", "y"}), [(2.0, 0.8), (5.0, 1.0)])}
    expr = torch.zeros(2, 6)
    expr[0, :2] = 1.0  # two genes: 0.8 by the set's curve, 0.1 by the pooled one
    expr[1, :6] = 1.0
    scores = torch.randn(2, 2, dtype=torch.float64)
    for labels, cap in ((["x", "y"], 0.8), (["p", "q"], 0.1)):
        got = add_readout(scores, readout, expr, labels, [["x", "y"], ["p", "q"]])
        weights = torch.tensor([[cap], [1.0]], dtype=torch.float64)
        torch.testing.assert_close(got, scores + weights * readout.log_probs(expr, labels).double())
    # free answers across sets: the set the language model's best label picks re-ranks with its own curve
    np.testing.assert_allclose(readout.depth_caps(np.array([2]), ["x"]), [0.8])
    # labels two sets' curves hold alike tell no set apart: the pooled curve
    readout.set_depth_curves["xyp"] = SetDepthCurve(frozenset({"x", "y", "p"}), [(2.0, 0.5), (5.0, 1.0)])
    np.testing.assert_allclose(readout.depth_caps(np.array([2]), ["x", "y"]), [0.1])
    np.testing.assert_allclose(readout.depth_caps(np.array([2]), ["x", "p"]), [0.5])
    readout.depth_curve = []
    assert readout_name(readout, ["x", "y"]).endswith("less for shallow cells")


def test_set_depth_curves_round_trip_and_a_bad_one_is_refused(tmp_path):
    vocab = [f"G{i}" for i in range(6)]
    readout = _readout([(20.0, 0.1), (200.0, 1.0)])
    readout.set_depth_curves = {"xy": SetDepthCurve(frozenset({"x", "y"}), [(20.0, 0.3), (200.0, 1.0)])}
    save_readout(tmp_path, readout, vocab)
    assert load_readout(tmp_path, vocab).set_depth_curves == readout.set_depth_curves
    meta = json.loads((tmp_path / "readout.json").read_text())
    for bad in ({"xy": {"labels": ["x", "y"], "points": [[20.0, 1.0], [2.0, 0.1]]}}, {"xy": {"labels": ["x"]}},
                [[20.0, 0.3]]):
        meta["set_depth_curves"] = bad
        (tmp_path / "readout.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match="depth curve"):
            load_readout(tmp_path, vocab)


def _shallow(cells, keep: int, seed: int = 0):
    """Each cell keeping only `keep` of its non-zero genes (a shallow cell, as far as detection goes)."""
    out = cells.copy()
    X = out.X.toarray() if hasattr(out.X, "toarray") else np.array(out.X)
    rng = np.random.default_rng(seed)
    for row in X:
        nz = np.flatnonzero(row)
        row[rng.permutation(nz)[keep:]] = 0
    out.X = X
    return out


def test_annotate_leans_on_the_language_model_for_cells_the_curve_caps(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)
    cells = _shallow(make_counts(12, seed=3), keep=8)
    candidates = list(CELL_TYPES)
    plain = ica.annotate(cells, model=loaded, candidates=candidates)
    loaded.readout.depth_curve = [(1.0, 0.0), (10_000.0, 0.0)]  # every cell capped at nothing
    capped = ica.annotate(cells, model=loaded, candidates=candidates)
    alone = ica.annotate(cells, model=loaded, candidates=candidates, readout=False)
    assert capped.provenance["readout"].endswith("less for shallow cells")
    # weight 0 everywhere: the language model's ranking, which the read-out had changed
    def scores(result, temperature):  # log-probabilities back to the answer scores, up to a constant per cell
        z = np.log(result.probabilities.to_numpy()) * temperature
        return z - z.max(1, keepdims=True)

    np.testing.assert_allclose(scores(capped, loaded.temperature(loaded.readout, candidates)),
                               scores(alone, loaded.temperature(None, candidates)), atol=1e-3)
    assert not np.allclose(plain.probabilities.to_numpy(), capped.probabilities.to_numpy(), atol=1e-3)


def test_fast_judges_a_capped_cell_by_the_readout_at_its_weight(tiny_model, synthetic_set, monkeypatch):
    cells = synthetic_set["adata"][200:].copy()
    aligned = align_to_vocab(cells, tiny_model.vocab)
    genes = np.asarray((aligned.X > 0).sum(1)).ravel()
    cut = float(np.floor(np.median(genes)))  # whole genes: no cell falls between the curve's two points
    monkeypatch.setattr(tiny_model.readout, "depth_curve", [(cut, 0.6), (cut + 1, 1.0)])
    labels = list(CELL_TYPES)
    weights = readout_first.cell_weights(tiny_model.readout, aligned.X, labels)
    np.testing.assert_allclose(weights, np.where(genes > cut, 1.0, 0.6))
    full = readout_first.readout_log_probs(tiny_model.model, aligned.X, tiny_model.readout, labels)
    weighed = readout_first.at_weight(full, weights)
    # a capped cell the read-out is sure of at weight 1 need not be at its own weight: the language model reads it
    assert (readout_first.sure(full) & ~readout_first.sure(weighed)).any()
    fast = ica.annotate(cells, model=tiny_model, candidates=labels, fast=True)
    alone = np.asarray(fast.answered_by) == "read-out alone"
    best = [labels[i] for i in weighed.argmax(1)]
    typical = ~(tiny_model.reference.typicality(aligned.X, aligned.matched, best) < readout_first.FAST_TYPICAL_BELOW)
    np.testing.assert_array_equal(alone, readout_first.sure(weighed) & typical)
    assert alone[weights < 1].any() and alone[weights == 1].any()
    # the answer's probabilities are the read-out's at the weight it has in the product
    np.testing.assert_allclose(np.log(fast.probabilities.to_numpy()[alone]), weighed[alone], atol=1e-5)


def test_at_weight_is_unchanged_at_one_uniform_at_zero_and_stays_normalized():
    logp = np.log([[0.98, 0.015, 0.005], [0.5, 0.3, 0.2]])
    np.testing.assert_allclose(readout_first.at_weight(logp, np.ones(2)), logp, atol=1e-12)
    np.testing.assert_allclose(np.exp(readout_first.at_weight(logp, np.zeros(2))), 1 / 3)
    half = readout_first.at_weight(logp, np.array([0.5, 0.5]))
    np.testing.assert_allclose(np.exp(half).sum(1), 1.0)
    assert half.argmax(1).tolist() == logp.argmax(1).tolist() and half[0, 0] < logp[0, 0]
    assert readout_first.at_weight(np.zeros((0, 3)), np.zeros(0)).shape == (0, 3)
