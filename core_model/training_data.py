"""What training draws from: the loaded train splits with a global label index, and the
auxiliary head that separates each dataset's labels on the pooled queries (stage 1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .corpus import SplitData
from .gene_panels import variable_gene_order
from .replay import REPLAY_SHARE, is_replayed


class AuxHead(nn.Module):
    """Pooled queries -> logits over every (dataset, label) pair; masked per dataset."""

    def __init__(self, dim: int, n_labels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, n_labels)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        return self.linear(queries.mean(1))


@dataclass
class TrainingData:
    splits: list[SplitData]
    label_offset: list[int]  # first global label index of each dataset
    label_index: list[dict[str, int]]
    n_labels: int
    variable: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # see variable_genes

    @classmethod
    def build(cls, splits: list[SplitData]) -> TrainingData:
        offsets, index, total = [], [], 0
        for s in splits:
            labels = sorted(set(s.labels))
            offsets.append(total)
            index.append({l: i for i, l in enumerate(labels)})
            total += len(labels)
        return cls(splits, offsets, index, total)

    def dataset_probs(self, alpha: float = 0.5, replay_share: float = REPLAY_SHARE) -> np.ndarray:
        """Chance each dataset is drawn for a batch: proportional to cells**alpha. Below 1, small
        sets are seen more than their size alone would give, large ones less. Sets replayed from a
        starting checkpoint's reference cells (core_model/replay.py) share `replay_share` of the
        draws among themselves, the run's own sets the rest."""
        weight = np.asarray([s.n_cells for s in self.splits], dtype=float) ** alpha
        replayed = np.asarray([is_replayed(s) for s in self.splits])
        if replayed.any() and not replayed.all():
            weight[replayed] *= replay_share / weight[replayed].sum()
            weight[~replayed] *= (1 - replay_share) / weight[~replayed].sum()
        return weight / weight.sum()

    def sample(self, rng: np.random.Generator, d: int, n: int) -> np.ndarray:
        """Cells of dataset d, class-balanced in part (weight count^-0.5) so rare types are seen."""
        labels = self.splits[d].labels
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        weight = counts[inverse] ** -0.5
        return rng.choice(len(labels), size=n, replace=True, p=weight / weight.sum())

    def variable_genes(self, d: int, target_sum: float) -> np.ndarray:
        """Dataset d's genes, most variable first (`variable_gene_order`), computed once."""
        if d not in self.variable:
            self.variable[d] = variable_gene_order(self.splits[d].X, target_sum)
        return self.variable[d]

    def targets(self, d: int, rows: np.ndarray) -> torch.Tensor:
        idx = self.label_index[d]
        return torch.tensor([self.label_offset[d] + idx[l] for l in self.splits[d].labels[rows]])

    def mask(self, d: int) -> torch.Tensor:
        m = torch.full((self.n_labels,), float("-inf"))
        m[self.label_offset[d] : self.label_offset[d] + len(self.label_index[d])] = 0.0
        return m
