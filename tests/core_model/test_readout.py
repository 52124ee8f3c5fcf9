"""The linear gene read-out beside the language model: fitting, files, and how it joins the scores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import instructcell_agent as ica
from synthetic import CELL_TYPES, make_counts
from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.errors import CheckpointError
from instructcell_agent.core_model.readout import (
    Readout, add_readout, fit_readout, load_readout, readout_name, save_readout)


def _planted_block(n: int, labels: list[str], n_genes: int, rng: np.random.Generator, first_gene: int):
    """Log-scale expression with gene first_gene + k high in cells of label k."""
    truth = rng.integers(0, len(labels), n)
    expr = rng.exponential(0.3, (n, n_genes)).astype(np.float32)
    expr[np.arange(n), first_gene + truth] += 3.0
    return expr, np.array(labels)[truth], labels


def test_fit_learns_each_block_within_its_own_labels():
    rng = np.random.default_rng(0)
    # two sets naming "B" the same; each cell's softmax runs over its own set only
    a = _planted_block(200, ["A1", "A2", "B"], 30, rng, 0)
    b = _planted_block(200, ["B", "C1", "C2"], 30, rng, 10)
    labels, weight, bias, info = fit_readout([a, b], 30)
    assert labels == ["A1", "A2", "B", "C1", "C2"] and weight.shape == (5, 30) and bias.shape == (5,)
    readout = Readout(labels, weight, bias)
    test_a = _planted_block(100, ["A1", "A2", "B"], 30, rng, 0)
    test_b = _planted_block(100, ["B", "C1", "C2"], 30, rng, 10)
    for expr, truth, label_set in (test_a, test_b):
        logp = readout.log_probs(torch.from_numpy(expr), label_set)
        np.testing.assert_allclose(logp.exp().sum(1).numpy(), 1.0, rtol=1e-5)
        accuracy = np.mean(np.array(label_set)[logp.argmax(1).numpy()] == truth)
        assert accuracy > 0.9
    assert info["n_cells"] == 400 and info["train_accuracy"] > 0.9
    with pytest.raises(ValueError, match="outside their block"):
        fit_readout([(a[0], np.array(["A1"] * 199 + ["Z"]), a[2])], 30)


def test_a_prior_row_keeps_its_weights_on_genes_the_data_never_shows():
    rng = np.random.default_rng(0)
    expr, truth, label_set = _planted_block(200, ["A1", "A2", "B"], 30, rng, 0)
    expr[:, 20:] = 0.0  # a file without genes 20 to 29
    old = torch.linspace(-1, 1, 30)
    labels, plain, _, info = fit_readout([(expr, truth, label_set)], 30)
    _, centred, bias, centred_info = fit_readout([(expr, truth, label_set)], 30, prior={"B": (old, 0.5)})
    b = labels.index("B")
    assert torch.count_nonzero(plain[b, 20:]) == 0 and "centred_on_prior" not in info
    torch.testing.assert_close(centred[b, 20:], old[20:])  # no data there: the prior row, as it was
    assert centred_info["centred_on_prior"] == ["B"]
    # where the data speaks, it is still fitted: B's marker weighs more than in the prior row
    assert centred[b, 2] > old[2] + 0.5
    torch.testing.assert_close(centred[labels.index("A1")], plain[labels.index("A1")], atol=0.05, rtol=0)


def _readout(labels=("x", "y", "p", "q"), n_genes=3, weight=1.0) -> Readout:
    torch.manual_seed(0)
    return Readout(list(labels), torch.randn(len(labels), n_genes), torch.randn(len(labels)), weight)


def test_labels_of_one_set_add_the_weighted_readout():
    readout = _readout(weight=2.0)
    expr, scores = torch.rand(5, 3), torch.randn(5, 2)
    sets = [["x", "y"], ["p", "q"]]
    out = add_readout(scores, readout, expr, ["x", "y"], sets)
    torch.testing.assert_close(out, scores + 2.0 * readout.log_probs(expr, ["x", "y"]))
    assert readout_name(readout, ["x", "y"]) == "linear gene read-out, weight 2"
    # no read-out, a label it never learned, or weight 0: the language model's scores unchanged
    assert add_readout(scores, None, expr, ["x", "y"], sets) is scores
    assert add_readout(scores, readout, expr, ["x", "hepatocyte"], sets) is scores
    assert readout_name(readout, ["x", "hepatocyte"]) == "none"
    assert add_readout(scores, _readout(weight=0.0), expr, ["x", "y"], sets) is scores


def test_labels_of_several_sets_keep_the_set_the_language_model_chose():
    readout = _readout()
    expr = torch.rand(2, 3)
    labels, sets = ["x", "y", "p", "q"], [["x", "y"], ["p", "q"]]
    scores = torch.tensor([[0.0, -1.0, -5.0, -6.0], [-5.0, -6.0, -1.0, 0.0]])
    out = add_readout(scores, readout, expr, labels, sets)
    assert torch.isinf(out[0, 2:]).all() and torch.isinf(out[1, :2]).all()
    torch.testing.assert_close(out[0, :2], scores[0, :2] + readout.log_probs(expr[:1], ["x", "y"])[0])
    torch.testing.assert_close(out[1, 2:], scores[1, 2:] + readout.log_probs(expr[1:], ["p", "q"])[0])


def test_files_round_trip_and_refuse_mismatches(tmp_path):
    readout = _readout()
    vocab = ["G1", "G2", "G3"]
    save_readout(tmp_path, readout, vocab)
    back = load_readout(tmp_path, vocab)
    assert back.labels == readout.labels and back.answer_weight == readout.answer_weight
    torch.testing.assert_close(back.weight, readout.weight.half().float())
    assert oct((tmp_path / "readout.json").stat().st_mode & 0o777) == "0o644"
    with pytest.raises(CheckpointError, match="another gene vocabulary"):
        load_readout(tmp_path, ["G1", "G3", "G2"])
    meta = json.loads((tmp_path / "readout.json").read_text())
    meta["weights_sha256"] = "0" * 64
    (tmp_path / "readout.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match"):
        load_readout(tmp_path, vocab)
    assert load_readout(tmp_path / "nothing_here", vocab) is None


def test_mean_cells_round_trip_pool_and_follow_a_gene_reorder(tmp_path):
    readout = _readout()
    readout.mean_cells = {"a": torch.tensor([1.0, 2.0, 0.0]), "b": torch.tensor([3.0, 0.0, 0.5])}
    vocab = ["G1", "G2", "G3"]
    save_readout(tmp_path, readout, vocab)
    back = load_readout(tmp_path, vocab)
    assert list(back.mean_cells) == ["a", "b"]
    torch.testing.assert_close(back.mean_cell(["a", "b"]), torch.tensor([2.0, 1.0, 0.25]))
    assert back.mean_cell(["a", "c"]) is None and back.mean_cell([]) is None
    back.permute_genes([2, 0, 1])
    torch.testing.assert_close(back.mean_cell(["a"]), torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(back.weight, readout.weight[:, [2, 0, 1]].half().float())


def test_training_keeps_each_sets_mean_training_cell(tiny_model, planted_spec):
    from instructcell_agent.core_model.cell_encoder import log_normalize_csr
    from instructcell_agent.core_model.corpus import load_split

    part = load_split(planted_spec, tiny_model.vocab, "train")
    expected = np.asarray(log_normalize_csr(part.X, tiny_model.model.cfg.target_sum).mean(0)).ravel()
    stored = tiny_model.readout.mean_cell(["planted"]).cpu().numpy()
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=1e-3)  # stored in float16
    assert stored.max() > 0


def test_training_fits_a_readout_and_a_checkpoint_without_one_still_loads(tiny_model, tiny_checkpoint, tmp_path):
    assert tiny_model.readout is not None and set(CELL_TYPES) <= set(tiny_model.readout.labels)
    assert tiny_model.readout.info["data"][0]["name"] == "planted"
    bare = tmp_path / "bare"
    shutil.copytree(tiny_checkpoint, bare)
    for name in ("readout.json", "readout.safetensors"):
        (bare / name).unlink()
    loaded = load_checkpoint(bare)
    assert loaded.readout is None
    cells = make_counts(24, seed=5)
    result = ica.annotate(cells, model=loaded, candidates=list(CELL_TYPES))
    assert result.provenance["readout"] == "none"


def test_annotate_with_and_without_the_readout(tiny_model):
    from instructcell_agent.api import DEFAULT_INSTRUCTIONS, _prompt, _score
    from instructcell_agent.core_model.alignment import align_to_vocab

    cells = make_counts(24, seed=5)
    both = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES))
    alone = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), readout=False)
    assert both.provenance["readout"].startswith("linear gene read-out") and alone.provenance["readout"] == "none"
    template = DEFAULT_INSTRUCTIONS[("annotation", True)]
    texts = [_prompt(tiny_model, template, {}, list(CELL_TYPES))] * cells.n_obs
    X = align_to_vocab(cells, tiny_model.vocab).X
    lm, _ = _score(tiny_model, X, texts, list(CELL_TYPES), 64, True)
    expr = tiny_model.model.normalize(torch.from_numpy(X.toarray().astype(np.float32)))
    combined = lm + tiny_model.readout.log_probs(expr, list(CELL_TYPES)).numpy()
    for result, scores in ((alone, lm), (both, combined)):
        expected = np.exp(scores - scores.max(1, keepdims=True))
        np.testing.assert_allclose(result.probabilities.to_numpy(), expected / expected.sum(1, keepdims=True),
                                   rtol=1e-4, atol=1e-6)
    truth = cells.obs["cell_type"].to_numpy()
    assert np.mean(both.labels == truth) >= np.mean(alone.labels == truth) and np.mean(both.labels == truth) > 0.8


def test_free_answers_with_the_readout_are_scored_among_the_learned_labels(tiny_model):
    cells = make_counts(24, seed=5)
    free = ica.annotate(cells, model=tiny_model)
    assert free.provenance["readout"].startswith("linear gene read-out")
    assert set(free.labels) <= set(CELL_TYPES) and free.probabilities is None
    assert ((free.confidence > 0) & (free.confidence <= 1)).all()
    decoded = ica.annotate(cells, model=tiny_model, readout=False)
    assert decoded.provenance["readout"] == "none"
    truth = cells.obs["cell_type"].to_numpy()
    assert np.mean(free.labels == truth) > 0.8


def test_panel_dropped_cells_keep_a_random_share_of_their_own_counts():
    import scipy.sparse as sp

    from instructcell_agent.core_model.readout_train import panel_dropped

    counts = sp.csr_matrix(np.random.default_rng(0).poisson(2.0, (200, 500)).astype(np.float32))
    before = counts.copy()
    dropped = panel_dropped(counts, np.random.default_rng(1), low=0.1, high=0.5)
    assert (counts != before).nnz == 0  # the input is left alone
    kept = np.asarray((dropped > 0).sum(1)).ravel() / np.asarray((counts > 0).sum(1)).ravel()
    assert 0.05 < kept.min() and kept.max() < 0.6 and kept.std() > 0.05  # a share per cell, from U(0.1, 0.5)
    survivors = dropped.nonzero()
    np.testing.assert_array_equal(np.asarray(dropped[survivors]), np.asarray(counts[survivors]))
    again = panel_dropped(counts, np.random.default_rng(1), low=0.1, high=0.5)
    assert (again != dropped).nnz == 0  # seeded


def test_thinned_copies_are_the_same_cells_with_fewer_counts():
    import scipy.sparse as sp

    from instructcell_agent.core_model.readout_train import thinned_copy

    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(3.0, (200, 50)).astype(np.float32))
    thin = thinned_copy(counts, np.random.default_rng(1), low=0.05)
    assert thin.shape == counts.shape and (thin.toarray() <= counts.toarray()).all()
    kept = np.asarray(thin.sum(1)).ravel() / np.asarray(counts.sum(1)).ravel()
    assert kept.min() < 0.2 and kept.max() > 0.6  # each cell its own depth, from a twentieth up
    # a normalised set: its counts come back first, and the same draws thin them alike
    normalised = sp.csr_matrix(sp.diags(1e4 / np.asarray(counts.sum(1)).ravel()) @ counts)
    again = thinned_copy(normalised, np.random.default_rng(1), low=0.05)
    np.testing.assert_array_equal(again.toarray(), thin.toarray())


@pytest.mark.parametrize("copies", [{"panel_copies": 1}, {"hvg_copies": 1}, {"thin_copies": 1}])
def test_panel_hvg_and_thin_copies_add_cells_to_the_fit_but_not_to_the_mean_cells(tiny_model, planted_spec, copies):
    from instructcell_agent.core_model.readout_train import readout_blocks

    args = (tiny_model.label_sets, {planted_spec.name: planted_spec}, tiny_model.vocab, "train",
            tiny_model.model.cfg.target_sum)
    (plain, *_), plain_means, _ = readout_blocks(*args)
    (twice, *_), twice_means, data = readout_blocks(*args, seed=3, **copies)
    n = plain[0].shape[0]
    assert twice[0].shape == (2 * n, plain[0].shape[1]) and data[0]["n_cells"] == n
    np.testing.assert_array_equal(twice[0][:n], plain[0])  # the cells as they are come first
    np.testing.assert_array_equal(twice[1], np.concatenate([plain[1], plain[1]]))
    if "hvg_copies" not in copies:  # (the tiny vocabulary is shorter than any HVG cut: nothing cut)
        assert (twice[0][n:] > 0).sum() < (plain[0] > 0).sum()  # the copies hold fewer genes
    torch.testing.assert_close(twice_means[planted_spec.name], plain_means[planted_spec.name])


def test_hvg_cut_keeps_each_cell_s_most_variable_genes_only():
    import scipy.sparse as sp

    from instructcell_agent.core_model.gene_panels import N_TOP_RANGE, hvg_cut

    n_genes = 4000
    counts = sp.csr_matrix(np.random.default_rng(0).poisson(3.0, (50, n_genes)).astype(np.float32))
    before = counts.copy()
    order = np.random.default_rng(1).permutation(n_genes)  # a made-up variability ranking
    cut = hvg_cut(counts, order, np.random.default_rng(2))
    assert (counts != before).nnz == 0  # the input is left alone
    rank = np.empty(n_genes, dtype=np.int64)
    rank[order] = np.arange(n_genes)
    deepest = np.array([rank[cut[i].indices].max() for i in range(cut.shape[0])])
    # every cell keeps a prefix of the ranking, of a length drawn per cell within the range
    assert deepest.min() >= N_TOP_RANGE[0] - 10 and deepest.max() < N_TOP_RANGE[1] and deepest.std() > 100
    for i in range(cut.shape[0]):
        top = order[: deepest[i] + 1]
        np.testing.assert_array_equal(cut[i, top].toarray(), counts[i, top].toarray())
