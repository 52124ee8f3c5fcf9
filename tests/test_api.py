"""The Python API: AnnData in, results out; refusals of bad input; inputs never modified."""

from __future__ import annotations

import dataclasses
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import instructcell_agent as ica
from synthetic import CELL_TYPES, make_counts, novel_counts
from instructcell_agent.api import AtypicalCellsWarning
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.errors import GeneOverlapError, InvalidValuesError


@pytest.fixture()
def cells():
    return make_counts(24, seed=5)


def test_annotate_with_candidates_gives_probabilities(tiny_model, cells):
    result = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES))
    assert result.probabilities.shape == (24, 4)
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, rtol=1e-5)
    assert set(result.labels) <= set(CELL_TYPES)
    accuracy = np.mean(result.labels == cells.obs["cell_type"].to_numpy())
    assert accuracy > 0.5  # planted markers; chance is 0.25
    assert np.allclose(result.confidence, result.probabilities.max(1))


def test_to_adata_writes_scverse_style_keys(tiny_model, cells):
    result = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES))
    out = result.to_adata(cells.copy(), key_added="ic")
    assert "ic_label" in out.obs and "ic_confidence" in out.obs
    assert out.obsm["ic_probabilities"].shape == (24, 4)
    assert out.uns["ic"]["candidates"] == list(CELL_TYPES)
    assert out.uns["ic"]["alignment"]["n_matched"] == 120


def test_free_answers_and_chat_mode(tiny_model, cells):
    result = ica.annotate(cells, model=tiny_model, mode="chat")
    assert result.probabilities is None and len(result.answers) == 24
    assert all(a.startswith("This cell is most likely") for a in result.answers)
    assert ((result.confidence >= 0) & (result.confidence <= 1)).all()
    # free answers say which tissue's labels they name (the planted set is pancreas)
    assert result.answer_tissues() == {"pancreas": 24}
    assert "free answers name labels learned in: pancreas 24" in result.summary()
    scored = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES))
    assert scored.answer_tissues() is None


def test_label_tissues_join_the_tissues_a_label_was_learned_in(tiny_model):
    import dataclasses

    blood = {"task": "annotation", "labels": ["alpha", "T"], "species": "human", "tissue": "peripheral blood"}
    model = dataclasses.replace(tiny_model, label_sets={**tiny_model.label_sets, "blood": blood})
    tissues = model.label_tissues("annotation")
    assert tissues["alpha"] == "pancreas / peripheral blood" and tissues["T"] == "peripheral blood"
    assert tissues["beta"] == "pancreas"


def test_answer_tissues_with_a_slash_survive_an_h5ad(tiny_model, cells, tmp_path):
    import dataclasses
    import warnings

    from instructcell_agent.core_model.io import write_h5ad_atomic

    marrow = {"task": "annotation", "labels": list(CELL_TYPES), "species": "human", "tissue": "immune (spleen/marrow)"}
    model = dataclasses.replace(tiny_model, label_sets={**tiny_model.label_sets, "marrow": marrow})
    result = ica.annotate(cells, model=model, tissue="pancreas")
    assert result.answer_tissues() == {"immune (spleen/marrow) / pancreas": 24}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # anndata warns before it splits a key on '/'
        write_h5ad_atomic(result.to_adata(cells.copy()), tmp_path / "a.h5ad")
    stored = ad.read_h5ad(tmp_path / "a.h5ad").uns["instructcell"]["answer_tissues"]
    assert list(stored["tissue"]) == ["immune (spleen/marrow) / pancreas"] and list(stored["cells"]) == [24]


def test_free_answers_for_an_unseen_tissue_say_so(tiny_model, synthetic_set):
    from instructcell_agent.api import UnseenContextWarning

    # the training file's held-out cells: of its batch, so typicality adds no note of its own
    # (make_counts' other seeds draw other background rates, a batch typicality tells apart)
    cells = synthetic_set["adata"][200:].copy()

    with pytest.warns(UnseenContextWarning, match="liver"):
        result = ica.annotate(cells, model=tiny_model, tissue="liver")
    assert "human / pancreas" in result.provenance["notes"][0] and "Note: " in result.summary()
    assert "annotate_by_markers" in result.provenance["notes"][0]  # the way to name types it never learned
    assert "ica.tissue_cell_types('liver')" in result.provenance["notes"][0]  # and which types to name
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenContextWarning)
        assert ica.annotate(cells, model=tiny_model).provenance["notes"] == []  # the tissue it was trained on
        assert ica.annotate(cells, model=tiny_model, tissue="liver", candidates=list(CELL_TYPES)).provenance["notes"] == []


