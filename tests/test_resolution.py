"""`resolve_at`: each cell's finest answer at a probability, through the API, the command line and
the result's views (core_model/hierarchy.py computes it; tested there on constructed probabilities).

The tiny model's labels (alpha, beta, gamma, delta) are all pancreatic endocrine cells. Asked
among them alone, that type is no answer (its probability is 1 whatever the cell); asked with a
fifth candidate outside it, a cell torn between islet types is a pancreatic endocrine cell at the
four labels' summed probability."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import instructcell_agent as ica
from synthetic import CELL_TYPES, novel_counts
from instructcell_agent.cli import main

ENDOCRINE = "pancreatic endocrine cell"
WITH_OTHER = [*CELL_TYPES, "hepatocyte"]  # a string the model never learned, outside the endocrine type


@pytest.fixture()
def cells(synthetic_set):
    return synthetic_set["adata"][200:224].copy()  # the training file's held-out cells: of its batch


def _annotate(cells, model, **kwargs):
    with warnings.catch_warnings():  # 'hepatocyte' is scored as its string, with a warning saying so
        warnings.simplefilter("ignore", UserWarning)
        return ica.annotate(cells, model=model, **kwargs)


def _expected(result, at: float) -> list:
    """Each cell: its label where its confidence reaches `at`; else the endocrine type where the
    islet labels together reach it (with a fifth candidate), else 'Unassigned'."""
    probs = result.probabilities
    islets = probs[list(CELL_TYPES)].sum(1).to_numpy() if probs is not None and "hepatocyte" in probs else None
    return [label if conf >= at - 1e-9 else ENDOCRINE if islets is not None and islets[i] >= at - 1e-9
            else "Unassigned" for i, (label, conf) in enumerate(zip(result.labels, result.confidence))]


def test_unsure_cells_are_resolved_to_the_type_their_likely_labels_share(tiny_model, cells):
    plain = _annotate(cells, tiny_model, candidates=WITH_OTHER)
    at = float(np.clip(np.median(plain.confidence), 0.51, 1.0))  # about half the cells fall short of it
    result = _annotate(cells, tiny_model, candidates=WITH_OTHER, resolve_at=at)
    assert list(result.labels) == list(plain.labels) and plain.resolved is None  # the labels are untouched
    table = result.resolved
    assert list(table.index) == result.obs_names and list(table["resolved"]) == _expected(result, at)
    broader = (table["resolved_level"] == "broader type").to_numpy()
    assert 0 < broader.sum() < 24  # both levels are exercised
    islets = result.probabilities[list(CELL_TYPES)].sum(1).to_numpy()
    np.testing.assert_allclose(table["resolved_confidence"][broader], islets[broader])
    assert (table["resolved_ontology_id"][broader] == "CL:0008024").all()
    sure = (table["resolved_level"] == "label").to_numpy()
    np.testing.assert_allclose(table["resolved_confidence"][sure], result.confidence[sure])
    assert result.provenance["resolve_at"] == at
    assert f"{sure.sum()} cells at their label, {broader.sum()} as a broader type" in result.summary()
    # the views: one row per cell in the frame and table, obs columns in the AnnData
    assert {"resolved", "resolved_confidence", "resolved_level"} <= set(result.to_table().columns)
    out = result.to_adata(cells.copy(), key_added="ic")
    assert list(out.obs["ic_resolved"].astype(str)) == list(table["resolved"].astype(str))
    assert out.obs["ic_resolved_confidence"].dtype == np.float32
    # right for the known labels whichever level: the endocrine type holds every one of them
    found = result.resolved_agreement(cells.obs["cell_type"])
    assert found.n_broader == broader.sum() and found.agree_broader == 1.0
    assert found.n_label == sure.sum() and found.n_unassigned == 24 - sure.sum() - broader.sum()
    # by group: the resolved answers' most frequent one and its share
    by_type = result.composition(cells.obs["cell_type"], "cell_type", resolved=True)
    assert by_type.summary().startswith("resolved answers by obs['cell_type']")
    for group, row in by_type.table.iterrows():
        answers = table["resolved"][(cells.obs["cell_type"] == group).to_numpy()]
        named = answers[answers != "Unassigned"].value_counts()
        assert row["answer"] == named.index[0] and row["share"] == pytest.approx(named.iloc[0] / len(answers))
    with pytest.raises(ValueError, match="resolve_at"):
        plain.composition(cells.obs["cell_type"], resolved=True)


def test_the_map_draws_the_resolved_answers_when_asked(tiny_model, cells, tmp_path, monkeypatch):
    from instructcell_agent import cell_map

    plain = _annotate(cells, tiny_model, candidates=WITH_OTHER)
    result = _annotate(cells, tiny_model, candidates=WITH_OTHER, resolve_at=float(np.median(plain.confidence)))
    result.draw_map(cells, tmp_path / "resolved.png", resolved=True)
    assert (tmp_path / "resolved.png").read_bytes()[:4] == b"\x89PNG"
    drawn = {}
    monkeypatch.setattr(cell_map, "plot_answers", lambda cmap, labels, conf, path, title: drawn.update(
        labels=list(labels), conf=np.asarray(conf), title=title))
    result.draw_map(cells, tmp_path / "unused.png", resolved=True)
    assert drawn["labels"] == list(result.resolved["resolved"]) and "resolve_at" in drawn["title"]
    np.testing.assert_array_equal(drawn["conf"], result.resolved["resolved_confidence"].to_numpy())
    result.draw_map(cells, tmp_path / "unused.png")
    assert drawn["labels"] == list(result.labels)  # without resolved=True the labels, as before
    with pytest.raises(ValueError, match="resolve_at"):
        plain.draw_map(cells, tmp_path / "no.png", resolved=True)
    assert not (tmp_path / "no.png").exists()


@pytest.mark.parametrize("kwargs", [{"candidates": list(CELL_TYPES)}, {}], ids=["candidates", "free"])
def test_a_type_over_every_candidate_is_no_answer(tiny_model, cells, kwargs):
    result = _annotate(cells, tiny_model, resolve_at=0.99, **kwargs)  # free: the tissue's four learned labels
    assert list(result.resolved["resolved"]) == _expected(result, 0.99)
    assert (result.resolved["resolved"] != ENDOCRINE).all() and (result.confidence < 0.99).any()


def test_decoded_answers_keep_only_the_labels_that_reach_the_bar(tiny_model, cells):
    result = ica.annotate(cells, model=tiny_model, readout=False, resolve_at=0.9)  # decoded: no other label scored
    sure = result.confidence >= 0.9
    assert (result.resolved["resolved"][sure] == result.labels[sure]).all()
    assert (result.resolved["resolved"][~sure] == "Unassigned").all()
    assert any("decoded as text" in note for note in result.provenance["notes"])


def test_cells_without_counts_stay_empty_and_atypical_cells_are_unassigned_too(tiny_model, synthetic_set):
    cells = synthetic_set["adata"][200:].copy()
    emptied = np.ones(cells.n_obs)
    emptied[0] = 0  # no counts on the model's genes: left unlabelled
    cells.X = sp.csr_matrix(sp.diags(emptied) @ sp.vstack([cells.X[:20], novel_counts(cells.X[20:])]))
    with pytest.warns(UserWarning):
        result = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), resolve_at=0.9,
                              unassigned_atypical=3)
    table = result.resolved
    assert table["resolved"].iloc[0] is None and np.isnan(table["resolved_confidence"].iloc[0])
    low = np.asarray(result.typicality, dtype=float) < -3
    assert low[20:].mean() > 0.5
    assert (table["resolved"][low] == "Unassigned").all() and table["resolved_level"][low].isna().all()
    assert table["resolved_confidence"][low].isna().all()


@pytest.mark.parametrize("at", [0.5, 0, 1.5])
def test_thresholds_that_single_out_no_answer_are_refused(tiny_model, cells, at):
    with pytest.raises(ValueError, match="resolve_at takes a probability above 0.5"):
        ica.annotate(cells, model=tiny_model, resolve_at=at)


def test_drug_responses_have_no_broader_type(tiny_model, cells):
    with pytest.raises(ValueError, match="for drug response use unassigned_below"):
        ica.predict_drug_response(cells, drug="erlotinib", model=tiny_model, resolve_at=0.9)


def test_the_command_line_writes_and_compares_the_resolved_answers(tiny_checkpoint, synthetic_set, tmp_path, capsys):
    out, table = tmp_path / "annotated.h5ad", tmp_path / "labels.csv"
    base = ["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_set["path"]),
            "--candidates", "alpha,beta,gamma,delta"]
    assert main([*base, "--out", str(out), "--table", str(table), "--resolve-at", "0.9",
                 "--compare-key", "cell_type", "--groupby", "cell_type"]) == 0
    printed = capsys.readouterr().out
    assert "resolved at 0.9" in printed and "resolved answers right for obs['cell_type']" in printed
    assert "resolved answers by obs['cell_type']" in printed
    annotated = ad.read_h5ad(out)
    assert {"instructcell_resolved", "instructcell_resolved_level"} <= set(annotated.obs)
    assert annotated.uns["instructcell"]["resolved_agreement"]["key"] == "cell_type"
    assert annotated.uns["instructcell"]["resolved_composition"]["key"] == "cell_type"
    assert "resolved" in table.read_text().splitlines()[0].split(",")
    # refused before the file is read: nothing written
    assert main([*base, "--out", str(tmp_path / "no.h5ad"), "--resolve-at", "0.4"]) == 2
    assert "resolve_at takes a probability above 0.5" in capsys.readouterr().err
    assert not (tmp_path / "no.h5ad").exists()


def test_explain_reads_the_candidates_annotate_recorded(tiny_model, cells):
    two_types = cells[np.isin(cells.obs["cell_type"].astype(str), ["alpha", "beta"])].copy()
    candidates = list(CELL_TYPES)
    annotated = ica.annotate(two_types, model=tiny_model, candidates=candidates).to_adata(two_types)
    answered = set(annotated.obs["instructcell_label"].astype(str))
    why = ica.explain(annotated, model=tiny_model, labels="instructcell_label", compare_wilcoxon=False)
    # every candidate annotate scored, not only the labels its answers happen to use
    assert why.provenance["candidates"] == candidates and answered < set(candidates)
    assert any("candidates taken from uns['instructcell']" in n for n in why.provenance["notes"])
    named = ica.explain(annotated, model=tiny_model, labels="instructcell_label", candidates=sorted(answered),
                        compare_wilcoxon=False)
    assert named.provenance["candidates"] == sorted(answered)  # candidates named by the caller win
