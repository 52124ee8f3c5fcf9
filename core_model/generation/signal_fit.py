"""Stage 2 of generator training: make the signal token reproduce each condition's vector.

Reading a prompt with the frozen LM is the expensive part (a 135M-parameter forward over ~80
tokens on CPU), so every prompt is read once:

a. tune: batches of prompts are read once, then several gradient steps run on the signal token
   alone over the cached prompts; gradients pass through the LM into the signal embedding and
   the projection (the embedding learns what to attend to in the instruction);
b. fit: with the embedding fixed, the signal token's final hidden state is computed for many
   more prompts, and the standardization and linear projection are fitted on those stored
   states for many epochs at no further LM cost.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..instructions import load_bank
from ..model import CellLanguageModel
from .conditions import ConditionTable, compose_instruction, condition_incidence, phrasings_for
from .signal import read_prompts, signal_states_of
from .vae import SignalHead

log = logging.getLogger(__name__)


class SignalSettings(Protocol):
    seed: int
    signal_tune_prompts: int
    signal_chunk: int
    signal_inner_steps: int
    signal_lr: float
    signal_prompts: int
    signal_fit_epochs: int
    check_phrasings: int
    factorized_signal: bool


def make_prompts(table: ConditionTable, bank: Sequence[str], n: int, rng: random.Random) -> list[tuple[int, str]]:
    """`n` (condition row, instruction) pairs; conditions in turn, so each is learned alike."""
    out = []
    for i in range(n):
        row = i % len(table) if i < len(table) else rng.randrange(len(table))
        cond = table.records[row].condition
        out.append((row, compose_instruction(rng.choice(phrasings_for(cond, bank)), cond)))
    rng.shuffle(out)
    return out


def train_signal(model: CellLanguageModel, targets: torch.Tensor, table: ConditionTable, cfg: SignalSettings,
                 show: bool = False) -> tuple[SignalHead, dict[str, Any]]:
    """Train the signal head so that instructions map onto their condition's vector.

    Parameters
    ----------
    model
        The cell language model (frozen).
    targets
        (n_conditions, cond_dim) stage-1 condition vectors.
    table
        The training conditions (row i <-> targets[i]).
    cfg
        Settings (see :class:`~instructcell_agent.core_model.generation.train.GeneratorTrainConfig`).
    show
        Progress bars.

    Returns
    -------
    (SignalHead, dict)
        The head (eval mode) and a report with the nearest-condition accuracy on fresh training
        phrasings and on held-out (valid) phrasings.
    """
    # Start the signal token at the mean input embedding: a typical token, not an outlier.
    init = model.lm.get_input_embeddings().weight.detach().float().mean(0)
    incidence = torch.tensor(condition_incidence(table)) if cfg.factorized_signal else None
    head = SignalHead(model.backbone.hidden_size, targets, init, incidence).to(model.device)
    rng = random.Random(cfg.seed)
    bank = load_bank("generation").train
    tune_loss = _tune(model, head, make_prompts(table, bank, cfg.signal_tune_prompts, rng), cfg, show)
    fit_loss = _fit(model, head, make_prompts(table, bank, cfg.signal_prompts, rng), cfg, show)
    report = {"signal_tune_loss": tune_loss, "signal_fit_loss": fit_loss,
              "signal_prompts_read": cfg.signal_tune_prompts + cfg.signal_prompts}
    report.update(check_signal(model, head, table, cfg.check_phrasings, cfg.seed))
    return head.eval(), report


def _tune(model: CellLanguageModel, head: SignalHead, prompts: list[tuple[int, str]], cfg: SignalSettings,
          show: bool) -> float:
    """Stage 2a: gradient steps through the LM into the signal embedding and projection."""
    if not prompts:
        return float("nan")
    opt = torch.optim.Adam(head.parameters(), lr=cfg.signal_lr)
    chunks = [prompts[i:i + cfg.signal_chunk] for i in range(0, len(prompts), cfg.signal_chunk)]
    total = len(chunks) * cfg.signal_inner_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    head.train()
    value = float("nan")
    for chunk in tqdm(chunks, desc="generator stage 2a (signal token)", disable=not show):
        rows = torch.tensor([r for r, _ in chunk], device=model.device)
        cache = read_prompts(model, [t for _, t in chunk])
        for _ in range(cfg.signal_inner_steps):
            loss = F.cross_entropy(head.logits(signal_states_of(model, head, cache)), rows)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            value = loss.item()
    return value


@torch.no_grad()
def signal_states(model: CellLanguageModel, head: SignalHead, instructions: Sequence[str],
                  batch_size: int = 32, show: bool = False) -> torch.Tensor:
    """Final hidden state of the signal token (before the head's normalization) per instruction."""
    out = []
    starts = range(0, len(instructions), batch_size)
    for start in tqdm(starts, desc="generator stage 2b (reading prompts)", disable=not show):
        out.append(signal_states_of(model, head, read_prompts(model, instructions[start:start + batch_size])))
    return torch.cat(out)


def _fit(model: CellLanguageModel, head: SignalHead, prompts: list[tuple[int, str]], cfg: SignalSettings,
         show: bool) -> float:
    """Stage 2b: standardization and read-out fitted on stored signal states (full batch; the
    strong weight decay was the best of those tried on held-out phrasings)."""
    if not prompts:
        return float("nan")
    states = signal_states(model, head, [t for _, t in prompts], show=show)
    rows = torch.tensor([r for r, _ in prompts], device=states.device)
    with torch.no_grad():  # exact statistics of the prompts, not a running average of batches
        head.norm.running_mean.copy_(states.mean(0))
        head.norm.running_var.copy_(states.var(0, unbiased=True))
    head.norm.eval()
    normed = head.norm(states)
    params = [p for name, p in head.named_parameters() if name.startswith(("proj.", "value_proj."))]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=1.0)
    value = float("nan")
    for _ in range(cfg.signal_fit_epochs):
        loss = F.cross_entropy(head.readout(normed), rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
        value = loss.item()
    return value


@torch.no_grad()
def check_signal(model: CellLanguageModel, head: SignalHead, table: ConditionTable, per_condition: int,
                 seed: int) -> dict[str, float]:
    """Share of prompts whose condition vector is nearest to the right condition, for fresh
    training phrasings and for held-out (valid) ones. Prompts that leave out what tells two
    conditions apart (species, tissue) count as misses, so this is a lower bound."""
    head.eval()
    out = {}
    bank = load_bank("generation")
    for split, phrasings in (("train", bank.train), ("valid", bank.valid)):
        pairs = make_prompts(table, phrasings, per_condition * len(table), random.Random(seed + 7))
        if not pairs:
            continue
        states = signal_states(model, head, [t for _, t in pairs])
        nearest = head.logits(states).argmax(1).tolist()
        out[f"signal_nearest_condition_accuracy_{split}"] = sum(int(n == r) for n, (r, _) in zip(nearest, pairs)) / len(pairs)
    log.info("signal check: %s", out)
    return out