CL_NAMES = {"alpha": "pancreatic A cell", "beta": "type B pancreatic cell", "gamma": "pancreatic PP cell",
            "delta": "pancreatic D cell"}


@pytest.mark.parametrize("scoring", ["auto", "full"])
def test_candidates_named_by_the_cell_ontology_pool_the_learned_labels(tiny_model, cells, scoring):
    from instructcell_agent.api import DEFAULT_INSTRUCTIONS, _prompt, _score

    names = [CL_NAMES[c] for c in CELL_TYPES]
    result = ica.annotate(cells, model=tiny_model, candidates=names, scoring=scoring)
    assert result.provenance["candidate_route"] == "ontology"
    # every string scored is a learned label, so "auto" scores their decisive tokens
    decisive = scoring == "auto"
    assert result.provenance["scoring"] == ("decisive tokens" if decisive else "full")
    # one learned label per candidate here, so the probabilities are the model's open-question
    # probabilities of its own labels (language model and read-out), renamed
    assert result.provenance["readout"].startswith("linear gene read-out")
    texts = [_prompt(tiny_model, DEFAULT_INSTRUCTIONS[("annotation", False)], {}, None)] * cells.n_obs
    loglik, _ = _score(tiny_model, align_to_vocab(cells, tiny_model.vocab).X, texts, list(CELL_TYPES), 64, decisive,
                    None, tiny_model.readout)
    expected = np.exp(loglik - loglik.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(result.probabilities.to_numpy(), expected, rtol=1e-4, atol=1e-6)
    assert list(result.answers) == [CELL_TYPES[i] for i in expected.argmax(1)]  # the model's own label
    renamed = np.array([CL_NAMES[t] for t in cells.obs["cell_type"]])
    # planted markers; chance is 0.25. The tiny model's character tokens tell its four labels
    # apart at the first letter, which it reads less well than whole labels (measured on 96
    # cells, 3 seeds: 0.48-0.56 decisive, 0.56-0.68 full), so the bar is on full scoring.
    assert np.mean(result.labels == renamed) > (0.5 if not decisive else 0.3)
    out = result.to_adata(cells.copy())
    assert out.obs["instructcell_ontology_id"].iloc[0].startswith("CL:")


def test_strings_the_model_never_learned_are_scored_in_full(tiny_model, cells):
    with pytest.warns(UserWarning):
        result = ica.annotate(cells, model=tiny_model, candidates=["hepatocyte", "Kupffer cell"])
    assert result.provenance["candidate_route"] == "text"
    assert result.provenance["scoring"] == "full"
    with pytest.raises(ValueError, match="scoring must be one of"):
        ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), scoring="fast")


def test_candidates_it_cannot_route_warn(tiny_model, cells):
    from instructcell_agent.api import CandidateNoteWarning

    with pytest.warns(CandidateNoteWarning, match="Kupffer cell"):
        result = ica.annotate(cells, model=tiny_model, candidates=["Kupffer cell", "hepatocyte"])
    assert result.provenance["candidate_route"] == "text" and result.probabilities.shape == (24, 2)
    # one unroutable name among routable ones: the others are still routed, the stranger scored as text
    names = [CL_NAMES[c] for c in CELL_TYPES] + ["Kupffer cell"]
    with pytest.warns(CandidateNoteWarning, match="'Kupffer cell': no label"):
        mixed = ica.annotate(cells, model=tiny_model, candidates=names)
    assert mixed.provenance["candidate_route"] == "ontology" and mixed.probabilities.shape == (24, 5)
    np.testing.assert_allclose(mixed.probabilities.sum(1), 1.0, rtol=1e-5)


def test_annotate_does_not_modify_the_input(tiny_model, cells):
    before = cells.X.toarray().copy()
    obs_cols = list(cells.obs.columns)
    ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES))
    np.testing.assert_array_equal(cells.X.toarray(), before)
    assert list(cells.obs.columns) == obs_cols


