"""Train the generator of an existing checkpoint (`instructcell train-generator`).

Stage 1 fits the count VAE with one learned vector per training condition (cheap: no language
model). Stage 2 teaches the signal token to produce those vectors from instructions (random
training phrasings x conditions, see `signal_fit`). The decoder is thus conditioned on what the
LM makes of the instruction, and never on a lookup at generation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import LoadedModel, load_checkpoint
from ..datasets import DatasetSpec
from ..io import file_sha256
from ..lora import adapters
from .data import GenerationData, build_generation_data, default_specs, load_generation_split
from .generator import Generator, save_generator
from .signal_fit import train_signal
from .vae import CountVAE, GeneratorConfig, as_condition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeneratorTrainConfig:
    """Hyper-parameters of generator training (recorded in generator.json)."""

    datasets: tuple[str, ...] = ()  # catalog names; empty = every annotation set
    seed: int = 0
    # stage 1, passes over the training cells: 60 (the shipped generator, 10 min on 2 CPU cores) met
    # kang2018's targets in more seeds than 20 (benchmarks/EXPERIMENTS.md, 2026-12-04 late); 150 fitted
    # kang2018's per-type means worse (2026-12-07)
    epochs: int = 60
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    cond_dim: int = 32
    latent_dim: int = 16
    hidden_dim: int = 256
    likelihood: str = "nb"
    conditional_prior: bool = True  # z ~ p(z | c) (see vae.CountVAE)
    dispersion: str = "gene-condition"
    factorized_signal: bool = True  # per-field-value logits in the signal read-out (see vae.SignalHead)
    kl_warmup: float = 0.25  # fraction of stage-1 steps over which the KL weight ramps up
    table_noise: float = 0.1  # noise on condition vectors in stage 1: the decoder must tolerate
    # the small error with which the signal token reproduces them
    # Prompt counts of the shipped generator: more prompts made the signal token understand more
    # requests, held-out and unseen phrasings alike (benchmarks/results/generator_signal_prompts.md)
    signal_tune_prompts: int = 1152  # stage 2a: prompts for the signal embedding (gradients through the LM)
    signal_chunk: int = 48
    signal_inner_steps: int = 8
    signal_lr: float = 3e-3
    signal_prompts: int = 4608  # stage 2b: prompts whose signal states fit the read-out
    signal_fit_epochs: int = 400
    check_phrasings: int = 1  # per condition, held-out (valid) phrasings for the end-of-training check
    lm_adapters: bool = False  # read instructions through the LoRA adapters? They are tuned for
    # annotation and drug response; without them the signal token understood more generation
    # requests (benchmarks/results/single_vs_multi.md), and the generator survives a retrained cell model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train_generator(checkpoint: str | Path | LoadedModel, cfg: GeneratorTrainConfig, *,
                    specs: Sequence[DatasetSpec] | None = None, command: str | None = None,
                    show_progress: bool = True) -> Path:
    """Train a generator for a checkpoint and add its files to the checkpoint directory.

    Parameters
    ----------
    checkpoint
        A checkpoint directory, or an already loaded checkpoint (must have a path).
    cfg
        Training settings.
    specs
        Datasets to train on (default: the catalog sets named in `cfg.datasets`, else all
        annotation sets); their ``label_key`` gives the cell type, obs ``condition`` (if any) the
        condition text.
    command
        The command line, recorded for provenance.
    show_progress
        Show progress bars.

    Returns
    -------
    pathlib.Path
        The written generator.json.
    """
    start = time.perf_counter()
    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load_checkpoint(checkpoint)
    if loaded.path is None:
        raise ValueError("the checkpoint has no directory to add the generator to")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    specs = list(specs) if specs else default_specs(cfg.datasets)
    data = build_generation_data([load_generation_split(s, loaded.vocab, "train") for s in specs])
    log.info("generator training: %d cells, %d conditions", data.X.shape[0], len(data.table))
    gcfg = GeneratorConfig(n_genes=len(loaded.vocab), lm_hidden=loaded.model.backbone.hidden_size,
                           n_conditions=len(data.table), cond_dim=cfg.cond_dim, latent_dim=cfg.latent_dim,
                           hidden_dim=cfg.hidden_dim, likelihood=cfg.likelihood,
                           conditional_prior=cfg.conditional_prior, dispersion=cfg.dispersion,
                           factorized_signal=cfg.factorized_signal)
    vae, table, vae_report = _train_vae(gcfg, data, cfg, show_progress)
    with adapters(cfg.lm_adapters):
        head, signal_report = train_signal(loaded.model, table, data.table, cfg, show_progress)
    info = _info(cfg, specs, data, command, {**vae_report, **signal_report}, time.perf_counter() - start)
    gen = Generator(gcfg, vae.eval(), head.eval(), data.table, info, lm_adapters=cfg.lm_adapters)
    return save_generator(loaded, gen)


def _sampling_weights(cond_index: np.ndarray) -> np.ndarray:
    """Per-cell sampling probability ~ count^-0.5 of its condition, so rare conditions are seen."""
    counts = np.bincount(cond_index)
    weight = counts[cond_index] ** -0.5
    return weight / weight.sum()


def _train_vae(gcfg: GeneratorConfig, data: GenerationData, cfg: GeneratorTrainConfig,
               show: bool) -> tuple[CountVAE, torch.Tensor, dict[str, Any]]:
    vae = CountVAE(gcfg)
    log_lib = np.log(np.maximum(np.asarray(data.X.sum(1)).ravel(), 1.0))
    with torch.no_grad():  # start the library model at the data's overall level, not at e^0 = 1 count
        vae.lib_head.weight.mul_(0.01)
        vae.lib_head.bias.copy_(torch.tensor([log_lib.mean(), np.log(log_lib.std() + 1e-3)]))
    table = nn.Parameter(torch.randn(len(data.table), gcfg.cond_dim))
    params = list(vae.parameters()) + [table]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, int(cfg.epochs * data.X.shape[0] / cfg.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(cfg.seed)
    probs = _sampling_weights(data.cond_index)
    warm = max(1.0, cfg.kl_warmup * steps)
    vae.train()
    last: dict[str, float] = {}
    bar = tqdm(range(steps), desc="generator stage 1 (VAE)", disable=not show)
    for step in bar:
        rows = rng.choice(len(probs), size=cfg.batch_size, p=probs)
        counts = torch.from_numpy(data.X[rows].toarray())
        c = as_condition(table[torch.from_numpy(data.cond_index[rows])])
        c = c + cfg.table_noise * torch.randn_like(c)
        out = vae.loss(counts, c, kl_weight=gcfg.kl_weight * min(1.0, step / warm))
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        last = {k: v.item() for k, v in out.items()}
        if step % 20 == 0:
            bar.set_postfix(nll=f"{last['nll']:.0f}", kl=f"{last['kl']:.1f}")
    vae.eval()
    report = {"vae_steps": steps, **{f"vae_final_{k}": v for k, v in last.items()}}
    return vae, as_condition(table.detach()), report


def _info(cfg: GeneratorTrainConfig, specs: Sequence[DatasetSpec], data: GenerationData, command: str | None,
          report: dict[str, Any], seconds: float) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("instructcell-agent")
    except PackageNotFoundError:
        pkg = "unknown"
    return {
        "package_version": pkg, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command, "train_config": cfg.to_dict(), "train_seconds": round(seconds, 1),
        "data": [{"name": s.name, "file": s.path.name, "sha256": file_sha256(s.path), "split": "train",
                  "counts_from": data.sources.get(s.name)} for s in specs],
        "n_cells": int(data.X.shape[0]), "report": report,
    }
