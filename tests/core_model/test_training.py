"""Training learns the planted signal, is seeded, and resumes where it stopped."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from synthetic import tiny_train_config
from instructcell_agent.core_model.training import train


def test_training_learns_planted_types(tiny_run):
    valid = json.loads((tiny_run / "valid_metrics.json").read_text())["planted"]
    # Four balanced types: chance is 0.25.
    assert valid["accuracy"] >= 0.6, valid


def test_vocabulary_comes_from_the_train_split(tiny_model):
    assert len(tiny_model.vocab) == 120 and tiny_model.vocab[0].startswith("GENE")


def test_resume_continues_from_saved_state(planted_spec, tmp_path):
    cfg = tiny_train_config(encoder_epochs=1, lm_steps=6, save_every=3, valid_cells=4, train_lm=False)
    full = train(cfg, tmp_path / "full", specs=[planted_spec], show_progress=False)
    # An interrupted run: stop after 3 steps, then resume to 6.
    part = tmp_path / "part"
    train(tiny_train_config(encoder_epochs=1, lm_steps=3, save_every=3, valid_cells=4, train_lm=False), part,
          specs=[planted_spec], show_progress=False)
    state = torch.load(part / "train_state.pt", weights_only=True)
    assert state["step"] == 3
    resumed = train(cfg, part, specs=[planted_spec], show_progress=False, resume=True)
    assert torch.load(part / "train_state.pt", weights_only=True)["step"] == 6
    a, b = load_file(str(full / "weights.safetensors")), load_file(str(resumed / "weights.safetensors"))
    assert a.keys() == b.keys()
