"""Low-rank adapters (LoRA) injected into the backbone's attention projections.

Written here rather than through peft so the model keeps calling the plain Hugging Face modules
(`lm.model`, `lm.lm_head`) and checkpoints stay a flat safetensors file of trained weights.

`adapters(False)` runs the backbone exactly as its package ships it, for readers that must not
depend on the task-tuned adapters (the generator's signal token). The switch is a context
variable, so it holds only for the calling thread or asyncio task: a server annotating in one
thread while generating in another never sees the other's setting.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

TARGETS = ("q_proj", "v_proj", "o_proj")
_ACTIVE: ContextVar[bool] = ContextVar("lora_adapters_active", default=True)


@contextmanager
def adapters(active: bool) -> Iterator[None]:
    """Run every LoRA layer with (True) or without (False) its adapter inside the block."""
    token = _ACTIVE.set(bool(active))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def adapters_active() -> bool:
    """Whether LoRA layers apply their adapters in the current thread / task."""
    return _ACTIVE.get()


class LoRALinear(nn.Module):
    """`base(x) + (alpha / r) * B(A(x))`; B starts at zero, so the adapted model starts unchanged."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _ACTIVE.get():
            return self.base(x)
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


def inject_lora(lm: nn.Module, rank: int, alpha: float | None = None) -> list[nn.Parameter]:
    """Wrap every attention projection named in TARGETS; returns the new trainable parameters."""
    params: list[nn.Parameter] = []
    for module in list(lm.modules()):
        for name in TARGETS:
            child = getattr(module, name, None)
            if isinstance(child, nn.Linear):
                wrapped = LoRALinear(child, rank, alpha if alpha is not None else 2.0 * rank)
                setattr(module, name, wrapped)
                params += [wrapped.lora_a, wrapped.lora_b]
    return params
