"""Fixtures for generation: the planted synthetic set with a condition column, and a copy of the
tiny checkpoint with a generator trained on it for a few steps."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

STIM_GENES = ("GENE100", "GENE101", "GENE102", "GENE103")


def _root_conftest():
    """tests/conftest.py under a private name (both conftest files are called `conftest`)."""
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("_instructcell_tests_root_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def make_condition_counts(n_cells: int, seed: int = 0):
    """The shared planted set (make_counts) plus obs['condition'] ctrl/stim, stim raising 4 genes."""
    adata = _root_conftest().make_counts(n_cells, seed)
    rng = np.random.default_rng(seed + 1)
    stim = (np.arange(n_cells) // 4) % 2 == 1  # every type gets both conditions
    X = adata.X.toarray()
    cols = [adata.var_names.get_loc(g) for g in STIM_GENES]
    X[np.ix_(stim, cols)] += rng.poisson(10.0, size=(int(stim.sum()), len(cols)))
    adata.X = type(adata.X)(X)
    adata.obs["condition"] = np.where(stim, "stim", "ctrl")
    adata.obs["sequencing_method"] = "10x Chromium"
    return adata


@pytest.fixture(scope="session")
def condition_set(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gen_synthetic")
    adata = make_condition_counts(240)
    path = root / "planted_cond.h5ad"
    adata.write_h5ad(path)
    names = list(adata.obs_names)
    split = {"train": names[:160], "valid": names[160:200], "test": names[200:]}
    split_path = root / "planted_cond_split.json"
    split_path.write_text(json.dumps(split))
    return {"path": path, "split_path": split_path, "adata": adata}


@pytest.fixture(scope="session")
def condition_spec(condition_set):
    from instructcell_agent.core_model.datasets import DatasetSpec

    return DatasetSpec(name="planted_cond", task="annotation", path=condition_set["path"], label_key="cell_type",
                       split_path=condition_set["split_path"], tissue="pancreas", species="human")


def tiny_generator_config(**overrides):
    from instructcell_agent.core_model.generation.train import GeneratorTrainConfig

    settings = dict(epochs=40, batch_size=32, hidden_dim=32, latent_dim=4, cond_dim=8, lr=3e-3, signal_prompts=160,
                    signal_tune_prompts=64, signal_fit_epochs=300,
                    signal_chunk=32, signal_inner_steps=10, signal_lr=1e-2, check_phrasings=1)
    settings.update(overrides)
    return GeneratorTrainConfig(**settings)


@pytest.fixture(scope="session")
def gen_checkpoint(tiny_checkpoint, condition_spec, tmp_path_factory) -> Path:
    """A copy of the tiny checkpoint with generator files (the shared one stays untouched)."""
    from instructcell_agent.core_model.generation.train import train_generator

    out = tmp_path_factory.mktemp("gen_ckpt") / "checkpoint"
    shutil.copytree(tiny_checkpoint, out)
    train_generator(out, tiny_generator_config(), specs=[condition_spec], show_progress=False)
    return out


@pytest.fixture(scope="session")
def gen_model(gen_checkpoint):
    from instructcell_agent.core_model.checkpoint import load_checkpoint

    return load_checkpoint(gen_checkpoint)