def test_negative_values_are_refused(tiny_model, cells):
    bad = cells.copy()
    bad.X = sp.csr_matrix(bad.X.toarray() - 1.0)
    with pytest.raises(InvalidValuesError, match="negative.*read adata.X; the file holds no other matrix"):
        ica.annotate(bad, model=tiny_model)
    # the message names the matrices the file does hold, as the argument that reads each
    bad.layers["counts"] = cells.X.copy()
    with pytest.raises(InvalidValuesError, match=r"the file also holds layer 'counts' \(layer='counts'\)"):
        ica.annotate(bad, model=tiny_model)
    assert ica.annotate(bad, model=tiny_model, layer="counts").labels.shape == (24,)


def test_too_few_shared_genes_are_refused(tiny_model, cells):
    other = cells.copy()
    other.var_names = [f"OTHER{i}" for i in range(other.n_vars)]
    with pytest.raises(GeneOverlapError):
        ica.annotate(other, model=tiny_model)


def test_duplicate_candidates_are_refused(tiny_model, cells):
    with pytest.raises(ValueError, match="duplicates"):
        ica.annotate(cells, model=tiny_model, candidates=["alpha", "alpha"])


def test_a_single_candidate_is_refused(tiny_model, cells):
    # it would be every cell's answer at confidence 1.0
    with pytest.raises(ValueError, match="one candidate \\('alpha'\\) leaves nothing to choose between"):
        ica.annotate(cells, model=tiny_model, candidates=["alpha"])
    with pytest.raises(ValueError, match="nothing to choose between"):
        ica.predict_drug_response(cells, drug="erlotinib", model=tiny_model, candidates=["sensitive"])


def test_a_drug_response_names_its_drug(tiny_model, cells):
    for drug in ("", "  ", None):
        with pytest.raises(ValueError, match="drug is required"):
            ica.predict_drug_response(cells, drug=drug, model=tiny_model)


def test_default_checkpoint_path_points_into_the_package():
    path = ica.default_checkpoint_path()
    assert path.name == "default" and path.parent.name == "checkpoints"


def test_summary_merges_spellings_of_one_population():
    from instructcell_agent.results import AnnotationResult

    labels = np.array(["NK", "CD56+ NK", "NK", "CD19+ B", "alpha"], dtype=object)
    result = AnnotationResult([f"c{i}" for i in range(5)], labels, np.full(5, 0.9), list(labels),
                              provenance={"task": "annotation", "notes": []})
    text = result.summary()
    assert "natural killer cell (CL:0000623): 3 = NK 2 + CD56+ NK 1" in text
    assert "B cell (CL:0000236)" not in text  # one spelling only: nothing to merge
    out = result.to_adata(ad.AnnData(obs=pd.DataFrame(index=result.obs_names)))
    assert list(out.obs["instructcell_ontology_id"].astype(str)) == ["CL:0000623"] * 3 + ["CL:0000236", "CL:0000171"]
    assert list(out.obs["instructcell_ontology_name"].astype(str)) == (
        ["natural killer cell"] * 3 + ["B cell", "pancreatic A cell"])


def test_the_table_holds_every_per_cell_field_flat():
    from instructcell_agent.results import AnnotationResult

    labels = np.array(["CD19+ B", "alpha", None], dtype=object)
    probs = pd.DataFrame([[0.9, 0.1], [0.2, 0.8], [np.nan, np.nan]], index=["a", "b", "c"],
                         columns=["CD19+ B", "alpha"])
    result = AnnotationResult(["a", "b", "c"], labels, np.array([0.9, 0.8, np.nan]), ["CD19+ B", "alpha", ""],
                              probabilities=probs, provenance={"task": "annotation"},
                              typicality=np.array([0.5, -3.5, np.nan]))
    table = result.to_table()
    assert list(table.columns) == ["label", "confidence", "answer", "typicality", "ontology_id", "ontology_name",
                                   "p_CD19+ B", "p_alpha"]
    assert list(table.index) == ["a", "b", "c"]
    assert list(table["ontology_id"]) == ["CL:0000236", "CL:0000171", None]
    np.testing.assert_allclose(table["p_alpha"], [0.1, 0.8, np.nan])
    drug = AnnotationResult(["a"], np.array(["sensitive"], dtype=object), np.array([0.7]), ["sensitive"],
                            provenance={"task": "drug_response"})
    assert list(drug.to_table().columns) == ["label", "confidence", "answer"]  # no ontology for responses


