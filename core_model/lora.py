"""Low-rank adapters (LoRA) injected into the backbone's attention projections.

Written here rather than through peft so the model keeps calling the plain Hugging Face modules
(`lm.model`, `lm.lm_head`) and checkpoints stay a flat safetensors file of trained weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TARGETS = ("q_proj", "v_proj", "o_proj")


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
