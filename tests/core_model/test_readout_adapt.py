"""The read-out re-centred for a file lacking genes it was fitted on (core_model/readout_adapt.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from instructcell_agent.core_model.cell_encoder import log_normalize_csr
from instructcell_agent.core_model.readout import Readout, SetShift, fit_readout, readout_name
from instructcell_agent.core_model.readout_adapt import MAX_SCALE_KEY, _fit, adapted
from instructcell_agent.core_model.reference import fit_reference
from synthetic import CELL_TYPES, N_GENES, make_counts

TRAIN, HELD = make_counts(400, seed=3), make_counts(200, seed=4)
SETS = {"planted": list(CELL_TYPES)}


def _expr(counts) -> np.ndarray:
    return log_normalize_csr(sp.csr_matrix(counts), 1e4).toarray()


@pytest.fixture(scope="module")
def fitted():
    truth = TRAIN.obs["cell_type"].to_numpy().astype(str)
    labels, weight, bias, info = fit_readout([(_expr(TRAIN.X), truth, SETS["planted"])], N_GENES)
    mean = torch.from_numpy(_expr(TRAIN.X).mean(0)).float()
    readout = Readout(labels, weight, bias, 1.0, info, {"planted": mean})
    reference = fit_reference([("planted", TRAIN.X, truth)], N_GENES, per_label=40, seed=0)
    return readout, reference


def _log_loss(readout: Readout, present: np.ndarray) -> tuple[float, float]:
    """Log loss and accuracy of the held-out cells read through the `present` genes only."""
    counts = sp.csr_matrix(HELD.X).multiply(present.astype(np.float32)[None, :]).tocsr()
    logp = readout.log_probs(torch.from_numpy(_expr(counts)).float(), SETS["planted"]).numpy()
    truth = np.array([CELL_TYPES.index(t) for t in HELD.obs["cell_type"]])
    return float(-logp[np.arange(len(truth)), truth].mean()), float((logp.argmax(1) == truth).mean())


def test_a_file_with_every_gene_is_read_as_fitted(fitted):
    readout, reference = fitted
    whole = adapted(readout, reference, np.ones(N_GENES, dtype=bool), SETS, 1e4)
    assert whole.set_shifts["planted"].shift == {} and whole.set_shifts["planted"].scale == 1.0
    x = torch.from_numpy(_expr(HELD.X)).float()
    assert torch.equal(whole.log_probs(x, SETS["planted"]), readout.log_probs(x, SETS["planted"]))
    assert "re-centred" not in readout_name(whole, SETS["planted"])


def test_a_file_lacking_genes_is_read_better_re_centred(fitted):
    readout, reference = fitted
    # the background genes carry most counts; a panel without most of them and without half of
    # the first type's markers moves every label's logit by its own amount
    present = np.zeros(N_GENES, dtype=bool)
    present[:16] = True
    present[[0, 1]] = False
    present[16::5] = True
    plain_loss, plain_acc = _log_loss(readout, present)
    shifted = adapted(readout, reference, present, SETS, 1e4)
    loss, acc = _log_loss(shifted, present)
    assert shifted.set_shifts["planted"].shift  # a shift was fitted
    assert loss < 0.8 * plain_loss and acc >= plain_acc
    assert "re-centred" in readout_name(shifted, SETS["planted"])
    # the original read-out is left as it was (answers for other files)
    assert readout.set_shifts == {}


def test_labels_several_sets_spell_alike_take_the_best_covered_sets_shift():
    readout = Readout(["a", "b", "c"], torch.zeros(3, 4), torch.zeros(3))
    readout.set_shifts = {
        "one": SetShift(frozenset({"a", "b"}), 0.4, 2.0, {"a": 1.0, "b": 0.0}),
        "two": SetShift(frozenset({"a", "b", "c"}), 0.9, 1.0, {}),
    }
    assert readout.shift_for(["a", "b"]).coverage == 0.9  # the whole set wins
    assert readout.shift_for(["c"]).coverage == 0.9
    readout.set_shifts["two"] = SetShift(frozenset({"a", "b", "c"}), 0.1, 1.0, {})
    got = readout.log_probs(torch.zeros(1, 4), ["a", "b"])
    assert torch.allclose(got.exp(), torch.softmax(torch.tensor([[1.0, 0.0]]), 1))
    assert readout.shift_for(["d"]) is None


def test_a_checkpoint_re_centres_only_when_its_read_out_says_so(tiny_model):
    from instructcell_agent.core_model.readout_adapt import ADAPT_KEY

    shipped = tiny_model.readout
    assert shipped is not None and tiny_model.reference is not None
    half = np.arange(0, len(tiny_model.vocab), 2)
    assert tiny_model.readout_for(half).set_shifts == {}  # off unless the read-out says so
    try:
        tiny_model.readout = dataclasses.replace(shipped, info={**shipped.info, ADAPT_KEY: True})
        first = tiny_model.readout_for(half)
        assert any(s.shift for s in first.set_shifts.values())
        assert tiny_model.readout_for(half).set_shifts is first.set_shifts  # one fit per gene panel
        every = tiny_model.readout_for(np.arange(len(tiny_model.vocab)))
        assert all(not s.shift and s.scale == 1.0 for s in every.set_shifts.values())
    finally:
        tiny_model.readout = shipped
        tiny_model._adapted.clear()


def test_fast_keeps_to_files_holding_most_of_the_read_outs_genes():
    from instructcell_agent.core_model.readout_first import FAST_MIN_COVERAGE, why_not

    readout = Readout(["a", "b"], torch.zeros(2, 4), torch.zeros(2))
    assert why_not(readout, ["a", "b"], [["a", "b"]]) is None
    readout.set_shifts = {"s": SetShift(frozenset({"a", "b"}), FAST_MIN_COVERAGE / 2, 1.2, {"a": 0.5, "b": 0.0})}
    assert "coverage" in why_not(readout, ["a", "b"], [["a", "b"]])
    readout.set_shifts = {"s": SetShift(frozenset({"a", "b"}), 0.9, 1.2, {"a": 0.5, "b": 0.0})}
    assert why_not(readout, ["a", "b"], [["a", "b"]]) is None


def test_a_scale_ceiling_holds_the_fit_there_and_refits_the_offsets():
    g = torch.Generator().manual_seed(0)
    whole = torch.randn(200, 4, generator=g, dtype=torch.float64) * 3
    through = whole * 0.5 + 0.3 * torch.randn(200, 4, generator=g, dtype=torch.float64)  # a cut file: flatter

    def loss(scale, shift):
        target = torch.softmax(whole, 1)
        return float(-(target * torch.log_softmax(through * scale + torch.tensor(shift), 1)).sum(1).mean())

    free_scale, free_shift = _fit(whole, through)
    assert free_scale > 1.5  # the free fit sharpens the flatter scores back
    held_scale, held_shift = _fit(whole, through, max_scale=1.0)
    assert held_scale == 1.0
    assert loss(free_scale, free_shift) <= loss(held_scale, held_shift) <= loss(1.0, [0.0] * 4)
    assert _fit(whole, through, max_scale=10.0) == (free_scale, free_shift)  # a ceiling above it changes nothing


def test_a_read_out_with_a_scale_ceiling_keeps_every_set_under_it(fitted):
    readout, reference = fitted
    present = np.zeros(N_GENES, dtype=bool)
    present[:16] = True
    present[16::5] = True
    free = adapted(readout, reference, present, SETS, 1e4).set_shifts["planted"]
    capped = dataclasses.replace(readout, info={**readout.info, MAX_SCALE_KEY: free.scale / 2})
    held = adapted(capped, reference, present, SETS, 1e4).set_shifts["planted"]
    assert held.scale == pytest.approx(free.scale / 2) and held.shift != free.shift
