"""Fine-tuning without the start's data replays the reference cells the checkpoint keeps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from synthetic import CELL_TYPES, marker_genes, tiny_train_config
from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.datasets import DatasetSpec, read_split
from instructcell_agent.core_model.readout_train import train_readout
from instructcell_agent.core_model.replay import REPLAY_SHARE, inherited_sets, is_replayed, replay_splits
from instructcell_agent.core_model.training import train
from instructcell_agent.core_model.training_data import TrainingData


def test_the_reference_cells_of_an_inherited_set_become_a_training_split(tiny_model, planted_spec):
    mine = dataclasses.replace(planted_spec, name="mine")
    assert inherited_sets(tiny_model, [mine]) == ["planted"]
    assert inherited_sets(tiny_model, [planted_spec]) == []
    (split,) = replay_splits(tiny_model, ["planted"])
    reference = tiny_model.reference
    assert is_replayed(split) and split.spec.task == "annotation"
    assert split.n_cells == reference.cells.shape[0]
    assert (split.X != reference.cells).nnz == 0  # the kept counts, as kept
    for i, (name, label) in enumerate(reference.keys):
        assert name == "planted"
        assert set(split.labels[reference.offsets[i]:reference.offsets[i + 1]]) == {label}
    assert split.fields[0] == {"species": "human", "tissue": "pancreas", "sequencing_method": "", "drug": ""}


def test_replayed_sets_share_half_of_the_draws_whatever_their_number(tiny_model, synthetic_set, planted_spec):
    from instructcell_agent.core_model.corpus import load_split

    (replayed,) = replay_splits(tiny_model, ["planted"])
    own = load_split(planted_spec, tiny_model.vocab, "train")
    clones = [dataclasses.replace(replayed, spec=dataclasses.replace(replayed.spec, name=f"r{i}")) for i in range(3)]
    probs = TrainingData.build([own, replayed, *clones]).dataset_probs(0.5)
    assert probs[1:].sum() == pytest.approx(REPLAY_SHARE) and probs[0] == pytest.approx(1 - REPLAY_SHARE)
    more = TrainingData.build([own, replayed, *clones]).dataset_probs(0.5, replay_share=0.75)
    assert more[1:].sum() == pytest.approx(0.75) and more[0] == pytest.approx(0.25)
    np.testing.assert_allclose(more[1:], probs[1:] * 1.5)  # drawn among themselves as before
    # a run without replayed sets draws as before: cells ** alpha
    plain = TrainingData.build([own, own]).dataset_probs(0.5)
    np.testing.assert_allclose(plain, [0.5, 0.5])


def test_a_label_spelt_alike_keeps_what_the_start_read_in_genes_the_new_file_lacks(tiny_checkpoint, synthetic_set,
                                                                                   tmp_path):
    # The user's file: the planted cells without alpha's marker genes, labels spelt as the start's.
    full = synthetic_set["adata"]
    lacking = set(marker_genes("alpha"))
    mine = full[:, [g not in lacking for g in full.var_names]].copy()
    mine.write_h5ad(tmp_path / "mine.h5ad")
    spec = DatasetSpec(name="mine", task="annotation", path=tmp_path / "mine.h5ad", label_key="cell_type",
                       split_path=synthetic_set["split_path"], tissue="pancreas", species="human")
    start = load_checkpoint(tiny_checkpoint)
    cfg = dataclasses.replace(tiny_train_config(lm_steps=2, save_every=2), init_from=str(tiny_checkpoint))
    tuned = load_checkpoint(train(cfg, tmp_path / "tuned", specs=[spec], show_progress=False))
    # before replay and the prior: the shared row refitted from zero on the new file alone
    plain = load_checkpoint(train(dataclasses.replace(cfg, replay=False), tmp_path / "plain", specs=[spec],
                                  show_progress=False))
    train_readout(plain.path, [spec], inherit_from=start, inherited_rows="replace")
    plain = load_checkpoint(plain.path)

    genes = [start.vocab.index(g) for g in sorted(lacking)]

    def alpha_row(model) -> torch.Tensor:  # the 'alpha' row's weights on the genes the new file lacks
        return model.readout.weight[model.readout.column["alpha"], genes]

    assert torch.count_nonzero(alpha_row(plain)) == 0  # what the file lacks, the row forgot
    assert alpha_row(start).sum() > 0 and alpha_row(tuned).sum() > 0  # still read there
    assert tuned.readout.info["centred_on_prior"] == sorted(CELL_TYPES)
    assert {d["name"] for d in tuned.readout.info["data"]} == {"mine", "planted"}  # the replayed cells joined
    # the start's own cells, whole, are still read right through the shared rows
    test = full[read_split(synthetic_set["split_path"])["test"]]
    expr = torch.log1p(torch.as_tensor(test.X.toarray() / test.X.sum(1).A * 1e4, dtype=torch.float32))
    truth = np.asarray(test.obs["cell_type"], str)
    labels = sorted(CELL_TYPES)
    columns = [labels.index(t) for t in truth]

    def true_logp(model) -> tuple[float, float]:  # mean log-probability of the true label, accuracy
        logp = model.readout.log_probs(expr, labels)
        return float(logp[np.arange(len(truth)), columns].mean()), float((logp.argmax(1).numpy() == columns).mean())

    (tuned_logp, tuned_acc), (plain_logp, _) = true_logp(tuned), true_logp(plain)
    assert tuned_acc >= 0.95
    assert tuned_logp > plain_logp + 0.02  # measured: start -0.011, replayed -0.030, refitted from zero -0.090


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1])
def test_a_replay_share_that_leaves_no_batches_to_either_side_is_refused(share):
    with pytest.raises(ValueError, match="replay_share"):
        tiny_train_config(replay_share=share)
