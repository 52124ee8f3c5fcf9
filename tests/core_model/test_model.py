"""The cell language model's prompt mechanics: scoring, caching, padding, generation, gradients."""

from __future__ import annotations

import inspect

import pytest
import torch

from instructcell_agent.core_model.backbone import load_backbone
from instructcell_agent.core_model.config import BackboneConfig, CellEncoderConfig, ModelConfig
from instructcell_agent.core_model.model import CellLanguageModel
from instructcell_agent.core_model.tries import decisive_tokens

CANDIDATES = ["alpha", "beta cell", "gamma-delta T"]


@pytest.fixture(scope="module")
def model() -> CellLanguageModel:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=CellEncoderConfig(n_genes=30, hidden_dim=32, dim=32, n_heads=4, dropout=0.0),
                      backbone=BackboneConfig(kind="tiny"))
    return CellLanguageModel(cfg, load_backbone(cfg.backbone)).eval()


def _expr(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return model.normalize(torch.rand(n, 30, generator=g) * 5)


def test_candidate_scores_equal_teacher_forced_log_likelihood(model):
    expr = _expr(model)
    prefix = [model.prefix_text("Which cell type is this?")]
    with torch.no_grad():
        scores = model.score_candidates(model.start(prefix, torch.zeros(3, dtype=torch.long)), expr, CANDIDATES)
        for j, cand in enumerate(CANDIDATES):
            logp, _ = model.answer_logprob(model.start(prefix, torch.zeros(3, dtype=torch.long)), expr, [cand] * 3)
            torch.testing.assert_close(scores[:, j], logp.sum(1))


def test_candidates_sharing_a_start_are_scored_as_if_alone(model):
    # Shared starts run once in the packed trie; a candidate that is a prefix of another must
    # still get its own end-of-answer term. Each score must equal its teacher-forced likelihood.
    shared = ["alpha", "alpha beta", "alpha beta gamma", "alpha delta", "beta"]
    trie = model._candidate_trie(tuple(shared))
    assert trie.tokens.numel() < model._candidate_trie(tuple(shared), share_prefixes=False).tokens.numel()
    expr = _expr(model, 2, seed=5)
    prefix = [model.prefix_text("Which cell type is this?")]
    ctx = lambda: model.start(prefix, torch.zeros(2, dtype=torch.long))  # noqa: E731
    with torch.no_grad():
        scores = model.score_candidates(ctx(), expr, shared)
        torch.testing.assert_close(scores, model.score_candidates(ctx(), expr, shared, share_prefixes=False))
        for j, cand in enumerate(shared):
            logp, _ = model.answer_logprob(model.start(prefix, torch.zeros(2, dtype=torch.long)), expr, [cand] * 2)
            torch.testing.assert_close(scores[:, j], logp.sum(1))


def test_bfloat16_backbone_gives_float32_scores_close_to_float32(model):
    expr = _expr(model)
    prefix = [model.prefix_text("Type?")]
    with torch.no_grad():
        full = model.score_candidates(model.start(prefix, torch.zeros(3, dtype=torch.long)), expr, CANDIDATES)
        with model.lm_dtype_as(torch.bfloat16):
            assert model.precision == "bfloat16"
            half = model.score_candidates(model.start(prefix, torch.zeros(3, dtype=torch.long)), expr, CANDIDATES)
        again = model.score_candidates(model.start(prefix, torch.zeros(3, dtype=torch.long)), expr, CANDIDATES)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.1, rtol=0.05)
    assert not torch.equal(half, full)  # it really ran in bfloat16
    assert model.precision == "float32" and torch.equal(again, full)  # the exact float32 weights are back


def test_a_backbone_rounded_to_bfloat16_is_not_silently_cast_back(tiny_checkpoint):
    from instructcell_agent.core_model.checkpoint import load_checkpoint

    loaded = load_checkpoint(tiny_checkpoint, precision="bfloat16")
    with pytest.raises(ValueError, match="rounded"):
        loaded.model.use_lm_dtype(torch.float32)
    assert loaded.model.precision == "bfloat16"


