"""The L2-SP anchor toward a starting checkpoint's weights (core_model/anchor.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from synthetic import tiny_train_config
from instructcell_agent.core_model import anchor
from instructcell_agent.core_model.training import train


class _Toy(nn.Module):
    """Parameter names as CellLanguageModel spells them: an encoder, a backbone under `lm.` with
    low-rank adapters named `.lora_`."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 2)
        self.lm = nn.Module()
        self.lm.block = nn.Linear(2, 2)
        self.lm.block.lora_a = nn.Parameter(torch.zeros(2))


def test_the_anchor_copies_what_stage_two_trains_and_skips_the_frozen_backbone():
    toy = _Toy()
    assert set(anchor.snapshot(toy, train_lm=False)) == {"encoder.weight", "encoder.bias", "lm.block.lora_a"}
    assert set(anchor.snapshot(toy, train_lm=True)) == {name for name, _ in toy.named_parameters()}
    copy = anchor.snapshot(toy, train_lm=False)
    with torch.no_grad():
        toy.encoder.weight += 1.0
    assert not torch.equal(copy["encoder.weight"], toy.encoder.weight)  # a copy, not a view


def test_the_penalty_is_half_the_squared_distance_and_pulls_back_toward_the_start():
    toy = _Toy()
    start = anchor.snapshot(toy, train_lm=True)
    assert anchor.penalty(toy, start).item() == 0.0
    with torch.no_grad():
        toy.encoder.weight += 0.5  # 6 weights moved by 0.5
        toy.lm.block.weight -= 2.0  # 4 weights moved by 2, frozen below
    toy.lm.block.weight.requires_grad_(False)
    loss = anchor.penalty(toy, start)
    assert loss.item() == pytest.approx(0.5 * 6 * 0.25)  # the frozen weights do not count
    loss.backward()
    torch.testing.assert_close(toy.encoder.weight.grad, torch.full((2, 3), 0.5))  # w - w_start
    toy.requires_grad_(False)
    with pytest.raises(ValueError, match="anchor"):
        anchor.penalty(toy, start)


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in a if a[k].is_floating_point())


def test_an_anchored_fine_tune_stays_nearer_the_start(tiny_checkpoint, planted_spec, tmp_path):
    start = load_file(str(tiny_checkpoint / "weights.safetensors"))
    cfg = dataclasses.replace(tiny_train_config(lm_steps=8, save_every=8), init_from=str(tiny_checkpoint))
    free = train(cfg, tmp_path / "free", specs=[planted_spec], show_progress=False, fit_readout=False)
    held = train(dataclasses.replace(cfg, anchor_weight=50.0), tmp_path / "held", specs=[planted_spec],
                 show_progress=False, fit_readout=False)
    moved = _distance(start, load_file(str(free / "weights.safetensors")))
    anchored = _distance(start, load_file(str(held / "weights.safetensors")))
    assert moved > 0
    assert anchored < 0.5 * moved, (anchored, moved)


def test_a_resumed_run_is_anchored_to_the_start_not_to_where_it_stopped(tiny_checkpoint, planted_spec, tmp_path,
                                                                         monkeypatch):
    start = load_file(str(tiny_checkpoint / "weights.safetensors"))
    cfg = dataclasses.replace(tiny_train_config(lm_steps=2, save_every=2), init_from=str(tiny_checkpoint),
                              anchor_weight=1.0)
    train(cfg, tmp_path / "run", specs=[planted_spec], show_progress=False, fit_readout=False)
    stopped = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)["model"]
    seen = []
    real = anchor.penalty

    def recording(model, anchored):
        seen.append(anchored)
        return real(model, anchored)

    monkeypatch.setattr(anchor, "penalty", recording)
    train(dataclasses.replace(cfg, lm_steps=4), tmp_path / "run", specs=[planted_spec], show_progress=False,
          fit_readout=False, resume=True)
    assert len(seen) == 2  # steps 3 and 4 only
    moved = [k for k in seen[0] if k in start and k in stopped and not torch.equal(start[k], stopped[k])]
    assert moved  # the two stopped steps changed weights the anchor holds
    for name in moved:
        torch.testing.assert_close(seen[0][name], start[name])


@pytest.mark.parametrize("settings, match", [({"anchor_weight": -0.1, "init_from": "ckpt"}, "negative"),
                                             ({"anchor_weight": 0.1}, "init_from")])
def test_an_anchor_weight_that_cannot_work_is_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        tiny_train_config(**settings)
