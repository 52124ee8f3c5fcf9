"""The `instructcell` command line: evaluate and annotate jobs, errors as messages."""

from __future__ import annotations

import hashlib
import json

import anndata as ad
import numpy as np
import pytest
import torch

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
    assert metrics["precision"] == "float32"  # evaluate's default: the same numbers on every machine
    assert metrics["scoring"] == "decisive tokens"  # the set's labels are ones the checkpoint learned
    assert {"accuracy", "macro_f1", "weighted_f1", "invalid_rate", "with_options", "without_options"} <= set(metrics)


def test_annotate_writes_a_new_file_and_keeps_the_input(tiny_checkpoint, synthetic_set, tmp_path):
    before = _digest(synthetic_set["path"])
    out = tmp_path / "annotated.h5ad"
    code = main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--candidates", "alpha,beta,gamma,delta", "--out", str(out), "--precision", "bfloat16"])
    assert code == 0
    assert _digest(synthetic_set["path"]) == before
    annotated = ad.read_h5ad(out)
    assert "instructcell_label" in annotated.obs
    assert annotated.uns["instructcell"]["precision"] == "bfloat16"  # provenance says how it ran
    assert annotated.uns["instructcell"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("layout", ["h5", "mtx"])
def test_annotate_reads_cellranger_output_as_the_same_cells(tiny_checkpoint, synthetic_set, tmp_path, layout):
    from synthetic import write_cellranger

    cells = synthetic_set["adata"][:24]
    cells.write_h5ad(tmp_path / "cells.h5ad")
    dest = tmp_path / ("filtered_feature_bc_matrix.h5" if layout == "h5" else "filtered_feature_bc_matrix")
    write_cellranger(cells, dest, layout, extra_features=2)
    answers = {}
    for name, data in (("h5ad", tmp_path / "cells.h5ad"), ("cellranger", dest)):
        out = tmp_path / f"{name}_out.h5ad"
        # Cell Ranger's files hold no species or tissue column: both runs name them
        assert main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--out", str(out),
                     "--candidates", "alpha,beta,gamma,delta", "--species", "human", "--tissue", "pancreas",
                     "--precision", "float32"]) == 0
        answers[name] = ad.read_h5ad(out)
    assert list(answers["cellranger"].obs_names) == list(cells.obs_names)
    assert list(answers["cellranger"].obs["instructcell_label"]) == list(answers["h5ad"].obs["instructcell_label"])
    np.testing.assert_allclose(answers["cellranger"].obs["instructcell_confidence"],
                               answers["h5ad"].obs["instructcell_confidence"], rtol=1e-5)
    assert answers["cellranger"].n_vars == cells.n_vars  # the antibody features were left out


