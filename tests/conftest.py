"""Shared fixtures: the planted synthetic sets on disk and tiny models trained on them.

The helpers that build the data live in synthetic.py (importable from any test module, since
pytest puts tests/ on sys.path); one conftest holds every fixture, so no two modules share the
name `conftest`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from synthetic import make_condition_counts, make_counts, tiny_generator_config, tiny_train_config

# Tiny models run faster on one thread (no OpenMP hand-offs), and the suite stays polite to
# whatever else the machine is doing.
torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Pin torch to one thread before each test's fixtures are built: libraries the generation
    metrics use (via threadpoolctl) reset the OpenMP pool to all cores, and a different thread
    count changes float summation order, so a model trained after them would differ."""
    torch.set_num_threads(1)


def _write_set(root: Path, adata, name: str) -> dict:
    """`adata` as ROOT/NAME.h5ad plus a canonical-style split file (160 train, 40 valid, 40 test)."""
    path = root / f"{name}.h5ad"
    adata.write_h5ad(path)
    names = list(adata.obs_names)
    split_path = root / f"{name}_split.json"
    split_path.write_text(json.dumps({"train": names[:160], "valid": names[160:200], "test": names[200:]}))
    return {"path": path, "split_path": split_path, "adata": adata}


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> dict:
    """A labelled .h5ad with a canonical-style split file on disk."""
    return _write_set(tmp_path_factory.mktemp("synthetic"), make_counts(240), "planted")


def _spec(written: dict, name: str):
    """The catalog entry of a set written by _write_set."""
    from instructcell_agent.core_model.datasets import DatasetSpec

    return DatasetSpec(name=name, task="annotation", path=written["path"], label_key="cell_type",
                       split_path=written["split_path"], tissue="pancreas", species="human")


@pytest.fixture(scope="session")
def planted_spec(synthetic_set):
    return _spec(synthetic_set, "planted")


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


# --- generation: the planted set with a condition column, and a generator trained on it ---


@pytest.fixture(scope="session")
def condition_set(tmp_path_factory) -> dict:
    return _write_set(tmp_path_factory.mktemp("gen_synthetic"), make_condition_counts(240), "planted_cond")


@pytest.fixture(scope="session")
def condition_spec(condition_set):
    return _spec(condition_set, "planted_cond")


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
