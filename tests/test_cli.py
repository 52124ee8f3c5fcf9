"""The `instructcell` command line: evaluate and annotate jobs, errors as messages."""

from __future__ import annotations

import hashlib
import json

import anndata as ad

from instructcell_agent.cli import main


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_evaluate_writes_metrics_json(tiny_checkpoint, synthetic_set, tmp_path):
    out = tmp_path / "metrics.json"
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--split", str(synthetic_set["split_path"]), "--task", "cta", "--label-key", "cell_type",
                 "--n-instructions", "5", "--seed", "2", "--out", str(out)])
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["n_instructions"] == 5 and metrics["n_cells"] == 40
    assert {"accuracy", "macro_f1", "weighted_f1", "invalid_rate", "with_options", "without_options"} <= set(metrics)


def test_annotate_writes_a_new_file_and_keeps_the_input(tiny_checkpoint, synthetic_set, tmp_path):
    before = _digest(synthetic_set["path"])
    out = tmp_path / "annotated.h5ad"
    code = main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--candidates", "alpha,beta,gamma,delta", "--out", str(out)])
    assert code == 0
    assert _digest(synthetic_set["path"]) == before
    assert "instructcell_label" in ad.read_h5ad(out).obs


def test_annotate_refuses_to_overwrite_its_input(tiny_checkpoint, synthetic_set, capsys):
    before = _digest(synthetic_set["path"])
    code = main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--out", str(synthetic_set["path"])])
    assert code == 2 and _digest(synthetic_set["path"]) == before
    assert "error:" in capsys.readouterr().err


def test_a_file_that_is_not_anndata_gives_a_clear_error(tiny_checkpoint, tmp_path, capsys):
    fake = tmp_path / "cells.h5ad"
    fake.write_text("gene,cell1\nCD3E,4\n")
    code = main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(fake), "--out", str(tmp_path / "o.h5ad")])
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "h5ad" in err.lower()


def test_missing_label_key_is_reported(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--split", str(synthetic_set["split_path"]), "--task", "cta", "--label-key", "nope",
                 "--out", str(tmp_path / "m.json")])
    assert code == 2 and "nope" in capsys.readouterr().err
