"""The count decoder: an scVI-style conditional VAE over the gene vocabulary, and the signal head.

x ~ NB(library * softmax(f(z, c)), theta(c)) (or ZINB), z ~ p(z | c), log library ~ N(m(c), s(c)).
The latent prior p(z | c) is a diagonal Gaussian predicted from the condition (generators whose
config predates the flag use N(0, I)), and the dispersion theta is per gene with a per-condition offset
(``dispersion="gene-condition"``): datasets of different depth and chemistry share one decoder.
The condition vector c comes from the language model (the signal token's last hidden state,
projected) at generation; during the first training stage it comes from a learned table with one
row per training condition, which the signal head is then taught to reproduce.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes of the generator (recorded in generator.json)."""

    n_genes: int
    lm_hidden: int
    n_conditions: int
    cond_dim: int = 32
    latent_dim: int = 16
    hidden_dim: int = 256
    likelihood: str = "nb"  # "nb" | "zinb"
    kl_weight: float = 1.0
    # Defaults of the fields below describe generators written before they existed (read back
    # from older generator.json files); new training sets them (see train.GeneratorTrainConfig).
    conditional_prior: bool = False  # z ~ N(m(c), s(c)) instead of N(0, I)
    dispersion: str = "gene"  # "gene" | "gene-condition"
    factorized_signal: bool = False  # per-field-value logits in the signal read-out (SignalHead)

    def __post_init__(self) -> None:
        if self.likelihood not in ("nb", "zinb"):
            raise ValueError(f"likelihood must be 'nb' or 'zinb', got {self.likelihood!r}")
        if self.dispersion not in ("gene", "gene-condition"):
            raise ValueError(f"dispersion must be 'gene' or 'gene-condition', got {self.dispersion!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def as_condition(raw: torch.Tensor) -> torch.Tensor:
    """Put condition vectors on a fixed-radius sphere: table rows and signal outputs then differ
    only in direction, so a small regression error cannot blow up the decoder's input scale."""
    return F.normalize(raw, dim=-1) * math.sqrt(raw.shape[-1])


def log_nb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Negative-binomial log-likelihood, mean `mu`, inverse dispersion `theta` (scVI's form)."""
    log_theta_mu = torch.log(theta + mu + EPS)
    return (theta * (torch.log(theta + EPS) - log_theta_mu) + x * (torch.log(mu + EPS) - log_theta_mu)
            + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1))


def log_zinb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, pi_logits: torch.Tensor) -> torch.Tensor:
    """Zero-inflated NB log-likelihood; `pi_logits` are the logits of the extra zeros."""
    softplus_pi = F.softplus(-pi_logits)
    log_theta_eps = torch.log(theta + EPS)
    log_theta_mu = torch.log(theta + mu + EPS)
    pi_theta_log = -pi_logits + theta * (log_theta_eps - log_theta_mu)
    case_zero = F.softplus(pi_theta_log) - softplus_pi
    case_non_zero = (-softplus_pi + pi_theta_log + x * (torch.log(mu + EPS) - log_theta_mu)
                     + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1))
    return torch.where(x < EPS, case_zero, case_non_zero)


