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
