"""`instructcell convert`: cells as the commands read them, written to one .h5ad."""

from __future__ import annotations

import anndata as ad
import numpy as np

from instructcell_agent.cli import main
from synthetic import make_counts, write_cellranger


def test_convert_writes_what_the_commands_read(tmp_path, capsys):
    cells = make_counts(16, seed=4)
    for name, part in (("ctrl", cells[:10]), ("stim", cells[10:])):
        (tmp_path / name / "outs").mkdir(parents=True)
        write_cellranger(part, tmp_path / name / "outs" / "filtered_feature_bc_matrix.h5", "h5")
    ctrl, stim = (str(tmp_path / n / "outs" / "filtered_feature_bc_matrix.h5") for n in ("ctrl", "stim"))
    meta = tmp_path / "clusters.csv"
    meta.write_text("Barcode,Cluster\n" + "".join(f"{c},{i % 2}\n" for i, c in enumerate(cells.obs_names[:10])))
    out = tmp_path / "ctrl.h5ad"
    assert main(["convert", "--data", ctrl, "--obs-table", str(meta), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    got = ad.read_h5ad(out)
    assert list(got.obs_names) == list(cells.obs_names[:10]) and list(got.obs["Cluster"]) == [0, 1] * 5
    np.testing.assert_array_equal(got.X.toarray(), cells.X[:10].toarray())
    assert got.uns["obs_table"]["n_named"] == 10
    # several samples as one; the split for training on it is then made from the written file
    both = tmp_path / "both.h5ad"
    assert main(["convert", "--data", ctrl, stim, "--out", str(both)]) == 0
    assert list(ad.read_h5ad(both).obs["sample"].value_counts().sort_index()) == [10, 6]
    # refused: another suffix, or the input itself; nothing written
    for bad in (tmp_path / "out.csv", tmp_path / "ctrl" / "outs" / "filtered_feature_bc_matrix.h5"):
        assert main(["convert", "--data", ctrl, "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "name a .h5ad file" in err and not (tmp_path / "out.csv").exists()


def test_candidates_are_read_as_users_write_them(tmp_path):
    import pytest

    from instructcell_agent.cli_data import parse_candidates

    assert parse_candidates("B cell, T cell,NK cell") == ["B cell", "T cell", "NK cell"]
    # Cell Ontology names hold commas: semicolons separate them
    assert parse_candidates("CD4-positive, alpha-beta T cell; B cell") == ["CD4-positive, alpha-beta T cell", "B cell"]
    listed = tmp_path / "candidates.txt"
    listed.write_text("# my types\nCD14-positive, CD16-negative classical monocyte\n\nB cell\n")
    assert parse_candidates(str(listed)) == ["CD14-positive, CD16-negative classical monocyte", "B cell"]
    assert parse_candidates(None) is None and parse_candidates("") is None
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no candidate in it"):
        parse_candidates(str(tmp_path / "empty.txt"))


def test_annotate_takes_its_candidates_from_a_file(tiny_checkpoint, synthetic_set, tmp_path):
    from synthetic import CELL_TYPES

    (tmp_path / "types.txt").write_text("\n".join(CELL_TYPES) + "\n")
    base = ["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"])]
    assert main([*base, "--candidates", ",".join(CELL_TYPES), "--out", str(tmp_path / "listed.h5ad")]) == 0
    assert main([*base, "--candidates", str(tmp_path / "types.txt"), "--out", str(tmp_path / "file.h5ad")]) == 0
    listed, from_file = (ad.read_h5ad(tmp_path / n) for n in ("listed.h5ad", "file.h5ad"))
    assert list(from_file.obs["instructcell_label"]) == list(listed.obs["instructcell_label"])
    np.testing.assert_allclose(from_file.obsm["instructcell_probabilities"], listed.obsm["instructcell_probabilities"])
