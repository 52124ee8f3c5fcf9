"""Shared fixtures: synthetic labelled data with planted marker genes, and a tiny trained model.

Everything is built locally (random tiny Llama, byte-level tokenizer): the suite never needs the
network, the shared data or the real backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

# Tiny models run faster on one thread (no OpenMP hand-offs), and the suite stays polite to
# whatever else the machine is doing.
torch.set_num_threads(1)

CELL_TYPES = ("alpha", "beta", "gamma", "delta")
N_GENES = 120
MARKERS_PER_TYPE = 4


def marker_genes(cell_type: str) -> list[str]:
    i = CELL_TYPES.index(cell_type)
    return [f"GENE{j:03d}" for j in range(i * MARKERS_PER_TYPE, (i + 1) * MARKERS_PER_TYPE)]


def make_counts(n_cells: int, seed: int = 0) -> ad.AnnData:
    """Raw counts: a shared background plus strong expression of each type's planted markers."""
    rng = np.random.default_rng(seed)
    labels = np.array([CELL_TYPES[i % len(CELL_TYPES)] for i in range(n_cells)])
    rate = rng.gamma(2.0, 0.5, size=N_GENES)
    lam = np.tile(rate, (n_cells, 1))
    for i, label in enumerate(labels):
        k = CELL_TYPES.index(label)
        lam[i, k * MARKERS_PER_TYPE : (k + 1) * MARKERS_PER_TYPE] += 12.0
    counts = rng.poisson(lam * rng.uniform(0.6, 1.4, size=(n_cells, 1))).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"cell{i:04d}" for i in range(n_cells)]
    adata.var_names = [f"GENE{j:03d}" for j in range(N_GENES)]
    adata.obs["cell_type"] = pd.Categorical(labels)
    adata.obs["species"] = "human"
    adata.obs["tissue"] = "pancreas"
    return adata


def tiny_train_config(**overrides):
    """Training settings for the tiny model; the LM is tuned too, since a random frozen LM
    cannot be steered to spell labels in a few dozen steps."""
    from instructcell_agent.core_model.config import BackboneConfig
    from instructcell_agent.core_model.training import TrainConfig

    settings = dict(
        backbone=BackboneConfig(kind="tiny", tiny_hidden=64, tiny_layers=2), n_hvg=N_GENES, hidden_dim=64, dim=32,
        n_queries=4, n_layers=1, encoder_epochs=20, encoder_batch=32, lm_steps=60, batch_size=16, lr=3e-3,
        train_lm=True, valid_cells=40, save_every=50, gene_keep=0.95, panel_drop_prob=0.0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> dict:
    """A labelled .h5ad with a canonical-style split file on disk."""
    root = tmp_path_factory.mktemp("synthetic")
    adata = make_counts(240)
    path = root / "planted.h5ad"
    adata.write_h5ad(path)
    names = list(adata.obs_names)
    split = {"train": names[:160], "valid": names[160:200], "test": names[200:]}
    split_path = root / "planted_split.json"
    split_path.write_text(json.dumps(split))
    return {"path": path, "split_path": split_path, "adata": adata}


@pytest.fixture(scope="session")
def planted_spec(synthetic_set):
    from instructcell_agent.core_model.datasets import DatasetSpec

    return DatasetSpec(name="planted", task="annotation", path=synthetic_set["path"], label_key="cell_type",
                       split_path=synthetic_set["split_path"], tissue="pancreas", species="human")


@pytest.fixture(scope="session")
def tiny_run(planted_spec, tmp_path_factory) -> Path:
    """Run directory of a tiny model trained on the planted set (seconds on CPU)."""
    from instructcell_agent.core_model.training import train

    out = tmp_path_factory.mktemp("run")
    train(tiny_train_config(), out, specs=[planted_spec], show_progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    return tiny_run / "checkpoint"


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from instructcell_agent.core_model.checkpoint import load_checkpoint

    return load_checkpoint(tiny_checkpoint)
