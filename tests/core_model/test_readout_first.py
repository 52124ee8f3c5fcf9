"""`fast`: cells the read-out alone is sure of take its answer; the language model reads the rest."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import instructcell_agent as ica
from synthetic import CELL_TYPES, make_counts
from instructcell_agent.core_model import readout_first
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.readout import Readout

# cells of another batch than the tiny model's training cells are atypical; that warning is not under test
pytestmark = pytest.mark.filterwarnings("ignore::instructcell_agent.api.AtypicalCellsWarning")


def _readout_probs(model, cells) -> np.ndarray:
    X = align_to_vocab(cells, model.vocab).X
    expr = model.model.normalize(torch.from_numpy(X.toarray().astype(np.float32)))
    return model.readout.log_probs(expr, list(CELL_TYPES)).exp().double().numpy()


@pytest.fixture()
def counted_rows(tiny_model, monkeypatch):
    """How many cells the language model scored, over every call."""
    seen = []
    score = tiny_model.model.score_candidates

    def counting(ctx, expr, *args, **kwargs):
        seen.append(expr.shape[0])
        return score(ctx, expr, *args, **kwargs)

    monkeypatch.setattr(tiny_model.model, "score_candidates", counting)
    return seen


def test_sure_cells_take_the_readout_answer_and_the_rest_the_full_one(tiny_model, synthetic_set, counted_rows):
    cells = synthetic_set["adata"][200:].copy()  # held-out cells of the training batch: typical of their labels
    full = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES))
    n_full = sum(counted_rows)
    counted_rows.clear()
    fast = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), fast=True)
    probs = _readout_probs(tiny_model, cells)
    # the sure cells the reference does not find atypical are the read-out's (held-out cells of the
    # training batch: nearly all of them)
    sure = (probs.max(1) >= readout_first.SURE) & ~(fast.typicality < readout_first.FAST_TYPICAL_BELOW)
    assert 0 < sure.sum() < cells.n_obs  # both kinds of cell occur, or the test tells nothing
    assert n_full == cells.n_obs and sum(counted_rows) == cells.n_obs - sure.sum()
    got = fast.probabilities.to_numpy()
    np.testing.assert_allclose(got[sure], probs[sure], rtol=1e-4, atol=1e-6)  # the read-out's own probabilities
    np.testing.assert_allclose(got[~sure], full.probabilities.to_numpy()[~sure], rtol=1e-4, atol=1e-6)
    assert list(fast.labels[sure]) == [CELL_TYPES[i] for i in probs[sure].argmax(1)]
    assert fast.provenance["fast"] == {"sure_at": readout_first.SURE,
                                       "cells_answered_by_readout_alone": int(sure.sum()),
                                       "cells_answered": cells.n_obs}
    assert "fast" not in full.provenance and full.answered_by is None
    expected = np.where(sure, "read-out alone", "language model")
    assert list(fast.answered_by) == list(expected) == list(fast.to_table()["answered_by"])
    out = fast.to_adata(cells.copy())
    assert list(out.obs["instructcell_answered_by"].astype(str)) == list(expected)


def test_cells_unlike_their_labels_training_cells_go_to_the_language_model(tiny_model, counted_rows):
    # another batch (make_counts' other seeds draw other background rates): the read-out is sure of
    # many of its cells, the reference finds nearly every one of them atypical
    cells = make_counts(48, seed=11)
    sure = _readout_probs(tiny_model, cells).max(1) >= readout_first.SURE
    assert sure.sum() > 0
    gated = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), fast=True)
    atypical = gated.typicality < readout_first.FAST_TYPICAL_BELOW
    assert (gated.typicality < -3).mean() > 0.9 and (sure & atypical).sum() > 0
    alone = int((sure & ~atypical).sum())  # the sure cells the reference does not find atypical
    assert gated.provenance["fast"]["cells_answered_by_readout_alone"] == alone
    assert sum(counted_rows) == cells.n_obs - alone
    counted_rows.clear()
    no_reference = dataclasses.replace(tiny_model, reference=None)  # nothing to judge by: sure is enough
    ungated = ica.annotate(cells, model=no_reference, candidates=list(CELL_TYPES), fast=True)
    assert ungated.provenance["fast"]["cells_answered_by_readout_alone"] == sure.sum()
    assert sum(counted_rows) == cells.n_obs - sure.sum()


def test_a_cell_left_unlabelled_was_answered_by_no_one(tiny_model, synthetic_set):
    import scipy.sparse as sp

    cells = synthetic_set["adata"][200:210].copy()
    X = cells.X.toarray()
    X[3] = 0  # no counts: left unlabelled
    cells.X = sp.csr_matrix(X)
    with pytest.warns(UserWarning, match="no counts"):
        result = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), fast=True)
    assert result.labels[3] is None and result.answered_by[3] is None
    assert all(a in ("read-out alone", "language model") for i, a in enumerate(result.answered_by) if i != 3)
    assert result.provenance["fast"]["cells_answered"] == 9


def test_free_answers_by_the_readout_skip_the_language_model_too(tiny_model, synthetic_set, counted_rows):
    cells = synthetic_set["adata"][200:].copy()
    free = ica.annotate(cells, model=tiny_model, fast=True)
    sure = ((_readout_probs(tiny_model, cells).max(1) >= readout_first.SURE)
            & ~(free.typicality < readout_first.FAST_TYPICAL_BELOW))
    assert free.provenance["fast"]["cells_answered_by_readout_alone"] == sure.sum() > 0
    assert sum(counted_rows) == cells.n_obs - sure.sum()


def test_fast_without_a_readout_answers_every_cell_by_the_language_model_and_says_why(tiny_model):
    cells = make_counts(24, seed=5)
    plain = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), readout=False)
    fast = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), readout=False, fast=True)
    np.testing.assert_array_equal(fast.probabilities.to_numpy(), plain.probabilities.to_numpy())
    record = fast.provenance["fast"]
    assert record["cells_answered_by_readout_alone"] == 0 and "does not score" in record["why_none"]
    assert any(n.startswith("fast: every cell was answered by the language model") for n in fast.provenance["notes"])


def test_the_readout_answers_alone_only_at_its_full_weight_within_one_set():
    labels = ["A", "B", "C"]
    readout = Readout(labels, torch.zeros(3, 5), torch.zeros(3))
    sets = [["A", "B"], ["B", "C"]]
    assert readout_first.why_not(readout, ["A", "B"], sets) is None
    assert "several learned sets" in readout_first.why_not(readout, ["A", "B", "C"], sets)
    assert "few of the read-out's genes" in readout_first.why_not(dataclasses.replace(readout, answer_weight=0.5),
                                                                  ["A", "B"], sets)
    assert "does not score" in readout_first.why_not(readout, ["A", "D"], sets)
    assert "does not score" in readout_first.why_not(None, ["A", "B"], sets)


def test_sure_is_the_best_label_at_the_threshold_or_above():
    at, below = np.log([readout_first.SURE, 1 - readout_first.SURE]), np.log([0.97, 0.03])
    assert readout_first.sure(np.array([at, below, below[::-1]])).tolist() == [True, False, False]
    assert readout_first.sure(np.zeros((0, 2))).shape == (0,)


def test_sure_and_typical_asks_typicality_of_the_sure_cells_only():
    logp = np.log([[0.99, 0.01], [0.01, 0.99], [0.5, 0.5], [0.99, 0.01]])
    asked = []

    def typicality(rows, labels):
        asked.append((rows.tolist(), labels))
        return np.array([-3.5, np.nan, 0.0])  # atypical; no reference for the label; typical

    assert readout_first.sure_and_typical(logp, ["A", "B"], typicality).tolist() == [False, True, False, True]
    assert asked == [([0, 1, 3], ["A", "B", "A"])]
    assert readout_first.sure_and_typical(logp, ["A", "B"], None).tolist() == [True, True, False, True]


def test_fast_does_not_combine_with_the_label_prior_correction(tiny_model):
    with pytest.raises(ValueError, match="calibrate=True and fast=True"):
        ica.annotate(make_counts(24, seed=5), model=tiny_model, candidates=list(CELL_TYPES), calibrate=True,
                     fast=True)


def test_labels_over_several_sets_go_to_the_language_model_and_the_note_names_the_sets(tiny_model, synthetic_set,
                                                                                      counted_rows):
    entry = next(iter(tiny_model.label_sets.values()))
    two_sets = {"set_a": {**entry, "labels": ["alpha", "beta"]}, "set_b": {**entry, "labels": ["gamma", "delta"]}}
    model = dataclasses.replace(tiny_model, label_sets=two_sets)
    cells = synthetic_set["adata"][200:].copy()
    free = ica.annotate(cells, model=model, fast=True)  # free answers range over both sets' labels
    record = free.provenance["fast"]
    assert record["cells_answered_by_readout_alone"] == 0 and sum(counted_rows) == cells.n_obs
    assert "several learned sets" in record["why_none"]
    assert record["why_none"].endswith("set_a: alpha, beta; set_b: gamma, delta")
    assert set(free.answered_by) == {"language model"}
