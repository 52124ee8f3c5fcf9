"""`instructcell annotate --by-markers`: cell types from known markers, no model asked."""

from __future__ import annotations

import hashlib
import json

import anndata as ad
import pandas as pd
import pytest
from synthetic import CELL_TYPES, marker_genes

from instructcell_agent.cli import main


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _markers_file(tmp_path):
    path = tmp_path / "markers.json"
    path.write_text(json.dumps({t: marker_genes(t) for t in CELL_TYPES}))
    return path


def test_by_markers_answers_from_a_marker_file_and_keeps_the_input(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    data = synthetic_set["path"]
    before = _digest(data)
    out, table = tmp_path / "out.h5ad", tmp_path / "labels.csv"
    code = main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--by-markers",
                 "--markers", str(_markers_file(tmp_path)), "--out", str(out), "--table", str(table),
                 "--compare-key", "cell_type"])
    assert code == 0
    assert _digest(data) == before
    written = ad.read_h5ad(out)
    truth = written.obs["cell_type"].astype(str)
    assert (written.obs["instructcell_label"].astype(str) == truth).mean() >= 0.95
    assert written.uns["instructcell"]["candidate_route"] == "known markers"
    assert list(written.uns["instructcell"]["markers"]["source"]) == ["given"] * 4
    rows = pd.read_csv(table, index_col="cell")
    assert {f"p_{t}" for t in CELL_TYPES} <= set(rows.columns) and len(rows) == written.n_obs
    printed = capsys.readouterr().out
    assert "answered from known markers alone" in printed and "scored on:" in printed
    assert "alpha (given): 4 markers expressed" in printed


def test_by_markers_refuses_what_does_not_apply(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    base = ["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
            "--out", str(tmp_path / "out.h5ad")]
    markers = ["--markers", str(_markers_file(tmp_path))]
    assert main([*base, "--by-markers", *markers, "--fast"]) == 2
    assert "--fast does not apply" in capsys.readouterr().err
    assert main([*base, *markers]) == 2
    assert "add --by-markers" in capsys.readouterr().err
    assert main([*base, "--by-markers"]) == 2
    assert "--candidates" in capsys.readouterr().err
    assert main([*base, "--by-markers", "--candidates", "alpha,zeta cell"]) == 2
    assert "no known markers for 'zeta cell'" in capsys.readouterr().err
    assert main([*base, "--by-markers", "--candidates", "alpha,beta"]) == 2  # PanglaoDB's genes, not the file's
    assert "none of the known markers of 'alpha', 'beta' is expressed" in capsys.readouterr().err
    assert not (tmp_path / "out.h5ad").exists()


def test_annotate_answers_never_learned_candidates_from_markers_unless_told_not_to(tiny_checkpoint, tmp_path, capsys):
    from synthetic import LIVER_TYPES, make_liver_like

    make_liver_like(40).write_h5ad(tmp_path / "liver.h5ad")
    routes = {}
    for flags in ([], ["--no-markers"]):
        out = tmp_path / f"out{len(flags)}.h5ad"
        assert main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "liver.h5ad"),
                     "--candidates", ",".join(LIVER_TYPES), "--out", str(out), *flags]) == 0
        routes[len(flags)] = ad.read_h5ad(out).uns["instructcell"]["candidate_route"]
    assert routes == {0: "known markers", 1: "text"}
    assert "none of the candidates is a type this checkpoint learned" in capsys.readouterr().out


def test_annotate_answers_never_learned_candidates_without_loading_the_model(tiny_checkpoint, tmp_path, monkeypatch):
    import instructcell_agent as ica
    from instructcell_agent import api
    from instructcell_agent.core_model.checkpoint import load_checkpoint
    from synthetic import LIVER_TYPES, make_liver_like

    cells = make_liver_like(40)
    cells.write_h5ad(tmp_path / "liver.h5ad")
    with pytest.warns(UserWarning):
        direct = ica.annotate(cells, model=load_checkpoint(tiny_checkpoint), candidates=list(LIVER_TYPES))

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(api, "load_model", no_model)
    out = tmp_path / "out.h5ad"
    assert main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "liver.h5ad"),
                 "--candidates", ",".join(LIVER_TYPES), "--out", str(out)]) == 0
    written = ad.read_h5ad(out)
    assert written.uns["instructcell"]["candidate_route"] == "known markers"
    assert list(written.obs["instructcell_label"].astype(str)) == list(direct.labels)
    # an option only the model answers needs it: then it is loaded
    with pytest.raises(AssertionError, match="the model was loaded"):
        main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "liver.h5ad"),
              "--candidates", ",".join(LIVER_TYPES), "--out", str(tmp_path / "fast.h5ad"), "--fast"])


def test_a_marker_check_of_answers_the_markers_chose_says_so(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from instructcell_agent import api
    from synthetic import LIVER_TYPES, make_liver_like

    make_liver_like(40).write_h5ad(tmp_path / "liver.h5ad")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(api, "load_model", no_model)  # the check reads the checkpoint's genes, not its model
    for db in ("panglaodb", "cellmarker2"):
        out = tmp_path / f"{db}.h5ad"
        assert main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "liver.h5ad"),
                     "--candidates", ",".join(LIVER_TYPES), "--marker-check", db, "--out", str(out)]) == 0
        written = ad.read_h5ad(out)
        assert written.uns["instructcell"]["candidate_route"] == "known markers"  # not the names as strings
        assert sorted(written.uns["instructcell_marker_check"]["label"]) == sorted(LIVER_TYPES)
        printed = capsys.readouterr().out
        said = "answered from panglaodb's markers, the ones checked here" in printed
        assert said == (db == "panglaodb"), printed

