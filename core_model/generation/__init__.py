"""Conditional pseudo-cell generation (CPCG): instruction -> signal token -> count decoder.

Modules: `conditions` (what is asked, what was seen), `vae` (count decoder, signal head),
`signal` (condition vectors from the LM), `data` (counts and conditions of training / test cells),
`train` (adds generator files to a checkpoint), `generator` (those files), `sampling` (generate
cells), `metrics` (reference and gene-space metrics), `evaluate` (the cpcg evaluation job),
`commands` (the CLI's generation subcommands).

Names are imported lazily, so the CLI can register its subcommands without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "Condition": ".conditions", "ConditionTable": ".conditions", "UnseenConditionError": ".conditions",
    "compose_instruction": ".conditions", "condition_text": ".conditions",
    "Generator": ".generator", "has_generator": ".generator", "load_generator": ".generator",
    "generate_cells": ".sampling", "sample_counts": ".sampling",
    "train_generator": ".train", "GeneratorTrainConfig": ".train",
    "evaluate_generation": ".evaluate", "generation_metrics": ".metrics",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