def test_left_padding_of_mixed_prefixes_changes_nothing(model):
    expr = _expr(model)
    short, long = model.prefix_text("Type?"), model.prefix_text("Which cell type is this cell, in your view?")
    with torch.no_grad():
        mixed = model.score_candidates(model.start([short, long], torch.tensor([0, 1, 0])), expr, CANDIDATES)
        alone = model.score_candidates(model.start([short], torch.zeros(3, dtype=torch.long)), expr, CANDIDATES)
    torch.testing.assert_close(mixed[[0, 2]], alone[[0, 2]], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(mixed[1], alone[1])


def test_prompts_sharing_an_opening_read_it_once_with_the_same_scores(model):
    # Options listed in a different order per cell: the prompts share the system prompt and the
    # instruction's first words, which are read once; each prompt must score as if read alone.
    orders = ("alpha, beta cell, gamma-delta T", "beta cell, alpha, gamma-delta T", "gamma-delta T, alpha")
    texts = [model.prefix_text(f"Which of these is the cell: {order}?") for order in orders]
    expr = _expr(model, 3, seed=7)
    model.forget_prompts()
    with torch.no_grad():
        together = model.score_candidates(model.start(texts, torch.tensor([0, 1, 2])), expr, CANDIDATES)
        assert len(model._head_memo) == 1  # the shared opening was read once, and kept
        for i, text in enumerate(texts):
            alone = model.score_candidates(model.start([text], torch.zeros(1, dtype=torch.long)), expr[i : i + 1],
                                           CANDIDATES)
            torch.testing.assert_close(together[i : i + 1], alone, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(together[0], together[1])  # the remainders were read


def test_forget_prompts_rereads_prompts_after_the_adapters_change():
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=CellEncoderConfig(n_genes=30, hidden_dim=32, dim=32, n_heads=4, dropout=0.0),
                      backbone=BackboneConfig(kind="tiny"), lora_rank=4)
    model = CellLanguageModel(cfg, load_backbone(cfg.backbone)).eval()
    prefix, expr = [model.prefix_text("Type?")], _expr(model, 1)
    score = lambda: model.score_candidates(model.start(prefix, torch.zeros(1, dtype=torch.long)), expr,  # noqa: E731
                                           CANDIDATES)
    with torch.no_grad():
        before = score()
        for name, param in model.lm.named_parameters():
            if name.endswith("lora_b"):  # zero at start: the adapters now change the prompt's reading
                param.add_(0.5)
        stale = score()  # memoised keys/values, read with the old adapters, plus new adapters on the rest
        model.forget_prompts()
        fresh = score()
    assert not torch.allclose(fresh, stale)
    assert not torch.allclose(fresh, before)


def test_scores_depend_on_the_cell(model):
    prefix = [model.prefix_text("Type?")]
    with torch.no_grad():
        a = model.score_candidates(model.start(prefix, torch.zeros(1, dtype=torch.long)), _expr(model, 1, 1), CANDIDATES)
        b = model.score_candidates(model.start(prefix, torch.zeros(1, dtype=torch.long)), _expr(model, 1, 2), CANDIDATES)
    assert not torch.allclose(a, b)


def test_a_context_that_read_a_cell_refuses_another(model):
    # Its cache holds the first cell and what followed (here the answer): a second cell read into
    # it would be scored after them, which is not the question asked.
    prefix = [model.prefix_text("Type?")]
    expr = _expr(model, 2, 0)
    with torch.no_grad():
        ctx = model.start(prefix, torch.zeros(2, dtype=torch.long))
        model.answer_logprob(ctx, expr, ["alpha", "beta"])
        with pytest.raises(ValueError, match="already holds a cell"):
            model.score_candidates(ctx, expr, CANDIDATES)
        with pytest.raises(ValueError, match="already holds a cell"):
            model.score_candidates(ctx.repeat_interleave(2), torch.cat([expr, expr]), CANDIDATES)
        model.score_candidates(model.start(prefix, torch.zeros(2, dtype=torch.long)), expr, CANDIDATES)  # fresh: fine


def test_generate_returns_one_text_and_logprob_per_cell(model):
    expr = _expr(model, 4)
    texts, logp = model.generate(model.start([model.prefix_text("Type?")], torch.zeros(4, dtype=torch.long)), expr,
                                 max_new_tokens=5, return_logprob=True)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    assert logp.shape == (4,) and (logp <= 0).all()


def test_constrained_generation_names_only_allowed_answers_with_their_own_logprob(model):
    # An untrained tiny LM spells garbage when free; constrained, it can only name an allowed
    # answer (including one that is a prefix of another), and the reported log-probability is
    # exactly the teacher-forced likelihood of that answer.
    allowed = CANDIDATES + ["alpha beta"]
    expr = _expr(model, 6, seed=3)
    ctx = lambda: model.start([model.prefix_text("Type?")], torch.zeros(6, dtype=torch.long))  # noqa: E731
    texts, logp = model.generate(ctx(), expr, max_new_tokens=2, return_logprob=True, allowed=allowed)
    assert set(texts) <= set(allowed)
    expected = model.score_candidates(ctx(), expr, allowed)
    for row, text in enumerate(texts):
        assert logp[row] == pytest.approx(expected[row, allowed.index(text)].item(), abs=1e-4)
    free = model.generate(ctx(), expr, max_new_tokens=4)
    assert not set(free) <= set(allowed)  # the constraint, not luck, keeps the answers valid


def test_decisive_tokens_stop_where_a_sequence_is_told_apart():
    # 'alpha' / 'alpha beta' differ only at alpha's end token; 'gamma' is decided by its first.
    end = 0
    seqs = [[5, 6, end], [5, 6, 7, end], [5, 8, 9, end], [3, 4, end]]
    assert decisive_tokens(seqs) == [[5, 6, end], [5, 6, 7], [5, 8], [3]]
    assert decisive_tokens([[5, end]]) == [[5]]


def test_decisive_scores_are_the_log_likelihood_of_the_decisive_tokens(model):
    expr = _expr(model)
    prefix = [model.prefix_text("Which cell type is this?")]
    candidates = CANDIDATES + ["alpha beta"]
    ctx = lambda: model.start(prefix, torch.zeros(3, dtype=torch.long))  # noqa: E731
    with torch.no_grad():
        decisive = model.score_candidates(ctx(), expr, candidates, decisive=True)
        full = model.score_candidates(ctx(), expr, candidates)
        seqs = [model.encode_text(c) + [model.end_token_id] for c in candidates]
        for j, (seq, cut) in enumerate(zip(seqs, decisive_tokens(seqs))):
            logp, mask = model.answer_logprob(ctx(), expr, [candidates[j]] * 3)
            torch.testing.assert_close(decisive[:, j], logp[:, : len(cut)].sum(1))
            # the untrained tiny LM is far from sure of the later tokens, so the scores differ
            if len(cut) < len(seq):
                assert (decisive[:, j] > full[:, j]).all()


def test_decisive_generation_gives_the_full_runs_texts(model):
    # Once one allowed answer is left its remaining tokens are forced: same texts, and the
    # log-probability is the decisive tokens' (never below the full answer's). The rows' lists
    # are decided at different steps (first token for 'beta cell' / 'gamma', the end of 'alpha').
    lists = [["alpha", "alpha beta"], ["beta cell", "gamma"], CANDIDATES + ["alpha beta", "gamma"]] * 2
    expr = _expr(model, 6, seed=3)
    ctx = lambda n=6: model.start([model.prefix_text("Type?")], torch.zeros(n, dtype=torch.long))  # noqa: E731
    texts, logp = model.generate(ctx(), expr, return_logprob=True, allowed=lists)
    fast, fast_logp = model.generate(ctx(), expr, return_logprob=True, allowed=lists, decisive=True)
    assert fast == texts
    for row, (text, allowed) in enumerate(zip(fast, lists)):
        expected = model.score_candidates(ctx(1), expr[row : row + 1], allowed, decisive=True)
        assert fast_logp[row] == pytest.approx(expected[0, allowed.index(text)].item(), abs=1e-4)
        assert fast_logp[row] >= logp[row] - 1e-5
    assert (fast_logp > logp + 1e-3).any()  # some tokens were forced, not scored


def test_per_cell_allowed_lists_keep_each_cell_within_its_own_answers(model):
    # Two contexts in one batch: each row may only name answers from its own list, and a row's
    # answer is the one it would get decoded alone with that list.
    expr = _expr(model, 6, seed=4)
    ctx = lambda n: model.start([model.prefix_text("Type?")], torch.zeros(n, dtype=torch.long))  # noqa: E731
    first, second = ["alpha", "beta cell"], ["gamma", "alpha beta"]
    lists = [first, second, first, second, second, first]
    texts = model.generate(ctx(6), expr, max_new_tokens=2, allowed=lists)
    for row, (text, allowed) in enumerate(zip(texts, lists)):
        assert text in allowed
        assert model.generate(ctx(1), expr[row : row + 1], max_new_tokens=2, allowed=allowed) == [text]
    with pytest.raises(ValueError, match="2 lists for 6 cells"):
        model.generate(ctx(6), expr, allowed=[first, second])


def test_gradients_reach_the_cell_encoder_through_the_frozen_lm(model):
    expr = _expr(model, 2).requires_grad_(True)
    logp, mask = model.answer_logprob(model.start([model.prefix_text("Type?")], torch.zeros(2, dtype=torch.long)),
                                      expr, ["alpha", "beta cell"])
    (-logp.sum()).backward()
    assert expr.grad is not None and expr.grad.abs().sum() > 0
    assert model.encoder.gene_proj.weight.grad is not None
    assert all(p.grad is None for p in model.lm.parameters())
    model.zero_grad()


def test_sparse_and_dense_inputs_encode_identically(model):
    expr = _expr(model, 3)
    expr[expr < 1.0] = 0
    torch.testing.assert_close(model.encoder(expr.to_sparse()), model.encoder(expr))


def test_trainable_state_excludes_the_backbone(model):
    keys = model.trainable_state_dict()
    assert keys and not any(k.startswith("lm.") for k in keys)


def test_backbone_receives_only_arguments_its_forward_declares(model, monkeypatch):
    # transformers renames arguments between releases (5.24: past_key_values -> cache); a name
    # the signature lacks is swallowed by **kwargs with a warning, and dropped later.
    declared = inspect.signature(model.lm.model.forward).parameters
    original, passed = model.lm.model.forward, []

    def spy(*args, **kwargs):
        passed.append(set(kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(model.lm.model, "forward", spy)
    expr = _expr(model)
    prefix = [model.prefix_text("Which cell type is this?")]
    with torch.no_grad():
        model.score_candidates(model.start(prefix, torch.zeros(3, dtype=torch.long)), expr, CANDIDATES)
        model.generate(model.start(prefix, torch.zeros(3, dtype=torch.long)), expr, max_new_tokens=2)
    assert len(passed) >= 4
    assert all(name in declared for names in passed for name in names), passed