def test_annotate_reads_one_genome_of_a_mixed_species_matrix(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    import pandas as pd
    from synthetic import make_barnyard, write_cellranger

    cells = synthetic_set["adata"][:24]
    barnyard, genomes = make_barnyard(cells)
    write_cellranger(barnyard, tmp_path / "f.h5", "h5", genomes=genomes)
    table = tmp_path / "labels.csv"
    base = ["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "f.h5"), "--table", str(table),
            "--candidates", "alpha,beta,gamma,delta", "--species", "human", "--tissue", "pancreas"]
    assert main(base) == 2
    assert "counted against 2 genomes (GRCh38, mm10)" in capsys.readouterr().err and not table.exists()
    assert main([*base, "--genome", "GRCh38"]) == 0
    assert list(pd.read_csv(table, index_col="cell").index) == list(cells.obs_names)  # the human cells only
    captured = capsys.readouterr()
    assert "warning: " in captured.err and "left out 8 mostly on another genome's genes" in captured.err
    # the genes read without their prefix: every one matches the vocabulary, none of mm10's is read
    assert "genes: 120 of the model's 120 matched (100%) among the file's 120" in captured.out


def test_annotate_draws_the_answers_on_a_map_the_output_keeps(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    from test_cell_map import PNG_MAGIC

    before = _digest(synthetic_set["path"])
    out, plot = tmp_path / "annotated.h5ad", tmp_path / "map.png"
    base = ["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
            "--candidates", "alpha,beta,gamma,delta"]
    assert main([*base, "--plot", str(plot)]) == 0  # a picture alone is an output too
    assert plot.read_bytes()[:8] == PNG_MAGIC and f"wrote {plot}" in capsys.readouterr().out
    plot.unlink()
    assert main([*base, "--plot", str(plot), "--out", str(out)]) == 0
    annotated = ad.read_h5ad(out)
    assert annotated.obsm["X_umap"].shape == (annotated.n_obs, 2)  # the computed map, kept
    assert _digest(synthetic_set["path"]) == before
    assert main([*base, "--plot", str(tmp_path / "map.pdf"), "--out", str(out)]) == 2
    assert "--plot" in (err := capsys.readouterr().err) and "name a .png file" in err
    # a map that cannot be drawn (four cells) costs no answers: they are written, the status says it failed
    synthetic_set["adata"][:4].write_h5ad(tmp_path / "four.h5ad")
    table = tmp_path / "four.csv"
    assert main([*base[:4], str(tmp_path / "four.h5ad"), *base[5:], "--plot", str(tmp_path / "four.png"),
                 "--table", str(table)]) == 2
    assert "no map drawn (4 cells with counts are too few" in capsys.readouterr().err
    assert table.exists() and not (tmp_path / "four.png").exists()


def test_annotate_reports_what_each_group_was_answered(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    cells = synthetic_set["adata"][:80].copy()
    cells.obs["cluster"] = cells.obs["cell_type"].cat.codes.astype(str)  # clusters that are the planted types
    cells.obs["barcode"] = cells.obs_names
    cells.write_h5ad(tmp_path / "cells.h5ad")
    out = tmp_path / "annotated.h5ad"
    base = ["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "cells.h5ad"),
            "--candidates", "alpha,beta,gamma,delta", "--out", str(out)]
    assert main([*base, "--groupby", "cluster"]) == 0
    printed = capsys.readouterr().out
    stored = ad.read_h5ad(out).uns["instructcell"]["composition"]
    assert stored["key"] == "cluster" and list(stored["table"]["group"]) == ["0", "1", "2", "3"]
    for group, answer, share in zip(stored["table"]["group"], stored["table"]["answer"], stored["table"]["share"]):
        assert f"  {group}: {answer} {share:.2f} of 20" in printed
    # each planted cluster is answered mostly as its own type (chance: 0.25)
    planted = dict(zip(cells.obs["cluster"], cells.obs["cell_type"].astype(str)))
    assert sum(planted[g] == a for g, a in zip(stored["table"]["group"], stored["table"]["answer"])) >= 3
    for key, message in (("clusters", "obs has no column 'clusters'"), ("barcode", "80 distinct values")):
        out.unlink(missing_ok=True)
        assert main([*base, "--groupby", key]) == 2 and message in capsys.readouterr().err
        assert not out.exists()


def test_annotate_joins_metadata_from_a_table_for_groups_and_comparison(tiny_checkpoint, synthetic_set, tmp_path,
                                                                        capsys):
    cells = synthetic_set["adata"][:40].copy()
    clusters = cells.obs["cell_type"].cat.codes.astype(str)
    with_column = cells.copy()
    with_column.obs["cluster"] = clusters
    with_column.write_h5ad(tmp_path / "with_column.h5ad")
    del cells.obs["cell_type"]  # the counts file knows nothing about its cells
    cells.write_h5ad(tmp_path / "bare.h5ad")
    meta = tmp_path / "meta.tsv"
    meta.write_text("cell\tcluster\tauthor_type\n" + "".join(
        f"{c}\t{k}\t{t}\n" for c, k, t in zip(with_column.obs_names, clusters, with_column.obs["cell_type"])))
    base = ["annotate", "--checkpoint", str(tiny_checkpoint), "--candidates", "alpha,beta,gamma,delta",
            "--groupby", "cluster"]
    stored = {}
    for name, extra in (("with_column", []), ("bare", ["--obs-table", str(meta), "--compare-key", "author_type"])):
        out = tmp_path / f"{name}_out.h5ad"
        assert main([*base, "--data", str(tmp_path / f"{name}.h5ad"), "--out", str(out), *extra]) == 0
        stored[name] = ad.read_h5ad(out)
    printed = capsys.readouterr().out
    assert "agreement with obs['author_type']" in printed
    assert list(stored["bare"].obs["author_type"]) == list(with_column.obs["cell_type"])
    composition = [stored[n].uns["instructcell"]["composition"]["table"] for n in ("with_column", "bare")]
    assert list(composition[0]["answer"]) == list(composition[1]["answer"])
    np.testing.assert_allclose(composition[0]["share"], composition[1]["share"])
    # a table of other cells is refused before the model runs, and nothing is written
    other = tmp_path / "other.csv"
    other.write_text("cell,cluster\n" + "".join(f"x{i},1\n" for i in range(40)))
    out = tmp_path / "refused.h5ad"
    assert main([*base, "--data", str(tmp_path / "bare.h5ad"), "--out", str(out), "--obs-table", str(other)]) == 2
    assert "names 0 of the data's 40 cells" in capsys.readouterr().err and not out.exists()


def test_annotate_reads_several_samples_as_one_and_reports_each(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    import pandas as pd
    from synthetic import write_cellranger

    cells = synthetic_set["adata"]
    for name, part in (("ctrl", cells[:24]), ("stim", cells[24:40])):
        (tmp_path / name / "outs").mkdir(parents=True)
        write_cellranger(part, tmp_path / name / "outs" / "filtered_feature_bc_matrix.h5", "h5")
    table = tmp_path / "labels.csv"
    assert main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data",
                 *(str(tmp_path / n / "outs" / "filtered_feature_bc_matrix.h5") for n in ("ctrl", "stim")),
                 "--candidates", "alpha,beta,gamma,delta", "--species", "human", "--table", str(table)]) == 0
    written = pd.read_csv(table, index_col="cell")
    assert list(written.index) == [f"{c}-ctrl" for c in cells.obs_names[:24]] + [
        f"{c}-stim" for c in cells.obs_names[24:40]]
    printed = capsys.readouterr().out
    assert "answers by obs['sample']" in printed and "  ctrl: " in printed and " of 24" in printed


def test_annotate_writes_a_table_beside_the_file(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    import pandas as pd

    out, table = tmp_path / "annotated.h5ad", tmp_path / "labels.tsv"
    base = ["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
            "--candidates", "alpha,beta,gamma,delta", "--out", str(out)]
    assert main([*base, "--table", str(table)]) == 0
    written, annotated = pd.read_csv(table, sep="\t", index_col="cell"), ad.read_h5ad(out)
    assert list(written.index) == list(annotated.obs_names)
    assert list(written["label"]) == list(annotated.obs["instructcell_label"].astype(str))
    assert list(written["ontology_id"]) == list(annotated.obs["instructcell_ontology_id"].astype(str))
    np.testing.assert_allclose(written[[f"p_{c}" for c in ("alpha", "beta", "gamma", "delta")]].to_numpy(),
                               annotated.obsm["instructcell_probabilities"], rtol=1e-6)
    out.unlink()
    assert main([*base, "--table", str(tmp_path / "labels.xlsx")]) == 2
    assert "name a .csv or .tsv file" in capsys.readouterr().err
    assert main([*base[:-1], str(tmp_path / "same.csv"), "--table", str(tmp_path / "same.csv")]) == 2
    assert "is --out" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "same.csv").exists()  # refused before anything was written
    # the table alone (no copy of the matrix written), or neither: refused
    assert main([*base[:-2], "--table", str(tmp_path / "only.csv")]) == 0
    assert list(pd.read_csv(tmp_path / "only.csv", index_col="cell")["label"]) == list(written["label"])
    assert main(base[:-2]) == 2 and "name where the answers go" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tsv", "only.csv"]


def test_annotate_compares_with_known_labels_and_refuses_a_missing_column(tiny_checkpoint, synthetic_set,
                                                                          tmp_path, capsys):
    out = tmp_path / "annotated.h5ad"
    args = ["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
            "--candidates", "alpha,beta,gamma,delta", "--out", str(out)]
    assert main(args + ["--compare-key", "cell_type"]) == 0
    printed = capsys.readouterr().out
    annotated = ad.read_h5ad(out)
    stored = annotated.uns["instructcell"]["agreement"]
    expected = (annotated.obs["instructcell_label"].astype(str) == annotated.obs["cell_type"].astype(str)).mean()
    assert stored["key"] == "cell_type" and stored["agreement"] == pytest.approx(expected)
    assert f"agreement with obs['cell_type']: {expected:.3f}" in printed
    assert printed.strip().splitlines()[-1] == f"wrote {out}"
    missing = tmp_path / "never.h5ad"
    assert main(args[:-1] + [str(missing), "--compare-key", "celltype"]) == 2
    assert "no column 'celltype'" in capsys.readouterr().err and not missing.exists()


def test_annotate_checks_the_answers_against_known_markers(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    out = tmp_path / "annotated.h5ad"
    assert main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--candidates", "alpha,beta,gamma,delta", "--out", str(out), "--marker-check"]) == 0
    printed = capsys.readouterr().out
    annotated = ad.read_h5ad(out)
    table = annotated.uns["instructcell_marker_check"]
    assert sorted(table["label"]) == sorted(set(annotated.obs["instructcell_label"].astype(str)))
    # the planted genes (GENE000...) are no database's markers of the pancreas names the labels map to
    assert set(table["support"]) == {"no known markers"} and "marker check (panglaodb, human)" in printed
    assert annotated.obs["instructcell_marker_score"].isna().all()


def test_marker_check_reads_a_files_own_labels_and_keeps_the_input(tiny_checkpoint, synthetic_set, tmp_path,
                                                                   capsys):
    before = _digest(synthetic_set["path"])
    out, table = tmp_path / "checked.h5ad", tmp_path / "labels.tsv"
    args = ["marker-check", "--data", str(synthetic_set["path"]), "--label-key", "cell_type",
            "--checkpoint", str(tiny_checkpoint)]
    assert main(args + ["--out", str(out), "--table", str(table)]) == 0
    printed = capsys.readouterr().out
    assert "marker check (panglaodb, human)" in printed and printed.strip().endswith(f"wrote {out}, {table}")
    rows = table.read_text().splitlines()
    assert rows[0].split("\t")[:3] == ["label", "n_cells", "n_markers"] and len(rows) == 1 + 4
    assert "instructcell_marker_score" in ad.read_h5ad(out).obs
    assert _digest(synthetic_set["path"]) == before
    assert main(args + ["--out", str(synthetic_set["path"])]) == 2
    assert "is the input" in capsys.readouterr().err
    assert main(args[:-4] + ["--label-key", "celltype", "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "'celltype' is not an obs column" in capsys.readouterr().err


def test_annotate_labels_low_confidence_cells_unassigned(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    out = tmp_path / "annotated.h5ad"
    args = ["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
            "--candidates", "alpha,beta,gamma,delta", "--out", str(out), "--compare-key", "cell_type"]
    assert main(args + ["--unassigned-below", "1"]) == 0  # every confidence is below 1
    printed = capsys.readouterr().out
    annotated = ad.read_h5ad(out)
    n = annotated.n_obs
    assert (annotated.obs["instructcell_label"] == "Unassigned").all()
    assert annotated.uns["instructcell"]["unassigned_below"] == 1.0
    assert f"{n} cells 'Unassigned': confidence below 1" in printed and f"left out: {n} 'Unassigned'" in printed
    assert main(args[:-2] + ["--out", str(tmp_path / "never.h5ad"), "--unassigned-below", "0"]) == 2
    assert "unassigned_below takes a confidence in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "never.h5ad").exists()


def test_annotate_fast_says_how_many_cells_the_readout_answered(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    out = tmp_path / "annotated.h5ad"
    assert main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--candidates", "alpha,beta,gamma,delta", "--out", str(out), "--fast"]) == 0
    record = ad.read_h5ad(out).uns["instructcell"]["fast"]
    n_sure, n_cells = record["cells_answered_by_readout_alone"], record["cells_answered"]
    assert 0 < n_sure <= n_cells and f"fast: {n_sure} of {n_cells} cells answered by the linear read-out alone" in (
        capsys.readouterr().out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_drug_response_writes_probabilities_per_cell_and_keeps_the_input(tiny_checkpoint, synthetic_set, tmp_path):
    before = _digest(synthetic_set["path"])
    out = tmp_path / "drug.h5ad"
    code = main(["drug-response", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--drug", "cisplatin", "--out", str(out), "--precision", "float32"])
    assert code == 0 and _digest(synthetic_set["path"]) == before
    answered = ad.read_h5ad(out)
    assert set(answered.obs["instructcell_drug_label"]) <= {"resistant", "sensitive"}
    assert answered.obsm["instructcell_drug_probabilities"].shape == (answered.n_obs, 2)
    assert answered.uns["instructcell_drug"]["drug"] == "cisplatin"  # provenance names the drug asked about


def test_drug_response_requires_a_drug(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["drug-response", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
              "--out", str(tmp_path / "drug.h5ad")])
    assert "--drug" in capsys.readouterr().err


def test_asking_for_a_gpu_that_is_not_there_is_a_clear_error(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    out = tmp_path / "annotated.h5ad"
    code = main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--out", str(out), "--device", "cuda"])
    assert code == 2 and not out.exists()
    assert "sees no GPU" in capsys.readouterr().err
    # auto falls back to the CPU
    assert main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--out", str(out), "--device", "auto"]) == 0


def test_annotate_free_answers_name_the_checkpoints_labels_for_the_tissue(tiny_checkpoint, synthetic_set, tmp_path):
    out = tmp_path / "free.h5ad"
    code = main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--species", "human", "--tissue", "pancreas", "--out", str(out)])
    assert code == 0
    assert set(ad.read_h5ad(out).obs["instructcell_label"]) <= {"alpha", "beta", "gamma", "delta"}


def test_annotate_refuses_to_overwrite_its_input(tiny_checkpoint, synthetic_set, capsys):
    before = _digest(synthetic_set["path"])
    code = main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--out", str(synthetic_set["path"])])
    assert code == 2 and _digest(synthetic_set["path"]) == before
    assert "error:" in capsys.readouterr().err


def test_an_interrupted_annotation_writes_nothing_and_says_so(tiny_checkpoint, synthetic_set, tmp_path, capsys,
                                                              monkeypatch):
    from instructcell_agent import cli

    def stop_after_first_batch(desc):
        def report(done, total):
            raise KeyboardInterrupt  # as Ctrl-C arrives between two batches
        return report

    monkeypatch.setattr(cli, "_progress_bar", stop_after_first_batch)
    out, table = tmp_path / "annotated.h5ad", tmp_path / "labels.csv"
    code = main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--candidates", "alpha,beta,gamma,delta", "--out", str(out), "--table", str(table)])
    assert code == 130
    assert "interrupted: outputs are written only when complete" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither file, nor a temporary one


def test_argument_errors_and_warnings_read_as_messages(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    code = main(["explain", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--out", str(tmp_path / "why"), "--top-k", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "error: top_k must be at least 1" in err and "Traceback" not in err
    # a warning prints its text, not the source line that raised it
    cells = ad.read_h5ad(synthetic_set["path"])[:10].copy()
    cells.X = cells.X.toarray()
    cells.X[0] = 0
    cells.write_h5ad(tmp_path / "emptied.h5ad")
    code = main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "emptied.h5ad"),
                 "--out", str(tmp_path / "answered.h5ad")])
    err = capsys.readouterr().err
    assert code == 0 and "warning: 1 of 10 cells" in err and "EmptyCellWarning" not in err
    assert ad.read_h5ad(tmp_path / "answered.h5ad").obs["instructcell_label"].isna().sum() == 1
    # no cell with counts (X emptied, the counts in a layer): refused, naming the layer, nothing written
    counts = cells.X.copy()
    cells.X[:] = 0
    cells.layers["counts"] = counts
    cells.write_h5ad(tmp_path / "zeros.h5ad")
    code = main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "zeros.h5ad"),
                 "--out", str(tmp_path / "none.h5ad")])
    err = capsys.readouterr().err
    assert code == 2 and "error: none of the 10 cells has counts" in err and "layer 'counts'" in err
    assert not (tmp_path / "none.h5ad").exists()
    # the answers explained: the unlabelled cell is left out, with a note; a missing column is refused
    base = ["explain", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "answered.h5ad")]
    assert main([*base, "--label-key", "instructcell_label", "--out", str(tmp_path / "why_answers")]) == 0
    assert "1 without a label of 10 cells left out" in capsys.readouterr().out
    assert ad.read_h5ad(tmp_path / "why_answers" / "explained.h5ad").n_obs == 9
    assert main([*base, "--label-key", "celltype", "--out", str(tmp_path / "why_not")]) == 2
    assert "obs has no column 'celltype'" in capsys.readouterr().err and not (tmp_path / "why_not").exists()
    # why each answer rather than its runner-up; a versus that is no candidate is refused before any output
    assert main([*base, "--label-key", "instructcell_label", "--versus", "runner-up",
                 "--out", str(tmp_path / "why_rather")]) == 0
    rather = ad.read_h5ad(tmp_path / "why_rather" / "explained.h5ad")
    assert (rather.obs["instructcell_saliency_label"].astype(str)
            == rather.obs["instructcell_saliency_predicted"].astype(str) + " vs "
            + rather.obs["instructcell_saliency_versus"].astype(str)).all()
    assert main([*base, "--label-key", "instructcell_label", "--versus", "acinar",
                 "--out", str(tmp_path / "why_acinar")]) == 2
    assert "'acinar' is neither an obs column nor among the candidates" in capsys.readouterr().err
    assert not (tmp_path / "why_acinar").exists()


def test_gene_names_can_come_from_a_var_column(tiny_checkpoint, synthetic_set, tmp_path):
    cells = ad.read_h5ad(synthetic_set["path"])[:12].copy()
    cells.var["symbol"] = list(cells.var_names)
    cells.var_names = [f"feature{i}" for i in range(cells.n_vars)]
    cells.write_h5ad(tmp_path / "numbered.h5ad")
    args = ["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "numbered.h5ad")]
    assert main(args + ["--out", str(tmp_path / "named.h5ad"), "--gene-key", "symbol"]) == 0
    out = ad.read_h5ad(tmp_path / "named.h5ad")
    assert out.uns["instructcell"]["alignment"]["n_matched"] == 120 and out.obs["instructcell_label"].notna().all()
    # no gene of the model's under the var_names: the column holding the names is found without --gene-key
    assert main(args + ["--out", str(tmp_path / "found.h5ad")]) == 0
    found = ad.read_h5ad(tmp_path / "found.h5ad")
    assert found.uns["instructcell"]["alignment"]["names_from"] == "var['symbol']"
    assert list(found.obs["instructcell_label"]) == list(out.obs["instructcell_label"])
    del cells.var["symbol"]
    cells.write_h5ad(tmp_path / "unnamed.h5ad")
    assert main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "unnamed.h5ad"),
                 "--out", str(tmp_path / "none.h5ad")]) == 2  # no gene names anywhere: refused


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


def _user_catalog(tmp_path, synthetic_set, **entry):
    """A user's own drug-response set in the shared catalog format: the planted cells, with the
    cell type standing in for the response label (any labels must work)."""
    base = {"name": "my_drug_screen", "task": "dsp", "path": str(synthetic_set["path"]), "label": "cell_type",
            "split": str(synthetic_set["split_path"]), "drug": "olaparib", "tissue": "ovary"}
    path = tmp_path / "my_catalog.json"
    path.write_text(json.dumps([{**base, **entry}]))
    return path


def test_train_adds_a_users_own_drug_set_from_a_catalog_file(synthetic_set, tmp_path, monkeypatch, capsys):
    import instructcell_agent.core_model.training as training

    seen = {}

    def fake_train(cfg, out, *, resume=False, command=None, specs=None, **_):
        seen["specs"] = specs
        return out

    monkeypatch.setattr(training, "train", fake_train)
    code = main(["train", "--out", str(tmp_path / "run"), "--backbone", "tiny", "--no-shared",
                 "--catalog", str(_user_catalog(tmp_path, synthetic_set))])
    assert code == 0
    (spec,) = seen["specs"]
    assert (spec.name, spec.task, spec.drug, spec.label_key) == ("my_drug_screen", "drug_response", "olaparib",
                                                                 "cell_type")
    assert spec.path == synthetic_set["path"] and spec.split_path == synthetic_set["split_path"]
    # the checkpoint comes without confidence temperatures: the run says how to fit them
    catalog = tmp_path / "my_catalog.json"
    assert f"instructcell calibrate --checkpoint {tmp_path / 'run'} --catalog {catalog}" in capsys.readouterr().err


def test_a_drug_set_without_its_drug_is_refused_with_a_message(synthetic_set, tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--backbone", "tiny", "--no-shared",
                 "--catalog", str(_user_catalog(tmp_path, synthetic_set, drug=""))])
    assert code != 0
    assert "drug" in capsys.readouterr().err


def test_train_passes_its_options_to_the_config(synthetic_set, tmp_path, monkeypatch):
    import instructcell_agent.core_model.training as training
    from instructcell_agent.core_model.training import TrainConfig

    seen = {}

    def fake_train(cfg, out, **_):
        seen["cfg"] = cfg
        return out

    monkeypatch.setattr(training, "train", fake_train)
    base = ["train", "--out", str(tmp_path / "run"), "--backbone", "tiny", "--no-shared",
            "--catalog", str(_user_catalog(tmp_path, synthetic_set))]
    assert main(base) == 0
    defaults = seen["cfg"]
    assert (defaults.hidden_dim, defaults.gene_keep, defaults.panel_drop_prob) == (
        TrainConfig.hidden_dim, TrainConfig.gene_keep, TrainConfig.panel_drop_prob)
    assert (defaults.lr, defaults.init_from) == (TrainConfig.lr, None)
    assert (defaults.aux_weight, defaults.linear_skip, defaults.freeze_encoder) == (
        TrainConfig.aux_weight, False, False)
    assert defaults.hvg_panel_prob == TrainConfig.hvg_panel_prob == 0.0
    assert (defaults.replay, defaults.replay_share) == (True, TrainConfig.replay_share)
    assert defaults.anchor_weight == TrainConfig.anchor_weight == 0.0
    assert defaults.distill_weight == TrainConfig.distill_weight == 0.0
    assert main([*base, "--hidden-dim", "96", "--gene-keep", "1", "--panel-drop", "0", "--lr", "1e-4",
                 "--init-from", "ckpt", "--aux-weight", "2", "--linear-skip", "--freeze-encoder",
                 "--hvg-panel", "0.3", "--replay-share", "0.75", "--anchor-weight", "0.05",
                 "--distill-weight", "2"]) == 0
    got = seen["cfg"]
    assert (got.hidden_dim, got.gene_keep, got.panel_drop_prob, got.hvg_panel_prob) == (96, 1.0, 0.0, 0.3)
    assert (got.lr, got.init_from) == (1e-4, "ckpt")
    assert (got.aux_weight, got.linear_skip, got.freeze_encoder) == (2.0, True, True)
    assert (got.replay_share, got.anchor_weight, got.distill_weight) == (0.75, 0.05, 2.0)


def test_an_anchor_without_a_start_to_anchor_to_is_an_error(synthetic_set, tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--backbone", "tiny", "--no-shared",
                 "--catalog", str(_user_catalog(tmp_path, synthetic_set)), "--anchor-weight", "0.1"])
    assert code != 0
    assert "init_from" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_info_prints_how_the_shipped_checkpoint_was_made(capsys):
    from instructcell_agent import default_checkpoint_path

    assert main(["info"]) == 0  # what a user looks for first: the label sets, the drugs, what generate draws
    summary = capsys.readouterr().out
    labels = json.loads((default_checkpoint_path() / "labels.json").read_text())
    assert all(name in summary for name in labels)
    assert "kang2018_pbmc_ifnb (annotation; human, peripheral blood; 7 labels): B, CD14+Mono" in summary
    assert "drug response to erlotinib" in summary and "conditions IFN-beta stimulated, control" in summary
    assert summary.rstrip().endswith("instructcell info --json")
    assert main(["info", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    config = json.loads((default_checkpoint_path() / "config.json").read_text())
    assert printed["command"] == config["command"]
    # Whatever chain of starting points the checkpoint records is shown, down to its data hashes.
    for key in ("started_from", "resumed_from", "weights_storage"):
        assert printed.get(key) == config.get(key)
    assert all(len(entry["sha256"]) == 64 for entry in printed["data"])
    # the shipped reference cells say how they were kept, from which data
    reference = json.loads((default_checkpoint_path() / "reference.json").read_text())
    assert printed["reference"]["labels"] == len(reference["keys"]) and printed["reference"]["per_label"] == 40
    assert printed["reference"]["informative_genes"] == 2000
    assert printed["reference"]["command"].startswith("instructcell fit-reference")
    assert all(len(entry["sha256"]) == 64 for entry in printed["reference"]["data"])
    # what `generate` can draw: every training condition, grouped by type, context and set
    rows = json.loads((default_checkpoint_path() / "generator.json").read_text())["conditions"]
    grouped = printed["generator"]["conditions"]
    assert sum(g["n_cells"] for g in grouped) == sum(r["n_cells"] for r in rows)
    kang_b = next(g for g in grouped if g["cell_type"] == "B" and g["dataset"] == "kang2018_pbmc_ifnb")
    assert sorted(kang_b["conditions"]) == ["IFN-beta stimulated", "control"]


def test_calibrate_writes_temperatures_from_the_command_line(tiny_checkpoint, synthetic_set, tmp_path, capsys,
                                                             monkeypatch):
    import shutil

    from instructcell_agent.core_model import datasets
    from instructcell_agent.core_model.errors import InputFileError

    def no_shared_data():
        raise InputFileError("shared data not found")

    monkeypatch.setattr(datasets, "load_catalog", no_shared_data)  # the user's own sets need no shared data
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    (ckpt / "temperature.json").unlink(missing_ok=True)
    catalog = _user_catalog(tmp_path, synthetic_set, name="planted", task="cta", drug="")
    assert main(["calibrate", "--checkpoint", str(ckpt), "--catalog", str(catalog)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stored = json.loads((ckpt / "temperature.json").read_text())
    # each mode is fitted, or skipped with the reason (too few wrong answers on the planted cells)
    assert set(printed["temperature"]) | set(printed["skipped"]) == {"readout", "lm_alone"}
    assert stored["temperature"] == printed["temperature"] and all(t > 0 for t in stored["temperature"].values())
    assert printed["depth_term"] == {} and "depth" not in stored
    # with thinned copies too, each fitted temperature gets its depth term
    assert main(["calibrate", "--checkpoint", str(ckpt), "--catalog", str(catalog), "--depths", "0.3"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stored = json.loads((ckpt / "temperature.json").read_text())
    assert set(printed["depth_term"]) == set(printed["temperature"]) and stored["depth"] == printed["depth_term"]
    assert stored["fitted_on"]["depths"] == [1.0, 0.3]


def test_train_readout_refits_a_checkpoints_readout(tiny_checkpoint, synthetic_set, tmp_path, capsys, monkeypatch):
    import shutil

    from instructcell_agent.core_model import datasets
    from instructcell_agent.core_model.errors import InputFileError
    from instructcell_agent.core_model.readout import load_readout

    def no_shared_data():
        raise InputFileError("shared data not found")

    monkeypatch.setattr(datasets, "load_catalog", no_shared_data)  # the user's own sets need no shared data

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    for name in ("readout.json", "readout.safetensors"):
        (ckpt / name).unlink()
    catalog = _user_catalog(tmp_path, synthetic_set, name="planted", task="cta", drug="")
    assert main(["train-readout", "--checkpoint", str(ckpt), "--catalog", str(catalog), "--weight", "0.5",
                 "--panel-copies", "1", "--hvg-copies", "1", "--thin-copies", "1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_cells"] == 160
    vocab = json.loads((ckpt / "gene_vocab.json").read_text())
    readout = load_readout(ckpt, vocab)
    assert readout.answer_weight == 0.5 and readout.info["data"][0]["split"] == "train"
    # each cell fitted four times: as it is, through a random gene panel, cut to its set's HVGs, thinned
    assert (readout.info["panel_copies"], readout.info["hvg_copies"], readout.info["thin_copies"],
            readout.info["n_fitted_rows"]) == (1, 1, 1, 640)
    out = tmp_path / "m.json"
    base = ["evaluate", "--checkpoint", str(ckpt), "--data", str(synthetic_set["path"]),
            "--split", str(synthetic_set["split_path"]), "--task", "cta", "--label-key", "cell_type",
            "--out", str(out)]
    assert main(base) == 0
    assert json.loads(out.read_text())["readout"] == "linear gene read-out, weight 0.5"
    assert main([*base, "--no-readout"]) == 0
    assert json.loads(out.read_text())["readout"] == "none"


def test_fit_reference_keeps_cells_that_typicality_reads(tiny_checkpoint, synthetic_set, tmp_path, capsys,
                                                        monkeypatch):
    import shutil

    from instructcell_agent.core_model import datasets
    from instructcell_agent.core_model.errors import InputFileError

    def no_shared_data():
        raise InputFileError("shared data not found")

    monkeypatch.setattr(datasets, "load_catalog", no_shared_data)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    for name in ("reference.json", "reference.safetensors"):
        (ckpt / name).unlink()
    out = tmp_path / "annotated.h5ad"
    args = ["annotate", "--checkpoint", str(ckpt), "--data", str(synthetic_set["path"]), "--out", str(out)]
    assert main(args + ["--unassigned-atypical", "3"]) == 2  # nothing to measure against yet
    assert "fit-reference" in capsys.readouterr().err and not out.exists()
    catalog = _user_catalog(tmp_path, synthetic_set, name="planted", task="cta", drug="")
    assert main(["fit-reference", "--checkpoint", str(ckpt), "--catalog", str(catalog), "--per-label", "20"]) == 0
    # 160 training cells, 4 types of 40: 20 kept of each
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"labels": 4, "cells_kept": 80}
    assert main(args + ["--unassigned-atypical", "3"]) == 0
    annotated = ad.read_h5ad(out)
    typ = annotated.obs["instructcell_typicality"].to_numpy()
    assert np.isfinite(typ).all() and annotated.uns["instructcell"]["unassigned_atypical"] == 3.0
    assert ((annotated.obs["instructcell_label"] == "Unassigned").to_numpy() == (typ < -3)).all()
    assert "typicality (alike their label's training cells" in capsys.readouterr().out
    assert main(["fit-reference", "--checkpoint", str(ckpt), "--catalog", str(catalog), "--per-label", "2"]) == 2
    assert "--per-label must be at least 5" in capsys.readouterr().err


def test_no_shared_without_a_catalog_is_an_error_message(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--backbone", "tiny", "--no-shared"]) == 2
    assert capsys.readouterr().err.startswith("error: --no-shared needs at least one --catalog")


def test_a_repeated_dataset_name_is_an_error_message_naming_it(synthetic_set, tmp_path, capsys):
    catalog = _user_catalog(tmp_path, synthetic_set)
    code = main(["train", "--out", str(tmp_path / "run"), "--backbone", "tiny", "--no-shared",
                 "--catalog", str(catalog), "--catalog", str(catalog)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset names must be unique") and "repeated: my_drug_screen;" in err


def test_version_is_the_installed_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"instructcell {version('instructcell-agent')}"


def test_a_catalog_run_without_shared_data_says_how_to_train_on_it_alone(synthetic_set, tmp_path, monkeypatch,
                                                                         capsys):
    import instructcell_agent.core_model.training as training
    from instructcell_agent.core_model.errors import InputFileError

    def no_shared_data(cfg):
        raise InputFileError("shared data not found")

    monkeypatch.setattr(training, "select_specs", no_shared_data)
    catalog = _user_catalog(tmp_path, synthetic_set)
    assert main(["train", "--out", str(tmp_path / "run"), "--catalog", str(catalog), "--lm-steps", "1"]) == 2
    assert "or pass --no-shared to train on your --catalog sets alone" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_explain_takes_a_drug(tiny_checkpoint, synthetic_set, tmp_path):
    cells = ad.read_h5ad(synthetic_set["path"])[:8].copy()
    cells.write_h5ad(tmp_path / "few.h5ad")
    assert main(["explain", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "few.h5ad"),
                 "--drug", "erlotinib", "--candidates", "resistant,sensitive", "--out", str(tmp_path / "why")]) == 0
    provenance = json.loads((tmp_path / "why" / "explain.json").read_text())["provenance"]
    assert (provenance["drug"], provenance["task"], provenance["candidates"]) == (
        "erlotinib", "drug_response", ["resistant", "sensitive"])


def test_a_warning_the_summary_prints_as_a_note_is_printed_once(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    # a type the checkpoint never learned among learned ones: the route's note is both a warning and a summary note
    names = "pancreatic A cell,type B pancreatic cell,pancreatic D cell,pancreatic PP cell,Hepatocyte"
    assert main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--candidates", names, "--table", str(tmp_path / "labels.csv")]) == 0
    captured = capsys.readouterr()
    said = "'Hepatocyte': no label this checkpoint learned lies at or below it"
    assert (captured.out + captured.err).count(said) == 1 and said in captured.out