def test_progress_hears_every_batch_up_to_the_last_cell(tiny_model, cells):
    heard = []
    ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), batch_size=10,
                 progress=lambda done, total: heard.append((done, total)))
    assert heard == [(10, 24), (20, 24), (24, 24)]


def test_batch_size_defaults_to_the_device(tiny_model):
    from instructcell_agent.api import default_batch_size

    assert default_batch_size(torch.device("cpu")) == 64
    assert default_batch_size(torch.device("cuda")) == 256  # launch-bound on a GPU: bigger pays
    cells = make_counts(70, seed=6)
    heard = []
    ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), progress=lambda done, total: heard.append(done))
    assert heard == [64, 70]  # the tiny model lives on the CPU


def test_load_model_runs_where_asked(tiny_checkpoint):
    loaded = ica.load_model(tiny_checkpoint)  # auto: the GPU when there is one
    assert loaded.model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        from instructcell_agent.core_model.errors import DeviceError

        with pytest.raises(DeviceError, match="sees no GPU"):
            ica.load_model(tiny_checkpoint, device="cuda")


def _emptied(cells, rows):
    """A copy of `cells` whose `rows` hold no counts at all."""
    out = cells.copy()
    X = out.X.toarray() if sp.issparse(out.X) else np.array(out.X)
    X[rows] = 0
    out.X = sp.csr_matrix(X)
    return out


@pytest.mark.parametrize("kind", ["candidates", "free", "free_lm_alone"])
def test_cells_without_counts_are_left_unlabelled(tiny_model, cells, kind):
    from instructcell_agent.api import EMPTY_CELLS_NOTE, EmptyCellWarning

    kwargs = {"candidates": list(CELL_TYPES)} if kind == "candidates" else {}
    if kind == "free_lm_alone":
        kwargs["readout"] = False
    emptied = _emptied(cells, [0, 5])
    with pytest.warns(EmptyCellWarning, match="2 of 24 cells"):
        result = ica.annotate(emptied, model=tiny_model, **kwargs)
    assert result.labels[0] is None and result.labels[5] is None and result.n_unlabelled() == 2
    assert np.isnan(result.confidence[[0, 5]]).all() and not np.isnan(np.delete(result.confidence, [0, 5])).any()
    assert result.answers[0] == "" and EMPTY_CELLS_NOTE in result.provenance["notes"]
    assert result.label_counts().sum() == 22 and "2 cells unlabelled" in result.summary()
    assert "genes: 120 of the model's 120 matched (100%) among the file's 120; values read as raw counts" in (
        result.summary())
    # the other cells are answered exactly as without the emptied ones
    kept = ica.annotate(cells[[i for i in range(24) if i not in (0, 5)]].copy(), model=tiny_model, **kwargs)
    assert list(np.delete(result.labels, [0, 5])) == list(kept.labels)
    np.testing.assert_allclose(np.delete(result.confidence, [0, 5]), kept.confidence, rtol=1e-5)
    if kind == "candidates":
        assert np.isnan(result.probabilities.iloc[[0, 5]].to_numpy()).all()
    out = result.to_adata(emptied.copy(), key_added="ic")
    assert out.obs["ic_label"].isna().sum() == 2 and out.obs["ic_confidence"].isna().sum() == 2


def test_a_file_of_empty_cells_is_answered_with_no_labels(tiny_model, cells):
    from instructcell_agent.api import EmptyCellWarning

    with pytest.warns(EmptyCellWarning, match="24 of 24 cells"):
        result = ica.annotate(_emptied(cells, slice(None)), model=tiny_model, candidates=list(CELL_TYPES))
    assert result.n_unlabelled() == 24 and result.probabilities.shape == (24, 4)
    assert "0 cells annotated; mean confidence n/a" in result.summary()
    # an emptied X beside a layer of counts: the note names the matrix to read instead
    emptied = _emptied(cells, slice(None))
    emptied.layers["counts"] = cells.X.copy()
    with pytest.warns(EmptyCellWarning, match="read adata.X; the file also holds layer 'counts'"):
        ica.annotate(emptied, model=tiny_model, candidates=list(CELL_TYPES))


