"""The resumable state of a training run (`train_state.pt`): what is saved every few hundred
steps, and the check that a resumed run trains the same datasets and labels."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import CheckpointError
from .training_data import TrainingData


def trained_labels(data: TrainingData) -> dict[str, list[str]]:
    return {s.spec.name: sorted(set(map(str, s.labels))) for s in data.splits}


def check_resumable(state: dict, data: TrainingData, path: Path) -> None:
    """A saved state fits only the datasets and labels it was trained on: its auxiliary head has a
    column per (dataset, label), so other data fails deep in torch or trains the wrong columns.
    States saved before the label sets were recorded are checked by the head's size."""
    saved, now = state.get("label_sets"), trained_labels(data)
    same = saved == now if saved is not None else state["aux"]["linear.weight"].shape[0] == data.n_labels
    if not same:
        shown = f" (saved: {sorted(saved)}; now: {sorted(now)})" if saved is not None else ""
        raise CheckpointError(f"{path} was saved by a run on other datasets or labels{shown}; resume with the "
                              "same --catalog/--datasets files, or train into a fresh --out without --resume")


def save_state(out: Path, model, aux, opt, sched, step: int, data: TrainingData) -> None:
    tmp = out / "train_state.pt.tmp"
    state = {"stage": 2, "step": step, "model": model.trainable_state_dict(), "aux": aux.state_dict(),
             "opt": opt.state_dict(), "sched": sched.state_dict(),
             "label_sets": trained_labels(data)}  # what `check_resumable` compares a resumed run's data with
    if model.cfg.lm_trained:
        state["lm"] = model.lm.state_dict()
    torch.save(state, tmp)
    tmp.replace(out / "train_state.pt")
