"""Outputs researchers use: scanpy's rank_genes_groups layout, figures, the `explain` command."""

from __future__ import annotations

import hashlib
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from synthetic import CELL_TYPES, make_counts, marker_genes

from instructcell_agent.cli import main
from instructcell_agent.interpret.api import explain, write_explanation

KEY = "instructcell_saliency"
PNG = b"\x89PNG\r\n\x1a\n"


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def result(tiny_model):
    # 64 cells: scanpy's default dendrogram runs a 50-component PCA of the cells.
    return explain(make_counts(64, seed=11), model=tiny_model, labels="cell_type", dataset="planted", top_k=6)


def test_rank_genes_groups_df_reads_the_ranking(result, tmp_path):
    adata = result.to_adata()
    df = sc.get.rank_genes_groups_df(adata, group=None, key=KEY)
    assert {"group", "names", "scores", "logfoldchanges", "pvals", "pvals_adj"} <= set(df.columns)
    assert len(df) == 6 * 4
    # The tidy view lists the genes with a positive score: the head of the same ranking.
    ours = result.top_genes.sort_values(["label", "rank"])
    head = df[df["scores"] > 0]
    assert head["names"].tolist() == ours["gene"].tolist()
    np.testing.assert_allclose(head["scores"], ours["score"], rtol=1e-6)
    path = tmp_path / "x.h5ad"
    adata.write_h5ad(path)
    back = sc.get.rank_genes_groups_df(ad.read_h5ad(path), group="alpha", key=KEY)
    assert back["names"].tolist() == df[df["group"] == "alpha"]["names"].tolist()


def test_scanpy_plots_read_the_ranking(result):
    adata = result.to_adata()
    sc.pl.rank_genes_groups_dotplot(adata, key=KEY, n_genes=3, show=False)
    sc.pl.rank_genes_groups_matrixplot(adata, key=KEY, n_genes=3, show=False)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_to_adata_in_place_on_the_users_cells(result):
    cells = make_counts(64, seed=11)
    out = result.to_adata(cells)
    assert out is cells
    assert list(cells.obs[f"{KEY}_label"].cat.categories) == result.labels
    assert cells.obsm[f"{KEY}_probabilities"].shape == (64, 4)
    assert cells.obs[f"{KEY}_top_genes"].str.count(",").eq(5).all()
    assert sc.get.rank_genes_groups_df(cells, group=None, key=KEY).shape[0] == 24
    with pytest.raises(ValueError, match="obs_names"):
        result.to_adata(make_counts(64, seed=11)[:5].copy())


def test_figures_are_pngs(result, tmp_path):
    paths = result.save_figures(tmp_path)
    assert {p.name for p in paths} == {"saliency_dotplot.png", "saliency_heatmap.png"}
    assert all(p.read_bytes()[:8] == PNG and p.stat().st_size > 5000 for p in paths)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_a_label_of_one_cell_is_written_with_the_marker_check(tiny_model, tmp_path, monkeypatch):
    # wilcoxon cannot test a label held by one cell; its empty entry must still fit explained.h5ad
    # (a text column with missing values did not, and a per-label cap of 1 to 3 cells makes them common)
    import instructcell_agent.interpret.api as explain_api
    from instructcell_agent.interpret.markers import MarkerDB

    toy = MarkerDB("toy", {f"{t} cells": {"any": frozenset(marker_genes(t))} for t in CELL_TYPES},
                   {t: [f"{t} cells"] for t in CELL_TYPES})
    monkeypatch.setattr(explain_api, "load_marker_db", lambda name: toy)
    cells = make_counts(40, seed=3)
    labels = cells.obs["cell_type"].astype(str)
    keep = np.flatnonzero(labels != "delta").tolist() + [int(np.flatnonzero(labels == "delta")[0])]
    cells = cells[sorted(keep)].copy()
    result = explain(cells, model=tiny_model, labels="cell_type", dataset="planted", top_k=4)
    report = result.marker_report.set_index("label")
    assert report.loc["delta", "wilcoxon_known_in_top"] == ""
    assert np.isnan(report.loc["delta", "wilcoxon_precision_at_k"])
    paths = write_explanation(result, tmp_path / "one_cell")
    again = ad.read_h5ad(paths["h5ad"])
    assert list(again.uns[f"{KEY}_markers"]["label"]) == list(result.marker_report["label"])


