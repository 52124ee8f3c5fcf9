"""Training learns the planted signal, is seeded, resumes where it stopped, and starts from a checkpoint."""

from __future__ import annotations

import dataclasses
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from synthetic import CELL_TYPES, tiny_train_config
from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.config import BackboneConfig
from instructcell_agent.core_model.corpus import load_split
from instructcell_agent.core_model.datasets import read_split
from instructcell_agent.core_model.errors import CheckpointError, DeviceError, InputFileError, InstructCellError
from instructcell_agent.core_model.training import train
from instructcell_agent.core_model.training_data import TrainingData


def test_training_learns_planted_types(tiny_run):
    valid = json.loads((tiny_run / "valid_metrics.json").read_text())["planted"]
    # Four balanced types: chance is 0.25.
    assert valid["accuracy"] >= 0.6, valid


def test_the_ranking_loss_reaches_the_weights_and_the_run_still_learns(tiny_checkpoint, planted_spec, tmp_path):
    # Same settings and seed as the tiny_checkpoint fixture's run, plus the ranking loss.
    out = train(tiny_train_config(rank_weight=1.0), tmp_path / "ranked", specs=[planted_spec], show_progress=False)
    ranked, plain = load_file(out / "weights.safetensors"), load_file(tiny_checkpoint / "weights.safetensors")
    assert ranked.keys() == plain.keys()
    assert any(not torch.equal(ranked[k], plain[k]) for k in plain)
    valid = json.loads((tmp_path / "ranked" / "valid_metrics.json").read_text())["planted"]
    assert valid["accuracy"] >= 0.6, valid
    with pytest.raises(ValueError, match="rank_weight"):
        tiny_train_config(rank_weight=-1.0)


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



def test_a_run_started_from_a_checkpoint_keeps_its_vocabulary_and_labels(tiny_checkpoint, planted_spec, tmp_path):
    start = load_checkpoint(tiny_checkpoint)
    # A label set the new run does not train on must survive into the new checkpoint.
    copy = tmp_path / "start"
    shutil.copytree(tiny_checkpoint, copy)
    labels = json.loads((copy / "labels.json").read_text())
    labels["kept_from_start"] = dict(labels["planted"], labels=["x", "y"])
    (copy / "labels.json").write_text(json.dumps(labels))
    # A gentle learning rate, as for any continued run (fresh optimizer moments); a stage 1 of
    # 10,000 epochs would take many minutes, so the test also shows that it is skipped.
    cfg = dataclasses.replace(tiny_train_config(lm_steps=4, save_every=4, lr=3e-4), init_from=str(copy),
                              encoder_epochs=10_000)
    out = train(cfg, tmp_path / "more", specs=[planted_spec], show_progress=False)
    new = load_checkpoint(out)
    assert new.vocab == start.vocab
    assert set(new.label_sets) == {"planted", "kept_from_start"}
    assert new.info["started_from"]["path"] == str(copy)
    assert new.info["started_from"]["weights_sha256"]
    # Stage 2 moved the weights away from the start, and the model still answers.
    before, after = load_file(str(copy / "weights.safetensors")), load_file(str(out / "weights.safetensors"))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((tmp_path / "more" / "valid_metrics.json").read_text())["planted"]["accuracy"] >= 0.6
    # A run started from that one records the whole chain.
    again = train(dataclasses.replace(cfg, init_from=str(out), lm_steps=1), tmp_path / "again", specs=[planted_spec],
                  show_progress=False)
    assert load_checkpoint(again).info["started_from"]["started_from"]["path"] == str(copy)