class CountVAE(nn.Module):
    """Conditional VAE with a count likelihood and a per-condition library-size model."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        g, h, d, k = cfg.n_genes, cfg.hidden_dim, cfg.cond_dim, cfg.latent_dim
        self.encoder = nn.Sequential(nn.Linear(g + d, h), nn.LayerNorm(h), nn.ReLU(), nn.Linear(h, 2 * k))
        self.decoder = nn.Sequential(nn.Linear(k + d, h), nn.LayerNorm(h), nn.ReLU())
        self.scale_head = nn.Linear(h, g)
        self.dropout_head = nn.Linear(h, g) if cfg.likelihood == "zinb" else None
        self.log_theta = nn.Parameter(torch.zeros(g))
        self.lib_head = nn.Linear(d, 2)  # mean and log-sd of log library size
        # Why a conditional prior: with z ~ N(0, I) the latent must also carry what the (noisy)
        # condition vector does not pin down, so prior samples blur conditions together; with
        # p(z | c) the KL pulls each condition's cells onto its own prior and sampling from it
        # stays inside that condition.
        self.prior_head = nn.Linear(d, 2 * k) if cfg.conditional_prior else None
        # Per-condition dispersion offsets: restored-UMI, raw 10x v1 and Smart-seq pseudo-counts
        # are not equally over-dispersed; one theta per gene fits none of them well.
        self.theta_head = nn.Linear(d, g) if cfg.dispersion == "gene-condition" else None
        for head in (self.prior_head, self.theta_head):
            if head is not None:  # start at N(0, I) and at the shared dispersion
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gene proportions (B, G) and zero-inflation logits (or None) for latents and conditions."""
        body = self.decoder(torch.cat([z, c], -1))
        scale = torch.softmax(self.scale_head(body), -1)
        return scale, (self.dropout_head(body) if self.dropout_head is not None else None)

    def prior(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance (B, latent_dim) of p(z | c) (zeros, i.e. N(0, I), without a conditional prior)."""
        if self.prior_head is None:
            zeros = c.new_zeros(c.shape[0], self.cfg.latent_dim)
            return zeros, zeros
        mean, log_var = self.prior_head(c).chunk(2, -1)
        return mean, log_var.clamp(-6.0, 2.0)

    def theta(self, c: torch.Tensor) -> torch.Tensor:
        """NB inverse dispersion (B, G), or (1, G) when it does not depend on the condition."""
        log_theta = self.log_theta[None, :]
        if self.theta_head is not None:
            log_theta = log_theta + self.theta_head(c)
        return torch.exp(log_theta.clamp(-10.0, 12.0))

    def library(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.lib_head(c)
        return out[:, 0], out[:, 1].clamp(-4.0, 2.0)

    def loss(self, counts: torch.Tensor, c: torch.Tensor, kl_weight: float | None = None) -> dict[str, torch.Tensor]:
        """Negative ELBO per cell (mean over the batch), plus the library-size NLL.

        Parameters
        ----------
        counts
            (B, G) raw counts on the vocabulary.
        c
            (B, cond_dim) condition vectors.
        kl_weight
            Weight of the KL term (default: the config's).

        Returns
        -------
        dict
            ``loss`` (to minimise), ``nll``, ``kl``, ``lib`` (all batch means).
        """
        stats = self.encoder(torch.cat([torch.log1p(counts), c], -1))
        mean, log_var = stats.chunk(2, -1)
        log_var = log_var.clamp(-8.0, 8.0)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        scale, pi_logits = self.decode(z, c)
        lib = counts.sum(-1, keepdim=True)
        mu = lib * scale  # observed library during training, as scVI does
        theta = self.theta(c)
        ll = log_nb(counts, mu, theta) if pi_logits is None else log_zinb(counts, mu, theta, pi_logits)
        p_mean, p_log_var = self.prior(c)  # KL(q(z | x, c) || p(z | c)), both diagonal Gaussians
        kl = 0.5 * ((log_var.exp() + (mean - p_mean).pow(2)) / p_log_var.exp() - 1.0 + p_log_var - log_var).sum(-1)
        lib_mu, lib_logsd = self.library(c)
        lib_nll = 0.5 * ((torch.log(lib.squeeze(-1).clamp_min(1.0)) - lib_mu) / lib_logsd.exp()).pow(2) + lib_logsd
        nll = -ll.sum(-1)
        weight = self.cfg.kl_weight if kl_weight is None else kl_weight
        total = nll + weight * kl + lib_nll
        return {"loss": total.mean(), "nll": nll.mean(), "kl": kl.mean(), "lib": lib_nll.mean()}

    @torch.no_grad()
    def sample(self, c: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        """Integer counts (B, G) for condition vectors `c` (B, cond_dim), drawn with `rng`.

        z (from p(z | c)) and the library size come from their priors; counts from the Gamma-Poisson mixture
        (= NB) and, for ZINB, extra zeros with the decoder's probability.
        """
        n = c.shape[0]
        noise = torch.from_numpy(rng.standard_normal((n, self.cfg.latent_dim)).astype(np.float32)).to(c.device)
        p_mean, p_log_var = self.prior(c)
        z = p_mean + torch.exp(0.5 * p_log_var) * noise
        scale, pi_logits = self.decode(z, c)
        lib_mu, lib_logsd = self.library(c)
        log_lib = lib_mu + lib_logsd.exp() * torch.from_numpy(rng.standard_normal(n).astype(np.float32)).to(c.device)
        mu = (scale * log_lib.exp()[:, None]).double().cpu().numpy()
        theta = self.theta(c).double().cpu().numpy()
        rate = rng.gamma(theta, np.maximum(mu, 1e-12) / theta)
        counts = rng.poisson(rate)
        if pi_logits is not None:
            drop = rng.random(counts.shape) < torch.sigmoid(pi_logits).double().cpu().numpy()
            counts[drop] = 0
        return counts.astype(np.int64)


class SignalHead(nn.Module):
    """The learned signal token (one input embedding of the LM's width) and its read-out.

    The read-out is linear in the token's standardized final hidden state, giving one logit per
    training condition; the condition vector is the softmax-weighted mix of the stage-1 condition
    vectors. Measured on held-out phrasings with SmolLM2 states, this reaches the intended
    condition far more often (0.74 vs 0.52 nearest-condition accuracy) than regressing the vector
    directly, and keeps the decoder's input inside what it was trained on.

    With an `incidence` matrix (conditions x field values, see
    :func:`~instructcell_agent.core_model.generation.conditions.condition_incidence`) a
    condition's logit also gets the sum of one logit per field value it has (its cell type, its
    condition text, its species, ...): "IFN-beta stimulated" is then learned once from the
    prompts of every stimulated cell type instead of separately for each (cell type x condition)
    row, which few prompts per row cannot do reliably.
    """

    def __init__(self, lm_hidden: int, table: torch.Tensor, init: torch.Tensor | None = None,
                 incidence: torch.Tensor | None = None) -> None:
        super().__init__()
        start = init.detach().clone().float() if init is not None else torch.randn(lm_hidden) * 0.02
        self.signal = nn.Parameter(start)
        # The final hidden state is dominated by what all prompts share; standardizing it across
        # prompts (fixed statistics at generation) lets the read-out see what differs.
        self.norm = nn.BatchNorm1d(lm_hidden, affine=False)
        self.proj = nn.Linear(lm_hidden, table.shape[0])
        self.register_buffer("table", table.detach().clone().float())
        self.value_proj: nn.Linear | None = None
        if incidence is not None:
            if incidence.shape[0] != table.shape[0]:
                raise ValueError(f"incidence has {incidence.shape[0]} rows, the table {table.shape[0]}")
            # Derived from the condition table at load time, so not stored in the weights file.
            self.register_buffer("incidence", incidence.detach().clone().float(), persistent=False)
            self.value_proj = nn.Linear(lm_hidden, incidence.shape[1])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states (P, lm_hidden) -> one logit per training condition (P, n_conditions)."""
        return self.readout(self.norm(hidden.float()))

    def readout(self, normed: torch.Tensor) -> torch.Tensor:
        """Logits from already standardized states (training fits this on stored states)."""
        out = self.proj(normed)
        if self.value_proj is not None:
            out = out + self.value_proj(normed) @ self.incidence.T
        return out

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states of the signal token (P, lm_hidden) -> condition vectors (P, cond_dim)."""
        return as_condition(torch.softmax(self.logits(hidden), -1) @ self.table)


GENERATION_PARAMS = ("decoder.", "scale_head.", "dropout_head.", "log_theta", "lib_head.", "prior_head.", "theta_head.")


def generation_state(vae: CountVAE, head: SignalHead) -> dict[str, torch.Tensor]:
    """What the checkpoint stores, in fp16: only the parts sampling needs (the encoder is a
    training aid; leaving it out halves the file)."""
    state = {f"vae.{k}": v for k, v in vae.state_dict().items() if k.startswith(GENERATION_PARAMS)}
    state.update({f"signal.{k}": v for k, v in head.state_dict().items()})
    return {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}
