"""Condition vectors from the language model: prompt, assistant header, then one signal token.

The generation prompt holds no cell, so it is the same for every cell asked for with the same
instruction: the frozen LM reads each distinct prompt once, and only the signal token (whose
embedding is learned) is run on top of the cached prompt, with gradients during training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..lora import adapters
from ..model import SUFFIX_TEXT, CellLanguageModel, Context
from .vae import SignalHead


def prompt_text(model: CellLanguageModel, instruction: str) -> str:
    """The full generation prompt up to the assistant header (the signal token comes next)."""
    return model.prefix_text(instruction) + SUFFIX_TEXT


@dataclass
class PromptCache:
    """The LM's key/value cache of a batch of prompts, reusable for several signal passes."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor

    def context(self) -> Context:
        """A fresh context over the cached prompts (extending it leaves this cache untouched)."""
        cache = DynamicCache()
        for idx, (k, v) in enumerate(zip(self.keys, self.values)):
            cache.update(k, v, idx)
        return Context(cache, self.mask.clone(), self.mask.sum(1))


@torch.no_grad()
def read_prompts(model: CellLanguageModel, instructions: Sequence[str]) -> PromptCache:
    """Run the frozen LM over each instruction's prompt once (left-padded into one batch)."""
    ctx = model.start([prompt_text(model, t) for t in instructions])
    layers = ctx.cache.layers
    return PromptCache([l.keys for l in layers], [l.values for l in layers], ctx.mask)


def signal_states_of(model: CellLanguageModel, head: SignalHead, cache: PromptCache) -> torch.Tensor:
    """Final hidden state (P, lm_hidden) of the signal token after cached prompts; differentiable
    in the signal embedding (gradients pass through the frozen LM)."""
    n = cache.mask.shape[0]
    token = head.signal.to(model.device, dtype=model.lm.get_input_embeddings().weight.dtype)
    return model.extend(cache.context(), token.view(1, 1, -1).expand(n, 1, -1))[:, -1].float()


def signal_vectors(model: CellLanguageModel, head: SignalHead, cache: PromptCache) -> torch.Tensor:
    """Condition vectors (P, cond_dim) for cached prompts; differentiable in `head`."""
    return head(signal_states_of(model, head, cache))


def condition_vectors(model: CellLanguageModel, head: SignalHead, instructions: Sequence[str],
                      batch_size: int = 32, lm_adapters: bool = True) -> torch.Tensor:
    """Condition vectors for instructions, one LM pass per distinct instruction (no gradients).

    Parameters
    ----------
    model
        The cell language model (its LM reads the prompts).
    head
        The trained signal head.
    instructions
        Instruction texts (already rendered); duplicates are computed once.
    batch_size
        Prompts per LM batch.
    lm_adapters
        Read through the LM's LoRA adapters (as the head was trained: `Generator.lm_adapters`).

    Returns
    -------
    torch.Tensor
        (len(instructions), cond_dim), row i for instructions[i].
    """
    where = {t: i for i, t in enumerate(dict.fromkeys(instructions))}
    uniq = list(where)
    out = []
    with torch.no_grad(), adapters(lm_adapters):
        for start in range(0, len(uniq), batch_size):
            out.append(signal_vectors(model, head, read_prompts(model, uniq[start:start + batch_size])))
    vectors = torch.cat(out) if out else torch.zeros(0, head.table.shape[1])
    return vectors[torch.tensor([where[t] for t in instructions], dtype=torch.long)]
