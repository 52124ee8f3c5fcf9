"""An anchor toward the starting checkpoint's weights while fine-tuning (L2-SP).

Fine-tuning on a user's set moves every trained weight a little, including those its loss has
no consistent use for: Adam scales each weight's step to its gradient's size, so noise alone
walks them away from the start (the default fine-tune moved its ~8M weights by 0.002 each on
average, where a typical weight is 0.03), and the sets the run has no data for are answered
worse. The penalty `weight * 0.5 * sum((w - w_start)^2)` over the weights stage 2 trains pulls
each back in proportion to how far it went, so that mainly the weights the new set keeps pushing
on move (L2-SP: Li, Grandvalet & Davoine, "Explicit inductive bias for transfer learning with
convolutional networks", ICML 2018). `TrainConfig.anchor_weight`, CLI `instructcell train
--anchor-weight`; off by default: at 0.1 the weights moved 30 times less, yet of the two shared
sets checked only kang2018 was kept better, and the new set was learned less
(benchmarks/EXPERIMENTS.md, 2026-12-07, 19:13 onwards).
"""

from __future__ import annotations

import torch
from torch import nn


def snapshot(model: nn.Module, train_lm: bool) -> dict[str, torch.Tensor]:
    """Detached copies of the weights stage 2 may train, by parameter name: everything but the
    frozen backbone (its low-rank adapters included), or everything when the backbone trains too."""
    return {name: p.detach().clone() for name, p in model.named_parameters()
            if train_lm or not name.startswith("lm.") or ".lora_" in name}


def penalty(model: nn.Module, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """0.5 * the summed squared distance of the model's trainable weights from `anchor`'s copies
    (weights frozen for the run, or absent from the anchor, do not count)."""
    terms = [((p - anchor[name]) ** 2).sum() for name, p in model.named_parameters()
             if p.requires_grad and name in anchor]
    if not terms:
        raise ValueError("no trainable weight of the model has an anchor copy")
    return 0.5 * torch.stack(terms).sum()
