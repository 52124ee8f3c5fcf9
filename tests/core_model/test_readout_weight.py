"""The read-out's weight beside the language model: fitted by label log loss, by gene coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import instructcell_agent as ica
from synthetic import CELL_TYPES, make_counts
from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.errors import CheckpointError
from instructcell_agent.core_model.readout import Readout, add_readout, load_readout, readout_name, save_readout
from instructcell_agent.core_model.readout_weight import fit_weight, label_nll, monotone_curve


def _experts(n: int, lm_noise: float, ro_noise: float, seed: int = 0):
    """Scores over 4 labels: each expert's true-label column raised by 2, plus its own noise."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, n)
    lm, ro = rng.normal(0, lm_noise, (n, 4)), rng.normal(0, ro_noise, (n, 4))
    lm[np.arange(n), truth] += 2
    ro[np.arange(n), truth] += 2
    return lm, ro - np.log(np.exp(ro).sum(1, keepdims=True)), truth


def test_the_more_reliable_expert_gets_the_larger_share():
    w_ro_good, _, loss = fit_weight([_experts(600, lm_noise=3.0, ro_noise=0.5)])
    w_lm_good, _, _ = fit_weight([_experts(600, lm_noise=0.5, ro_noise=3.0)])
    assert w_ro_good > 4 * w_lm_good
    # the fitted pair beats the plain sum it replaces
    group = _experts(600, lm_noise=3.0, ro_noise=0.5)
    assert loss < label_nll([group], 1.0, 1.0).mean()
    with pytest.raises(ValueError, match="no scored cells"):
        fit_weight([])
    with pytest.raises(ValueError, match="finite"):
        fit_weight([(np.zeros((2, 3)), np.full((2, 3), -np.inf), np.array([0, 1]))])


def test_a_few_rows_shrink_toward_the_prior_and_many_rows_hold_their_own():
    few, many = _experts(30, lm_noise=2.5, ro_noise=1.5, seed=0), _experts(3000, lm_noise=2.5, ro_noise=1.5, seed=10)
    prior = _experts(3000, lm_noise=1.5, ro_noise=2.5, seed=20)  # other sets: the language model is the better
    alone, prior_w = fit_weight([few])[0], fit_weight([prior])[0]
    shrunk = fit_weight([few], [prior], prior_rows=100)[0]
    assert prior_w < shrunk < alone
    assert fit_weight([few], [prior], prior_rows=0)[0] == alone
    # the same prior barely moves a set with thousands of rows
    assert abs(np.log(fit_weight([many], [prior], prior_rows=100)[0] / fit_weight([many])[0])) < 0.3


def test_curve_is_made_non_decreasing_in_coverage():
    assert monotone_curve([(1.0, 4.0, 100), (0.1, 0.5, 50)]) == [(0.1, 0.5), (1.0, 4.0)]
    pooled = monotone_curve([(0.05, 2.0, 10), (0.1, 0.5, 10), (1.0, 4.0, 10)])
    assert [c for c, _ in pooled] == [0.05, 0.1, 1.0]
    assert pooled[0][1] == pytest.approx(1.0) and pooled[1][1] == pytest.approx(1.0) and pooled[2][1] == 4.0


def _two_set_readout() -> Readout:
    torch.manual_seed(0)
    readout = Readout(["x", "y", "p", "q"], torch.randn(4, 4), torch.randn(4), 4.0,
                      weight_curve=[(0.2, 0.5), (1.0, 4.0)])
    # set "a" expresses genes 0 and 1, set "b" genes 2 and 3 (log1p scale)
    readout.mean_cells = {"a": torch.log1p(torch.tensor([9.0, 1.0, 0.0, 0.0])),
                          "b": torch.log1p(torch.tensor([0.0, 0.0, 5.0, 5.0]))}
    return readout


def test_each_label_set_is_weighted_at_its_own_coverage():
    readout = _two_set_readout()
    assert readout.weight_at(0.0) == 0.5 and readout.weight_at(1.0) == 4.0
    assert readout.weight_at(0.6) == pytest.approx(2.25)
    present = torch.tensor([True, False, True, True])  # a file holding 90% of set a's mean cell, all of b's
    view = readout.for_genes(present, {"a": ["x", "y"], "b": ["p", "q"]})
    assert readout.coverage(present, "a") == pytest.approx(0.9)
    assert view.weight_for(["x", "y"]) == pytest.approx(readout.weight_at(0.9)) and view.weight_for(["p"]) == 4.0
    assert readout.weight_for(["x", "y"]) == 4.0  # the stored read-out itself: its full-coverage weight
    expr, scores = torch.rand(3, 4), torch.randn(3, 2)
    sets = [["x", "y"], ["p", "q"]]
    torch.testing.assert_close(add_readout(scores, view, expr, ["x", "y"], sets),
                               scores + readout.weight_at(0.9) * readout.log_probs(expr, ["x", "y"]))
    assert readout_name(view, ["p", "q"]) == "linear gene read-out, weight 4"
    assert readout_name(view, ["x", "p"]) == f"linear gene read-out, weight {readout.weight_at(0.9):.3g} to 4 by " \
        "label set (gene coverage)"
    # without a curve the read-out is its own view
    plain = Readout(readout.labels, readout.weight, readout.bias, 2.0, mean_cells=readout.mean_cells)
    assert plain.for_genes(present, {"a": ["x", "y"]}) is plain


def test_curve_round_trips_and_a_bad_one_is_refused(tmp_path):
    readout = _two_set_readout()
    vocab = ["G1", "G2", "G3", "G4"]
    save_readout(tmp_path, readout, vocab)
    assert load_readout(tmp_path, vocab).weight_curve == [(0.2, 0.5), (1.0, 4.0)]
    meta = json.loads((tmp_path / "readout.json").read_text())
    meta["weight_curve"] = [[1.0, 4.0], [0.2, 0.5]]
    (tmp_path / "readout.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="ascending"):
        load_readout(tmp_path, vocab)


def test_annotate_weighs_the_readout_by_the_files_gene_coverage(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)
    loaded.readout.weight_curve = [(0.3, 0.25), (1.0, 3.0)]
    cells = make_counts(24, seed=5)
    whole = ica.annotate(cells, model=loaded, candidates=list(CELL_TYPES))
    assert whole.provenance["readout"] == "linear gene read-out, weight 3"
    few = cells[:, 20:].copy()  # without the planted markers, which carry much of each mean cell
    present = np.isin(loaded.vocab, few.var_names)
    coverage = loaded.readout.coverage(torch.from_numpy(present), "planted")
    assert 0.3 < coverage < 0.9
    thin = ica.annotate(few, model=loaded, candidates=list(CELL_TYPES))
    assert thin.provenance["readout"] == f"linear gene read-out, weight {loaded.readout.weight_at(coverage):.3g}"
    assert loaded.readout.weight_at(coverage) < 2.5
