"""Checkpoint directories: round trip, strictness, provenance."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from instructcell_agent.core_model.checkpoint import LoadedModel, load_checkpoint, save_checkpoint
from instructcell_agent.core_model.errors import CheckpointError


def _scores(loaded):
    model = loaded.model
    expr = model.normalize(torch.rand(2, len(loaded.vocab), generator=torch.Generator().manual_seed(0)) * 3)
    with torch.no_grad():
        ctx = model.start([model.prefix_text("Type?")], torch.zeros(2, dtype=torch.long))
        return model.score_candidates(ctx, expr, ["alpha", "beta"])


def test_round_trip_gives_identical_outputs(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "copy")
    again = load_checkpoint(path)
    torch.testing.assert_close(_scores(tiny_model), _scores(again))
    assert again.vocab == tiny_model.vocab and again.label_sets == tiny_model.label_sets


def test_checkpoint_records_provenance(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["format_version"] == 1
    assert config["train_config"]["seed"] == 0
    assert config["data"][0]["sha256"] and len(config["data"][0]["sha256"]) == 64
    labels = json.loads((tiny_checkpoint / "labels.json").read_text())
    assert labels["planted"]["labels"] == ["alpha", "beta", "delta", "gamma"]


def test_missing_file_is_refused(tiny_checkpoint, tmp_path):
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    (broken / "gene_vocab.json").unlink()
    with pytest.raises(CheckpointError, match="gene_vocab.json"):
        load_checkpoint(broken)


def test_weights_that_do_not_fit_are_refused(tiny_checkpoint, tmp_path):
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    weights = load_file(str(broken / "weights.safetensors"))
    weights.pop(next(iter(weights)))
    save_file(weights, str(broken / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(broken)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_tiny_backbone_with_lora_round_trips(planted_spec, tmp_path):
    from synthetic import tiny_train_config
    from instructcell_agent.core_model.training import train

    cfg = tiny_train_config(encoder_epochs=1, lm_steps=3, valid_cells=4, train_lm=False, lora_rank=4)
    path = train(cfg, tmp_path / "run", specs=[planted_spec], show_progress=False)
    loaded = load_checkpoint(path)
    assert loaded.model.cfg.lora_rank == 4
    assert any(".lora_" in k for k in loaded.model.trainable_state_dict())
    again = load_checkpoint(save_checkpoint(loaded, tmp_path / "copy"))
    torch.testing.assert_close(_scores(loaded), _scores(again))


def test_encoder_with_linear_skip_trains_and_round_trips(planted_spec, tmp_path):
    from synthetic import tiny_train_config
    from instructcell_agent.core_model.training import train

    cfg = tiny_train_config(encoder_epochs=1, lm_steps=3, valid_cells=4, linear_skip=True)
    loaded = load_checkpoint(train(cfg, tmp_path / "run", specs=[planted_spec], show_progress=False))
    assert loaded.model.cfg.encoder.linear_skip
    assert {"encoder.skip.weight", "encoder.skip.bias"} <= set(loaded.model.trainable_state_dict())
    again = load_checkpoint(save_checkpoint(loaded, tmp_path / "copy"))
    torch.testing.assert_close(_scores(loaded), _scores(again))


def test_configs_written_before_linear_skip_load_without_it(tiny_checkpoint, tmp_path):
    copy = shutil.copytree(tiny_checkpoint, tmp_path / "old")
    config = json.loads((copy / "config.json").read_text())
    config["model"]["encoder"].pop("linear_skip")
    (copy / "config.json").write_text(json.dumps(config))
    loaded = load_checkpoint(copy)
    assert not loaded.model.cfg.encoder.linear_skip and loaded.model.encoder.skip is None


def test_weights_stored_in_float16_halve_the_file_and_keep_the_answers(gen_checkpoint, tmp_path):
    from synthetic import CELL_TYPES, make_counts

    import instructcell_agent as ica
    from instructcell_agent.cli import main
    from instructcell_agent.core_model.checkpoint import load_checkpoint
    from instructcell_agent.core_model.generation.generator import load_generator

    ckpt = tmp_path / "ckpt"
    shutil.copytree(gen_checkpoint, ckpt)
    before = (ckpt / "weights.safetensors").stat().st_size
    assert main(["store-weights", "--checkpoint", str(ckpt)]) == 0
    assert (ckpt / "weights.safetensors").stat().st_size < 0.6 * before
    full, half = load_checkpoint(gen_checkpoint), load_checkpoint(ckpt)
    assert all(p.dtype == torch.float32 for p in half.model.parameters())  # cast back on load
    cells = make_counts(24, seed=11)
    a = ica.annotate(cells, model=full, candidates=list(CELL_TYPES)).probabilities.to_numpy()
    b = ica.annotate(cells, model=half, candidates=list(CELL_TYPES)).probabilities.to_numpy()
    np.testing.assert_allclose(a, b, atol=0.02)
    assert load_generator(half) is not None  # generator.json follows the rewritten weights


def test_a_generator_trained_on_other_weights_is_not_rebound(gen_checkpoint, tmp_path):
    from instructcell_agent.core_model.generation.generator import rebind_model_weights

    ckpt = tmp_path / "ckpt"
    shutil.copytree(gen_checkpoint, ckpt)
    with pytest.raises(CheckpointError, match="retrain"):
        rebind_model_weights(ckpt, "0" * 64)


def test_free_answer_vocabulary_follows_the_cells_species_and_tissue():
    sets = {
        "blood": {"task": "annotation", "labels": ["B", "NK"], "species": "human", "tissue": "peripheral blood"},
        "islets": {"task": "annotation", "labels": ["alpha", "beta"], "species": "human and mouse",
                   "tissue": "Pancreas"},
        "drug": {"task": "drug_response", "labels": ["sensitive"], "species": "human", "tissue": "lung"},
    }
    loaded = LoadedModel(model=None, vocab=[], label_sets=sets)  # type: ignore[arg-type]
    assert loaded.labels_for_context("annotation", "mouse", "pancreas") == ["alpha", "beta"]
    assert loaded.labels_for_context("annotation", "human", "peripheral  blood") == ["B", "NK"]
    assert loaded.labels_for_context("annotation", "human", "") == ["B", "NK", "alpha", "beta"]
    assert loaded.labels_for_context("annotation", "mouse", "peripheral blood") == ["B", "NK", "alpha", "beta"]
    assert loaded.labels_for_context("annotation", "", "liver") == ["B", "NK", "alpha", "beta"]
    fields = [{"species": "human", "tissue": "pancreas"}, {"species": "human", "tissue": "peripheral blood"}]
    assert loaded.labels_for_cells("annotation", fields) == [["alpha", "beta"], ["B", "NK"]]
    assert loaded.labels_for_cells("generation", fields) is None  # no labels learned for the task: free text
    assert loaded.label_sets_for_context("annotation", "human", "liver") == []
    assert loaded.label_sets_for_context("annotation", "human", "Blood") == ["blood"]  # 'peripheral blood'
    assert loaded.label_sets_for_context("annotation", "human", "peripheral blood (PBMC)") == []
    assert loaded.label_sets_for_context("annotation", "mouse", "pancreas") == ["islets"]
    assert loaded.known_contexts("annotation") == ["human / peripheral blood", "human and mouse / Pancreas"]


def test_reordering_the_genes_keeps_every_answer(tiny_checkpoint, tmp_path):
    from synthetic import CELL_TYPES, make_counts

    import instructcell_agent as ica
    from instructcell_agent.cli import main

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    order = list(reversed(load_checkpoint(tiny_checkpoint).vocab))
    (tmp_path / "order.json").write_text(json.dumps(order))
    assert main(["reorder-genes", "--checkpoint", str(ckpt), "--like", str(tmp_path / "order.json")]) == 0
    before, after = load_checkpoint(tiny_checkpoint), load_checkpoint(ckpt)
    assert after.vocab == order
    assert after.info["genes_reordered"]["sha256_before"] != after.info["genes_reordered"]["sha256_after"]
    cells = make_counts(24, seed=5)
    a = ica.annotate(cells, model=before, candidates=list(CELL_TYPES))
    b = ica.annotate(cells, model=after, candidates=list(CELL_TYPES))
    np.testing.assert_allclose(a.probabilities.to_numpy(), b.probabilities.to_numpy(), atol=1e-5)
    # the reference cells are over genes too: typicality moves with them
    assert np.isfinite(a.typicality).all()
    np.testing.assert_allclose(a.typicality, b.typicality, atol=1e-6)


def test_reordering_refuses_another_gene_set(tiny_checkpoint, tmp_path):
    from instructcell_agent.core_model.checkpoint import reorder_genes

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    vocab = load_checkpoint(ckpt).vocab
    with pytest.raises(CheckpointError, match="exactly the checkpoint's genes"):
        reorder_genes(ckpt, vocab[:-1] + ["NOT_A_GENE"])
    assert load_checkpoint(ckpt).vocab == vocab  # untouched