def test_free_drug_answers_from_a_checkpoint_that_learned_no_drug_labels(tiny_model, cells):
    # the tiny checkpoint learned annotation only: nothing to constrain the answer to, so it is free text
    with pytest.warns(UserWarning, match="learned no drug response labels at all") as caught:
        result = ica.predict_drug_response(cells, drug="cisplatin", model=tiny_model, candidates=None)
    assert not any("range over all 0 labels" in str(w.message) for w in caught)
    assert len(result.labels) == 24 and result.probabilities is None
    assert result.provenance["drug"] == "cisplatin"


def test_a_file_opened_backed_is_answered_as_when_read_whole(tiny_model, synthetic_set):
    whole = ica.annotate(ad.read_h5ad(synthetic_set["path"]), model=tiny_model, candidates=list(CELL_TYPES))
    backed = ad.read_h5ad(synthetic_set["path"], backed="r")
    try:
        answered = ica.annotate(backed, model=tiny_model, candidates=list(CELL_TYPES))
    finally:
        backed.file.close()
    assert list(answered.labels) == list(whole.labels)
    np.testing.assert_allclose(answered.confidence, whole.confidence, rtol=1e-6)


def test_a_drug_the_checkpoint_never_learned_is_said_to_be_unseen(tiny_model, cells):
    import dataclasses

    from instructcell_agent.api import UnseenContextWarning

    drug_set = {"task": "drug_response", "labels": ["resistant", "sensitive"], "drug": "Erlotinib",
                "species": "human", "tissue": "lung"}
    model = dataclasses.replace(tiny_model, label_sets={**tiny_model.label_sets, "screen": drug_set})
    with pytest.warns(UnseenContextWarning, match="learned drug response for Erlotinib only; 'cisplatin'"):
        result = ica.predict_drug_response(cells, drug="cisplatin", model=model)
    assert any("'cisplatin' was never seen" in n for n in result.provenance["notes"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenContextWarning)
        known = ica.predict_drug_response(cells, drug=" erlotinib ", model=model)  # case and spaces aside
    assert not any("never seen" in n for n in known.provenance["notes"])


def test_cells_below_the_confidence_threshold_are_unassigned(tiny_model, cells):
    plain = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES))
    threshold = float(np.median(plain.confidence))  # half the cells fall below it
    result = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), unassigned_below=threshold)
    low = plain.confidence < threshold
    assert 0 < low.sum() < len(low)
    assert (result.labels[low] == "Unassigned").all()
    assert (result.labels[~low] == plain.labels[~low]).all()
    # the best guess, confidence and probabilities are kept; the threshold is recorded and summarised
    assert result.answers == plain.answers and np.array_equal(result.confidence, plain.confidence)
    pd.testing.assert_frame_equal(result.probabilities, plain.probabilities)
    assert result.provenance["unassigned_below"] == threshold and result.n_unassigned() == low.sum()
    assert f"{low.sum()} cells 'Unassigned'" in result.summary()
    out = result.to_adata(cells.copy())
    assert out.obs["instructcell_ontology_id"][low].isna().all()
    # the same result from the one already computed, without running the model again
    again = plain.unassigned_below(threshold)
    assert list(again.labels) == list(result.labels) and plain.n_unassigned() == 0
    with pytest.raises(ValueError, match="already has cells unassigned"):
        again.unassigned_below(threshold / 2)
    # agreement leaves unassigned cells out and counts them
    found = result.agreement(cells.obs["cell_type"])
    assert found.n_unassigned == low.sum() and found.n_compared == (~low).sum()
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="unassigned_below"):
            ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), unassigned_below=bad)
    # drug responses too: every confidence is below 1
    drug = ica.predict_drug_response(cells, drug="erlotinib", model=tiny_model, unassigned_below=1.0)
    assert (drug.labels == "Unassigned").all() and set(drug.answers) <= {"resistant", "sensitive"}


