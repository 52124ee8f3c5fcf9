"""The count VAE's conditional prior and per-condition dispersion, and reading older generators."""

from __future__ import annotations

import numpy as np
import torch

from instructcell_agent.core_model.generation.vae import CountVAE, GeneratorConfig, SignalHead, generation_state


def _cfg(**kw) -> GeneratorConfig:
    return GeneratorConfig(n_genes=20, lm_hidden=8, n_conditions=3, cond_dim=4, latent_dim=2, hidden_dim=8, **kw)


def test_older_generator_configs_keep_the_standard_prior_and_gene_dispersion():
    vae = CountVAE(_cfg())  # what a generator.json without the newer fields describes
    assert vae.prior_head is None and vae.theta_head is None
    c = torch.randn(5, 4)
    mean, log_var = vae.prior(c)
    assert torch.equal(mean, torch.zeros(5, 2)) and torch.equal(log_var, torch.zeros(5, 2))
    assert vae.theta(c).shape == (1, 20)


def test_conditional_prior_moves_samples_and_dispersion_depends_on_condition():
    vae = CountVAE(_cfg(conditional_prior=True, dispersion="gene-condition")).eval()
    c = torch.randn(64, 4)
    with torch.no_grad():
        vae.prior_head.bias.copy_(torch.tensor([3.0, -3.0, -6.0, -6.0]))  # mean (3, -3), tiny variance
        vae.theta_head.weight.normal_()
    mean, log_var = vae.prior(c)
    assert torch.allclose(mean, torch.tensor([3.0, -3.0]).expand(64, 2))
    assert vae.theta(c).shape == (64, 20) and not torch.allclose(vae.theta(c)[0], vae.theta(c)[1])
    counts = vae.sample(c, np.random.default_rng(0))
    assert counts.shape == (64, 20) and (counts >= 0).all()
    out = vae.loss(torch.from_numpy(counts).float(), c)
    assert all(torch.isfinite(v) for v in out.values())


def test_stored_state_holds_the_new_heads_but_not_the_encoder():
    vae = CountVAE(_cfg(conditional_prior=True, dispersion="gene-condition"))
    head = SignalHead(8, torch.randn(3, 4), incidence=torch.eye(3))
    state = generation_state(vae, head)
    assert any(k.startswith("vae.prior_head.") for k in state) and any(k.startswith("vae.theta_head.") for k in state)
    assert any(k.startswith("signal.value_proj.") for k in state)
    assert not any(k.startswith("vae.encoder.") or k == "signal.incidence" for k in state)


def test_factorized_read_out_adds_field_value_logits():
    head = SignalHead(8, torch.randn(3, 4), incidence=torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])).eval()
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.zero_()
        head.value_proj.weight.zero_()
        head.value_proj.bias.copy_(torch.tensor([2.0, -1.0]))
    logits = head.logits(torch.randn(5, 8))
    assert torch.allclose(logits, torch.tensor([2.0, 2.0, -1.0]).expand(5, 3))