def test_cli_explain_writes_everything_and_keeps_the_input(tiny_checkpoint, synthetic_set, tmp_path):
    before = _digest(synthetic_set["path"])
    out = tmp_path / "explained"
    code = main(["explain", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--label-key", "cell_type", "--top-k", "5", "--out", str(out)])
    assert code == 0
    assert _digest(synthetic_set["path"]) == before
    top = pd.read_csv(out / "top_genes.csv")
    assert list(top.columns) == ["label", "rank", "gene", "score", "is_known_marker", "attribution"]
    assert 4 <= len(top) <= 4 * 5 and top["rank"].between(1, 5).all() and (top["score"] > 0).all()
    adata = ad.read_h5ad(out / "explained.h5ad")
    assert adata.n_obs == 240 and KEY in adata.uns
    assert len(sc.get.rank_genes_groups_df(adata, group=None, key=KEY)) == 20
    for name in ("saliency_dotplot.png", "saliency_heatmap.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert (out / "explain.json").is_file()


@pytest.mark.parametrize("reference", ["zero", "mean"])
def test_cli_explain_with_integrated_gradients(tiny_checkpoint, synthetic_set, tmp_path, reference):
    small = tmp_path / "small.h5ad"
    ad.read_h5ad(synthetic_set["path"])[:12].copy().write_h5ad(small)
    code = main(["explain", "--checkpoint", str(tiny_checkpoint), "--data", str(small), "--method", "ig",
                 "--n-steps", "16", "--reference", reference, "--out", str(tmp_path / "ig")])
    assert code == 0
    adata = ad.read_h5ad(tmp_path / "ig" / "explained.h5ad")
    assert f"{KEY}_ig_delta" in adata.obs and adata.uns[KEY]["params"]["attribution"] == "ig"
    assert adata.uns[KEY]["params"]["reference"] == reference


def test_cli_explain_errors_are_messages(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    code = main(["explain", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
                 "--label-key", "no_such_column", "--out", str(tmp_path / "o")])
    assert code == 2 and "no_such_column" in capsys.readouterr().err
    # An input sitting where the output would go is never overwritten.
    out = tmp_path / "clash"
    out.mkdir()
    victim = out / "explained.h5ad"
    shutil.copy(synthetic_set["path"], victim)
    before = _digest(victim)
    code = main(["explain", "--checkpoint", str(tiny_checkpoint), "--data", str(victim), "--out", str(out)])
    assert code == 2 and _digest(victim) == before
    assert "refusing to overwrite" in capsys.readouterr().err


def test_labels_spelled_by_the_cell_ontology_are_explained_through_the_learned_labels(tiny_model):
    import instructcell_agent as ica

    names = {"alpha": "pancreatic A cell", "beta": "type B pancreatic cell", "gamma": "pancreatic PP cell",
             "delta": "pancreatic D cell"}
    cells = make_counts(16, seed=12)
    cells.obs["cl_name"] = cells.obs["cell_type"].map(names).astype(str)
    result = explain(cells, model=tiny_model, labels="cl_name", top_k=4)
    assert result.provenance["candidate_route"] == "ontology"
    # the explained probabilities are the ones `annotate` answers with for the same candidates
    cands = result.provenance["candidates"]
    answered = ica.annotate(cells, model=tiny_model, candidates=cands).probabilities[cands].to_numpy()
    np.testing.assert_allclose(result.attributions.probabilities, answered, rtol=1e-4, atol=1e-6)
    # the deletion test re-scores through the same route: deleting nothing changes nothing
    from instructcell_agent.interpret.faithfulness import _probability_without

    a = result.attributions
    base = a.probabilities[np.arange(len(a.target)), a.target]
    again = _probability_without(tiny_model.model, a, a.rows, np.full((len(base), 1), -1), 8)
    np.testing.assert_allclose(again, base, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("readout", [True, False])
def test_the_explained_probabilities_are_the_answers_with_or_without_the_readout(tiny_model, readout):
    import instructcell_agent as ica
    from instructcell_agent.interpret.faithfulness import _probability_without

    cells = make_counts(16, seed=13)
    result = explain(cells, model=tiny_model, labels="cell_type", dataset="planted", top_k=4, readout=readout)
    assert result.provenance["readout"].startswith("linear gene read-out") == readout
    cands = result.provenance["candidates"]
    answered = ica.annotate(cells, model=tiny_model, candidates=cands, readout=readout)
    np.testing.assert_allclose(result.attributions.probabilities, answered.probabilities[cands].to_numpy(),
                               rtol=1e-4, atol=1e-6)
    a = result.attributions  # the deletion test re-scores the same way: deleting nothing changes nothing
    base = a.probabilities[np.arange(len(a.target)), a.target]
    again = _probability_without(tiny_model.model, a, a.rows, np.full((len(base), 1), -1), 8)
    np.testing.assert_allclose(again, base, rtol=1e-4, atol=1e-6)