def test_typicality_sets_apart_cells_of_a_type_never_learned(tiny_model, synthetic_set):
    held_out = synthetic_set["adata"][200:].copy()  # the file's test cells: learned types, the training batch
    novel = held_out.copy()
    novel.X = novel_counts(held_out.X)
    for kwargs in ({"candidates": list(CELL_TYPES)}, {}):  # with candidates and free
        seen, unseen = (ica.annotate(a, model=tiny_model, **kwargs) for a in (held_out, novel))
        assert np.isfinite(seen.typicality).all() and np.median(seen.typicality) > -1
        assert (seen.typicality < -3).mean() < 0.1
        assert np.median(unseen.typicality) < -3 and (unseen.typicality < -2).mean() > 0.8
    # a file most of whose cells are unlike anything learned says so; one of learned types does not
    assert any("unlike the training cells" in n for n in unseen.provenance["notes"])
    assert not any("unlike the training cells" in n for n in seen.provenance["notes"])
    with pytest.warns(AtypicalCellsWarning, match="the file may hold"):
        ica.annotate(novel, model=tiny_model)
    out = seen.to_adata(held_out.copy())
    np.testing.assert_allclose(out.obs["instructcell_typicality"], seen.typicality, rtol=1e-6)
    assert "typicality" in seen.to_frame() and "typicality (alike their label's training cells" in seen.summary()
    # the summary's label counts say how many of each label's cells are atypical
    lines = [line for line in unseen.summary().splitlines() if line.startswith("  ")]
    assert sum(int(line.split("(")[1].split()[0]) for line in lines if "below -3)" in line) == (
        unseen.typicality < -3).sum()


def test_atypical_cells_are_unassigned(tiny_model, synthetic_set):
    cells = synthetic_set["adata"][200:].copy()
    cells.X = sp.vstack([cells.X[:20], novel_counts(cells.X[20:])], format="csr")
    plain = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES))
    result = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES), unassigned_atypical=3)
    low = plain.typicality < -3
    assert low[20:].mean() > 0.5 and low[:20].mean() < 0.2
    assert (result.labels[low] == "Unassigned").all() and (result.labels[~low] == plain.labels[~low]).all()
    assert result.answers == plain.answers and np.array_equal(result.confidence, plain.confidence)
    assert result.provenance["unassigned_atypical"] == 3 and result.n_unassigned() == low.sum()
    assert f"{low.sum()} cells 'Unassigned': typicality below -3" in result.summary()
    with pytest.raises(ValueError, match="already has cells unassigned by unassigned_atypical"):
        result.unassigned_atypical(2)
    # both rules at once: a cell goes if either says so
    both = result.unassigned_below(0.9)
    assert (both.labels == "Unassigned").sum() == (low | (plain.confidence < 0.9)).sum()
    assert "confidence below 0.9 or typicality below -3" in both.summary()
    for bad in (0, -1, float("nan"), float("inf"), True, "3"):
        with pytest.raises(ValueError, match="unassigned_atypical"):
            ica.annotate(cells, model=tiny_model, unassigned_atypical=bad)
    assert plain.unassigned_atypical(np.float32(3)).n_unassigned() == low.sum()  # numpy scalars are numbers
    bare = dataclasses.replace(tiny_model, reference=None)
    assert ica.annotate(cells, model=bare, candidates=list(CELL_TYPES)).typicality is None
    with pytest.raises(ValueError, match="fit-reference"):
        ica.annotate(cells, model=bare, unassigned_atypical=3)
    with pytest.raises(ValueError, match="no typicality"):
        ica.annotate(cells, model=bare, candidates=list(CELL_TYPES)).unassigned_atypical(3)


def test_cells_said_to_be_another_species_than_their_genes_show_are_warned_about(tiny_model, cells):
    from instructcell_agent.api import UnseenContextWarning
    from instructcell_agent.core_model.context import species_clash

    assert species_clash(["Mus musculus"], "human").startswith("the cells are said to be mouse")
    assert species_clash(["human and mouse"], "human") is None and species_clash(["human", ""], "human") is None
    assert species_clash([""], "human") is None and species_clash(["mouse"], "unknown") is None
    said_mouse = cells.copy()
    said_mouse.obs["species"] = "mouse"  # the synthetic genes read as human symbols
    with pytest.warns(UnseenContextWarning, match="said to be mouse .* pass species='human'"):
        result = ica.annotate(said_mouse, model=tiny_model, candidates=list(CELL_TYPES))
    assert any("said to be mouse" in note for note in result.provenance["notes"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenContextWarning)  # the species they are said to be: no warning
        ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES))
