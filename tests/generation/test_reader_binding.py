"""What the generator's signal token reads through, and what the generator is therefore bound to.

A cell model with LoRA adapters (the shipped kind): a generator trained with the adapters off
reads the backbone as shipped, so retraining the adapters leaves its condition vectors alone and
it keeps loading; one trained with the adapters on is bound to the exact weights.
"""

from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.errors import CheckpointError
from instructcell_agent.core_model.generation.generator import META_FILE, load_generator, rebind_model_weights
from instructcell_agent.core_model.generation.sampling import generate_cells, vectors_for
from instructcell_agent.core_model.generation.signal import condition_vectors
from instructcell_agent.core_model.lora import LoRALinear, adapters, adapters_active

PROMPTS = ["Generate a alpha cell. Condition: IFN-beta stimulated.", "Generate a beta cell. Condition: control."]


@pytest.fixture(scope="module")
def lora_checkpoint(planted_spec, tmp_path_factory):
    """A tiny cell model with LoRA adapters (frozen backbone), a few steps of training."""
    from instructcell_agent.core_model.training import train
    from synthetic import tiny_train_config

    cfg = tiny_train_config(encoder_epochs=1, lm_steps=3, valid_cells=4, train_lm=False, lora_rank=4)
    return train(cfg, tmp_path_factory.mktemp("lora_run"), specs=[planted_spec], show_progress=False)


def _with_generator(src, dst, condition_spec, lm_adapters: bool):
    from instructcell_agent.core_model.generation.train import train_generator
    from synthetic import tiny_generator_config

    shutil.copytree(src, dst)
    cfg = tiny_generator_config(epochs=5, signal_prompts=32, signal_tune_prompts=16, signal_fit_epochs=50,
                                lm_adapters=lm_adapters)
    train_generator(dst, cfg, specs=[condition_spec], show_progress=False)
    return dst


@pytest.fixture(scope="module")
def gen_off(lora_checkpoint, condition_spec, tmp_path_factory):
    return _with_generator(lora_checkpoint, tmp_path_factory.mktemp("off") / "ckpt", condition_spec, False)


@pytest.fixture(scope="module")
def gen_on(lora_checkpoint, condition_spec, tmp_path_factory):
    return _with_generator(lora_checkpoint, tmp_path_factory.mktemp("on") / "ckpt", condition_spec, True)


def _retrain_adapters(ckpt) -> None:
    """Stand-in for a retrained cell model: new LoRA B matrices in the weights file."""
    path = ckpt / "weights.safetensors"
    state = load_file(str(path))
    gen = torch.Generator().manual_seed(0)
    for key in [k for k in state if ".lora_b" in k]:
        state[key] = torch.randn(state[key].shape, generator=gen, dtype=torch.float32).to(state[key].dtype)
    save_file(state, str(path))


def test_switching_adapters_off_gives_the_base_layer_exactly():
    layer = LoRALinear(torch.nn.Linear(6, 5), rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(3, 6)
    assert not torch.allclose(layer(x), layer.base(x))
    with adapters(False):
        assert not adapters_active()
        torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)
    assert adapters_active()  # restored after the block


def test_the_switch_holds_only_in_its_own_thread():
    seen = []
    with adapters(False):
        worker = threading.Thread(target=lambda: seen.append(adapters_active()))
        worker.start()
        worker.join()
    assert seen == [True]


def test_the_prefix_memo_does_not_mix_readings(lora_checkpoint):
    model = load_checkpoint(lora_checkpoint).model
    with torch.no_grad():
        for p in model.lora_parameters():
            p.normal_(std=0.5)  # adapters that clearly change the reading
    text = model.prefix_text("Which cell type is this?")
    with_adapters = model.start([text]).cache.layers[-1].keys.clone()
    with adapters(False):
        without = model.start([text]).cache.layers[-1].keys.clone()
    assert not torch.allclose(with_adapters, without)
    torch.testing.assert_close(model.start([text]).cache.layers[-1].keys, with_adapters)


def test_the_shipped_kind_of_generator_is_bound_to_the_backbone(gen_off):
    meta = json.loads((gen_off / META_FILE).read_text())
    assert meta["lm_adapters"] is False and meta["bound_to"] == "backbone"
    assert meta["train_config"]["lm_adapters"] is False


def test_a_retrained_cell_model_keeps_an_adapters_off_generator(gen_off, tmp_path):
    before = vectors_for(load_checkpoint(gen_off), PROMPTS)
    copy = tmp_path / "ckpt"
    shutil.copytree(gen_off, copy)
    _retrain_adapters(copy)
    loaded = load_checkpoint(copy)
    torch.testing.assert_close(vectors_for(loaded, PROMPTS), before)  # the reading ignores the adapters
    assert generate_cells(loaded, "alpha", 3, condition="stim", seed=0).n_obs == 3
    assert rebind_model_weights(copy, "0" * 64)  # any weights file will do; the record follows it


def test_an_adapters_on_generator_reads_through_them_and_is_bound_to_the_weights(gen_on, tmp_path):
    meta = json.loads((gen_on / META_FILE).read_text())
    assert meta["lm_adapters"] is True and meta["bound_to"] == "model_weights"
    loaded = load_checkpoint(gen_on)
    gen = load_generator(loaded)
    plain = condition_vectors(loaded.model, gen.head, PROMPTS, lm_adapters=False)  # same head, no adapters
    assert not torch.allclose(vectors_for(loaded, PROMPTS), plain)
    copy = tmp_path / "ckpt"
    shutil.copytree(gen_on, copy)
    _retrain_adapters(copy)
    with pytest.raises(CheckpointError, match="other model weights"):
        load_generator(load_checkpoint(copy))


def test_another_backbone_or_prompt_format_is_refused(gen_off, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(gen_off, copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"]["system_prompt"] = "You are another assistant."
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="another backbone or system prompt"):
        load_generator(load_checkpoint(copy))