def test_a_frozen_encoder_keeps_its_weights_while_the_rest_of_stage_2_trains(tiny_checkpoint, planted_spec,
                                                                               tmp_path):
    cfg = dataclasses.replace(tiny_train_config(lm_steps=3, save_every=3, lr=3e-4), init_from=str(tiny_checkpoint),
                              freeze_encoder=True)
    out = train(cfg, tmp_path / "frozen", specs=[planted_spec], show_progress=False)
    before, after = load_file(str(tiny_checkpoint / "weights.safetensors")), load_file(str(out / "weights.safetensors"))
    encoder = [k for k in before if k.startswith("encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("proj."))
    assert load_checkpoint(out).info["train_config"]["freeze_encoder"] is True


def test_a_run_started_from_a_checkpoint_refuses_another_backbone(tiny_checkpoint, planted_spec, tmp_path):
    cfg = dataclasses.replace(tiny_train_config(lm_steps=2), init_from=str(tiny_checkpoint),
                              backbone=BackboneConfig(kind="smollm2"))
    with pytest.raises(CheckpointError, match="backbone"):
        train(cfg, tmp_path / "other", specs=[planted_spec], show_progress=False)


def test_a_refit_on_train_and_valid_sees_both_splits_and_skips_the_valid_check(tiny_checkpoint, planted_spec,
                                                                                  tmp_path):
    split = read_split(planted_spec.split_path)
    order = list(reversed(load_checkpoint(tiny_checkpoint).vocab))
    (tmp_path / "order.json").write_text(json.dumps(order))
    cfg = tiny_train_config(encoder_epochs=1, lm_steps=2, save_every=2, fit_splits="train+valid",
                            vocab_from=str(tmp_path / "order.json"))
    refit = load_checkpoint(train(cfg, tmp_path / "refit", specs=[planted_spec], show_progress=False))
    assert refit.vocab == order  # taken as given, not rebuilt
    both = load_split(planted_spec, refit.vocab, "train+valid")
    assert both.obs_names == split["train"] + split["valid"]
    assert refit.info["valid"] == {"skipped": "the model was fitted on train+valid"}
    assert refit.info["train_config"]["fit_splits"] == "train+valid"


def test_a_run_records_its_device_and_can_leave_the_readout_for_later(planted_spec, tmp_path):
    cfg = tiny_train_config(encoder_epochs=1, lm_steps=2, save_every=2, valid_cells=4)
    out = train(cfg, tmp_path / "bare", specs=[planted_spec], show_progress=False, fit_readout=False, device="cpu")
    assert not (out / "readout.safetensors").exists()
    loaded = load_checkpoint(out)
    assert loaded.readout is None and loaded.info["trained_on"] == "cpu"
    assert loaded.info["torch"] == torch.__version__


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_a_gpu_asked_for_on_a_machine_without_one_is_refused_before_any_work(planted_spec, tmp_path):
    with pytest.raises(DeviceError, match="sees no GPU"):
        train(tiny_train_config(lm_steps=1), tmp_path / "gpu", specs=[planted_spec], device="cuda")
    assert not (tmp_path / "gpu" / "gene_vocab.json").exists()


def test_an_unknown_split_name_is_refused(planted_spec):
    with pytest.raises(InputFileError, match="no split 'holdout'"):
        load_split(planted_spec, ["GENE0"], "train+holdout")


def test_a_given_vocabulary_cannot_be_combined_with_a_starting_checkpoint(tiny_checkpoint, planted_spec, tmp_path):
    cfg = tiny_train_config(lm_steps=1, init_from=str(tiny_checkpoint), vocab_from=str(tiny_checkpoint))
    with pytest.raises(ValueError, match="--vocab-from cannot be combined"):
        train(cfg, tmp_path / "both", specs=[planted_spec], show_progress=False)


def test_dataset_draws_follow_cells_to_the_power_alpha():
    data = TrainingData([SimpleNamespace(n_cells=n, spec=SimpleNamespace(extra={})) for n in (100, 400)], [0, 2],
                        [{}, {}], 4)
    assert data.dataset_probs(1.0) == pytest.approx([0.2, 0.8])
    assert data.dataset_probs(0.5) == pytest.approx([1 / 3, 2 / 3])  # sqrt: 10 vs 20
    assert data.dataset_probs(0.0) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="dataset_alpha"):
        tiny_train_config(dataset_alpha=1.5)


def _variable_counts(n_cells: int = 400, seed: int = 0):
    """Counts over 300 genes of spread means, of which genes 60, 120, 180 and 240 split the cells
    into two groups (at their neighbours' mean: the seurat ranking compares genes of similar
    mean) and genes 280 on are held by no cell."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    means = np.tile(np.logspace(0.3, 1.7, 300), (n_cells, 1))
    for g in VARIABLE:
        means[: n_cells // 2, g] = 2 * means[0, g] - 0.5
        means[n_cells // 2 :, g] = 0.5
    counts = rng.poisson(means).astype(np.float32)
    counts[:, 280:] = 0
    return sp.csr_matrix(counts)


VARIABLE = (60, 120, 180, 240)


def test_variable_genes_come_first_and_absent_genes_are_left_out():
    from instructcell_agent.core_model.gene_panels import variable_gene_order

    order = variable_gene_order(_variable_counts(), 1e4)
    assert sorted(order[:4].tolist()) == list(VARIABLE)
    assert sorted(order.tolist()) == list(range(280))


def test_an_hvg_panel_keeps_only_the_most_variable_genes_and_is_drawn_only_when_enabled():
    import numpy as np

    from instructcell_agent.core_model.training import TrainConfig, augment

    counts = _variable_counts()
    variable = np.arange(280)[::-1].copy()  # a made-up order: gene 279 first
    plain = TrainConfig(gene_keep=1.0, panel_drop_prob=0.0)
    # Off (the default): the same draws as before the option existed, whatever `variable` says.
    with_order, without = np.random.default_rng(3), np.random.default_rng(3)
    a = augment(counts, plain, with_order, variable)
    b = augment(counts, plain, without)
    assert (a != b).nnz == 0 and (a != counts).nnz == 0
    assert with_order.bit_generator.state == without.bit_generator.state  # no extra draw
    always = dataclasses.replace(plain, hvg_panel_prob=1.0)
    cut = augment(counts, always, np.random.default_rng(3), variable)
    # 500 or more genes are kept: all 280 held here, so nothing is lost...
    assert (cut != counts).nnz == 0
    # ...while an order naming fewer genes keeps exactly those.
    few = augment(counts, always, np.random.default_rng(3), np.array([2, 7]))
    assert set(few.tocoo().col.tolist()) == {2, 7}
    assert np.allclose(few[:, [2, 7]].toarray(), counts[:, [2, 7]].toarray())


def _without_valid(planted_spec, tmp_path):
    split = read_split(planted_spec.split_path)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": split["train"], "test": split["test"]}))
    return dataclasses.replace(planted_spec, split_path=path)


def test_a_set_without_valid_cells_trains_and_records_the_skipped_check(planted_spec, tmp_path):
    # Before: the finished run failed in the end-of-run check ("no split 'valid'") and wrote no checkpoint.
    spec = _without_valid(planted_spec, tmp_path)
    out = train(tiny_train_config(encoder_epochs=1, lm_steps=2, save_every=2), tmp_path / "run", specs=[spec],
                show_progress=False)
    assert load_checkpoint(out).info["valid"] == {"planted": {"skipped": "no valid cells in split.json"}}


def test_a_dataset_whose_file_is_wrong_is_named_in_the_error(planted_spec, tmp_path):
    spec = dataclasses.replace(planted_spec, label_key="nope")
    with pytest.raises(InstructCellError, match="dataset 'planted' .*no column 'nope'"):
        train(tiny_train_config(encoder_epochs=1, lm_steps=1), tmp_path / "run", specs=[spec], show_progress=False)


def test_resuming_on_other_datasets_is_refused(planted_spec, tmp_path):
    cfg = tiny_train_config(encoder_epochs=1, lm_steps=2, save_every=2, valid_cells=4)
    train(cfg, tmp_path / "run", specs=[planted_spec], show_progress=False)
    # Same head size, another set name: without the recorded label sets this resumed silently.
    renamed = dataclasses.replace(planted_spec, name="renamed")
    with pytest.raises(CheckpointError, match="other datasets or labels"):
        train(cfg, tmp_path / "run", specs=[renamed], show_progress=False, resume=True)


def test_a_fresh_run_into_a_used_directory_builds_its_own_vocabulary(planted_spec, tmp_path):
    # Before: a gene_vocab.json left by an earlier run on other data was reused without --resume.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "gene_vocab.json").write_text(json.dumps(["OTHER1", "GENE000"]))
    out = train(tiny_train_config(encoder_epochs=1, lm_steps=1, save_every=1, valid_cells=4), tmp_path / "run",
                specs=[planted_spec], show_progress=False)
    assert len(load_checkpoint(out).vocab) == 120


def test_fine_tuning_on_other_sets_keeps_the_read_out_of_the_sets_it_inherits(tiny_checkpoint, synthetic_set,
                                                                                tmp_path):
    from instructcell_agent.core_model.datasets import DatasetSpec

    # the user's own set: the planted cells under their own label names, and no shared data
    mine = synthetic_set["adata"].copy()
    mine.obs["group"] = ["g_" + str(t) for t in mine.obs["cell_type"]]
    mine.write_h5ad(tmp_path / "mine.h5ad")
    spec = DatasetSpec(name="mine", task="annotation", path=tmp_path / "mine.h5ad", label_key="group",
                       split_path=synthetic_set["split_path"], tissue="pancreas", species="human")
    cfg = dataclasses.replace(tiny_train_config(lm_steps=1, save_every=1), init_from=str(tiny_checkpoint))
    new = load_checkpoint(train(cfg, tmp_path / "tuned", specs=[spec], show_progress=False))
    old = load_checkpoint(tiny_checkpoint)
    assert set(new.label_sets) == {"planted", "mine"}
    for label in old.label_sets["planted"]["labels"]:  # the inherited rows, as they were
        assert torch.equal(new.readout.weight[new.readout.column[label]], old.readout.weight[old.readout.column[label]])
        assert new.readout.bias[new.readout.column[label]] == old.readout.bias[old.readout.column[label]]
    assert all(label in new.readout.column for label in new.label_sets["mine"]["labels"])
    assert torch.equal(new.readout.mean_cells["planted"], old.readout.mean_cells["planted"])
    assert new.readout.info["inherited_sets"] == ["planted"]
    # the reference cells too: the new set's fitted, the inherited set's as they were
    assert new.reference.keys == [("mine", f"g_{t}") for t in sorted(CELL_TYPES)] + old.reference.keys
    assert new.reference.info["inherited_sets"] == ["planted"]
    kept = slice(new.reference.offsets[4], None)
    assert (new.reference.cells[kept] != old.reference.cells).nnz == 0


def test_a_users_drug_set_with_its_own_drug_and_labels_is_learned_and_answered(tiny_checkpoint, synthetic_set,
                                                                                 tmp_path):
    import warnings

    import instructcell_agent as ica
    from instructcell_agent.api import UnseenContextWarning
    from instructcell_agent.core_model.datasets import DatasetSpec

    # the planted cells as a drug screen: two of the four planted types respond to 'olaparib'
    screen = synthetic_set["adata"].copy()
    screen.obs["outcome"] = ["responder" if t in ("alpha", "beta") else "non-responder"
                             for t in screen.obs["cell_type"]]
    screen.write_h5ad(tmp_path / "screen.h5ad")
    spec = DatasetSpec(name="my_screen", task="drug_response", path=tmp_path / "screen.h5ad", label_key="outcome",
                       split_path=synthetic_set["split_path"], tissue="pancreas", species="human", drug="olaparib")
    cfg = dataclasses.replace(tiny_train_config(lm_steps=4, save_every=4), init_from=str(tiny_checkpoint))
    model = load_checkpoint(train(cfg, tmp_path / "tuned", specs=[spec], show_progress=False))
    assert set(model.labels_for_task("drug_response")) == {"non-responder", "responder"}
    test = screen[read_split(synthetic_set["split_path"])["test"]].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenContextWarning)  # the drug it was trained on is not "unseen"
        result = ica.predict_drug_response(test, drug="olaparib", model=model,
                                           candidates=["non-responder", "responder"])
    assert result.provenance["readout"].startswith("linear gene read-out")
    accuracy = (result.labels == test.obs["outcome"].to_numpy()).mean()
    assert accuracy > 0.9  # planted markers, learned by the read-out fitted on the set's train cells; chance 0.5
    with pytest.warns(UnseenContextWarning, match="cisplatin"):
        ica.predict_drug_response(test[:4].copy(), drug="cisplatin", model=model,
                                  candidates=["non-responder", "responder"])


def test_fine_tuning_refuses_a_set_named_like_an_inherited_set_of_another_task(tiny_checkpoint, synthetic_set,
                                                                              tmp_path):
    from instructcell_agent.core_model.datasets import DatasetSpec

    spec = DatasetSpec(name="planted", task="drug_response", path=synthetic_set["path"], label_key="cell_type",
                       split_path=synthetic_set["split_path"], drug="cisplatin")
    cfg = dataclasses.replace(tiny_train_config(lm_steps=1), init_from=str(tiny_checkpoint))
    with pytest.raises(CheckpointError, match="'planted' \\(drug_response; the start's is annotation\\)"):
        train(cfg, tmp_path / "clash", specs=[spec], show_progress=False)
    assert not (tmp_path / "clash" / "checkpoint").exists()
