"""Stratified splits of a user's labelled file (`instructcell make-split`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from instructcell_agent.core_model.splits import stratified_split


def _cells():
    labels = ["a"] * 50 + ["b"] * 20 + ["c"] * 4 + ["rare"] * 2 + [None] * 3
    names = [f"cell{i}" for i in range(len(labels))]
    return names, labels


def test_every_label_keeps_its_share_in_every_part():
    names, labels = _cells()
    split, report = stratified_split(names, labels, seed=0)
    where = {n: part for part, members in split.items() for n in members}
    counts = {}
    for n, label in zip(names, labels):
        if label is not None:
            counts.setdefault(label, {"train": 0, "valid": 0, "test": 0})[where[n]] += 1
    assert counts["a"] == {"train": 40, "valid": 5, "test": 5}
    assert counts["b"] == {"train": 16, "valid": 2, "test": 2}
    assert counts["c"] == {"train": 2, "valid": 1, "test": 1}  # at least one each, train keeps cells
    assert counts["rare"] == {"train": 2, "valid": 0, "test": 0}  # too rare to split: all learned from
    assert report["labels_kept_in_train"] == ["rare"] and report["unlabelled_cells"] == 3
    assert sum(report["n_cells"].values()) == len(names) - 3 and len(where) == len(names) - 3
    for members in split.values():  # the file's order
        assert members == sorted(members, key=names.index)


def test_the_seed_decides_the_draw():
    names, labels = _cells()
    assert stratified_split(names, labels, seed=1)[0] == stratified_split(names, labels, seed=1)[0]
    assert stratified_split(names, labels, seed=1)[0]["test"] != stratified_split(names, labels, seed=2)[0]["test"]


def test_repeated_names_and_impossible_shares_are_refused():
    with pytest.raises(ValueError, match="obs_names must be unique"):
        stratified_split(["x", "x", "y"], ["a", "a", "a"])
    with pytest.raises(ValueError, match="leave cells for train"):
        stratified_split(["x", "y"], ["a", "a"], valid=0.5, test=0.5)


def test_the_shared_split_is_reproduced_when_shared_data_is_there():
    from instructcell_agent.core_model.datasets import load_catalog
    from instructcell_agent.core_model.errors import InputFileError
    from instructcell_agent.core_model.io import read_h5ad

    try:
        spec = next(s for s in load_catalog() if s.name == "bastidasponce2019_pancreas_e155")
    except (InputFileError, StopIteration):
        pytest.skip("no shared data here")
    adata = read_h5ad(spec.path)
    split, _ = stratified_split(adata.obs_names, adata.obs[spec.label_key])
    canonical = json.loads(spec.split_path.read_text())
    assert {k: set(v) for k, v in split.items()} == {k: set(canonical[k]) for k in ("train", "valid", "test")}


def test_the_command_writes_a_split_and_keeps_the_input(synthetic_set, tmp_path, capsys):
    from instructcell_agent.cli import main

    out = tmp_path / "split.json"
    before = synthetic_set["path"].read_bytes()
    assert main(["make-split", "--data", str(synthetic_set["path"]), "--label-key", "cell_type",
                 "--out", str(out), "--seed", "3"]) == 0
    split = json.loads(out.read_text())
    assert set(split) == {"train", "valid", "test"} and all(split.values())
    assert json.loads(capsys.readouterr().out)["n_cells"] == {k: len(v) for k, v in split.items()}
    assert synthetic_set["path"].read_bytes() == before
    assert main(["make-split", "--data", str(synthetic_set["path"]), "--label-key", "celltype", "--out",
                 str(tmp_path / "never.json")]) == 2
    assert "no column 'celltype'" in (err := capsys.readouterr().err) and "labels to split by" in err
    assert main(["make-split", "--data", str(synthetic_set["path"]), "--label-key", "cell_type", "--out",
                 str(synthetic_set["path"])]) == 2
    assert synthetic_set["path"].read_bytes() == before
    assert not np.any([p.name == "never.json" for p in tmp_path.iterdir()])
