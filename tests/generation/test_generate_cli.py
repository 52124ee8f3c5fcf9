"""`instructcell generate` and `instructcell evaluate --task cpcg`."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np

from instructcell_agent.cli import main


def test_generate_writes_an_h5ad_with_conditions(gen_checkpoint, tmp_path, capsys):
    out = tmp_path / "gen" / "cells.h5ad"
    rc = main(["generate", "--checkpoint", str(gen_checkpoint), "--cell-type", "alpha", "--condition", "stim",
               "--n", "6", "--seed", "2", "--out", str(out)])
    assert rc == 0
    adata = ad.read_h5ad(out)
    assert adata.n_obs == 6 and set(adata.obs["condition"]) == {"IFN-beta stimulated"}
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # atomic: no temporary file left
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_cells"] == 6 and (printed["species"], printed["tissue"]) == ("human", "pancreas")
    assert printed["learned_from"] == adata.uns["instructcell_generation"]["learned_from"]  # the set it drew on
    values = adata.X.toarray()
    assert (values >= 0).all() and np.array_equal(values, np.round(values))


def test_generate_refuses_to_overwrite_an_input(gen_checkpoint, tmp_path, capsys):
    target = gen_checkpoint / "gene_vocab.json"
    before = target.read_bytes()
    rc = main(["generate", "--checkpoint", str(gen_checkpoint), "--cell-type", "alpha", "--n", "2", "--seed", "0",
               "--out", str(target)])
    assert rc == 2 and target.read_bytes() == before
    assert "refusing to overwrite" in capsys.readouterr().err


def test_generate_refuses_unseen_conditions(gen_checkpoint, tmp_path, capsys):
    out = tmp_path / "x.h5ad"
    rc = main(["generate", "--checkpoint", str(gen_checkpoint), "--cell-type", "hepatocyte", "--n", "2", "--seed", "0",
               "--out", str(out)])
    assert rc == 2 and not out.exists()
    assert "not seen in training" in capsys.readouterr().err
    rc = main(["generate", "--checkpoint", str(gen_checkpoint), "--cell-type", "hepatocyte", "--n", "2", "--seed", "0",
               "--out", str(out), "--allow-unseen"])
    assert rc == 0 and ad.read_h5ad(out).obs["unseen_condition"].all()


def test_evaluate_cpcg_writes_metrics(gen_checkpoint, condition_set, tmp_path):
    out = tmp_path / "cpcg.json"
    rc = main(["evaluate", "--task", "cpcg", "--checkpoint", str(gen_checkpoint), "--data", str(condition_set["path"]),
               "--split", str(condition_set["split_path"]), "--label-key", "cell_type", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["task"] == "cpcg" and result["n_real"] == 40 and "pknn@10" in result
