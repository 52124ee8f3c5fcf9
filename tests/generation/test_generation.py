"""Generation with a tiny model: shapes, counts, conditions in obs, seeds, unseen conditions, files."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from dataclasses import replace
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from instructcell_agent.core_model.errors import CheckpointError
from instructcell_agent.core_model.generation.conditions import (
    Condition,
    ConditionChoiceWarning,
    ConditionRecord,
    ConditionTable,
    UnseenConditionError,
)
from instructcell_agent.core_model.generation.data import restore_counts
from instructcell_agent.core_model.generation.generator import META_FILE, WEIGHTS_FILE, load_generator
from instructcell_agent.core_model.generation.sampling import (
    DEFAULT_TEMPLATES,
    default_template,
    generate_cells,
    misread_note,
    sample_counts,
)
from instructcell_agent.core_model.instructions import load_bank, placeholders_in
from instructcell_agent.core_model.reference import AtypicalCellsWarning


def test_generated_cells_are_integer_counts_over_the_vocabulary(gen_model):
    adata = generate_cells(gen_model, "alpha", 12, condition="stim", seed=0)
    assert adata.n_obs == 12 and adata.n_vars == len(gen_model.vocab)
    assert list(adata.var_names) == list(gen_model.vocab)
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32
    values = adata.X.toarray()
    assert (values >= 0).all() and np.array_equal(values, np.round(values))
    assert values.sum() > 0


def test_generated_cells_carry_their_typicality_of_the_type_asked_for(gen_model):
    adata = generate_cells(gen_model, "alpha", 40, condition="ctrl", seed=0)
    typ = adata.obs["typicality"].to_numpy()
    assert np.isfinite(typ).all()
    # they look like the type asked for: closer to its training cells than to another type's
    as_beta = gen_model.reference.typicality(adata.X, np.arange(adata.n_vars), ["beta"] * adata.n_obs)
    assert np.median(typ) > np.median(as_beta) + 1


def test_generated_cells_are_read_on_the_genes_of_the_set_their_type_was_learned_from(gen_model, monkeypatch):
    # a type learned from a file of few genes (wang2016's 219) is compared with its training cells
    # over those genes, as a file of that set would be, not over the whole vocabulary
    learned_from = generate_cells(gen_model, "alpha", 2, condition="ctrl", seed=0).uns["instructcell_generation"][
        "learned_from"]
    few = np.arange(0, len(gen_model.vocab), 3)
    monkeypatch.setitem(gen_model.reference.measured, learned_from, few)
    read = {}

    def typicality(X, genes, labels):
        read["genes"] = np.asarray(genes)
        return np.zeros(X.shape[0])

    monkeypatch.setattr(gen_model.reference, "typicality", typicality)
    generate_cells(gen_model, "alpha", 3, condition="ctrl", seed=0)
    np.testing.assert_array_equal(read["genes"], few)


def test_generated_genes_carry_their_ensembl_id_and_current_symbol():
    from instructcell_agent.core_model.generation.conditions import Condition
    from instructcell_agent.core_model.generation.sampling import to_anndata

    # vocabulary names as the training files wrote them: current, older (SARS: now SARS1), unknown
    adata = to_anndata(np.zeros((1, 4)), ["CD4", "SARS", "CCL5", "GENE001"], [Condition("B")], ["x"], False, {})
    ids, current = adata.var["gene_ids"], adata.var["current_symbol"]
    assert ids.iloc[:3].tolist() == ["ENSG00000010610", "ENSG00000031698", "ENSG00000271503"] and ids.isna().iloc[3]
    assert current.iloc[:3].tolist() == ["CD4", "SARS1", "CCL5"] and current.isna().iloc[3]


def test_conditions_reach_obs(gen_model):
    adata = generate_cells(gen_model, "beta", 5, condition="ctrl", tissue="pancreas", seed=1)
    row = adata.obs.iloc[0]
    assert row["cell_type"] == "beta" and row["condition"] == "control" and row["tissue"] == "pancreas"
    assert row["species"] == "human"  # filled from the training table
    assert "beta" in row["instruction"] and "control" in row["instruction"]
    assert not adata.obs["unseen_condition"].any()
    assert adata.uns["instructcell_generation"]["seed"] == 1


def test_custom_instruction_is_rendered(gen_model):
    adata = generate_cells(gen_model, "gamma", 3, condition="stim", instruction="Simulate a {cell_type} cell.", seed=0)
    assert adata.obs["instruction"].iloc[0] == "Simulate a gamma cell. Condition: IFN-beta stimulated."


def test_same_seed_same_cells_other_seed_other_cells(gen_model):
    a = generate_cells(gen_model, "delta", 8, condition="stim", seed=3).X.toarray()
    b = generate_cells(gen_model, "delta", 8, condition="stim", seed=3).X.toarray()
    c = generate_cells(gen_model, "delta", 8, condition="stim", seed=4).X.toarray()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_unseen_cell_type_is_refused_with_the_known_ones(gen_model):
    with pytest.raises(UnseenConditionError, match="epsilon.*alpha"):
        generate_cells(gen_model, "epsilon", 4)


def test_unseen_condition_is_refused(gen_model):
    with pytest.raises(UnseenConditionError, match="heat shock"):
        generate_cells(gen_model, "alpha", 4, condition="heat shock")


def test_unseen_allowed_warns_and_marks_obs(gen_model, caplog):
    with caplog.at_level(logging.WARNING):
        adata = generate_cells(gen_model, "epsilon", 4, allow_unseen=True, seed=0)
    assert adata.n_obs == 4 and adata.obs["unseen_condition"].all()
    assert any("unseen" in r.getMessage() for r in caplog.records)


def test_a_type_learned_in_several_contexts_warns_which_was_generated(gen_model, monkeypatch):
    gen = load_generator(gen_model)
    # the same type learned in a second context too (ranked after the real rows: stimulated, few cells)
    other = ConditionRecord(Condition("alpha", "mouse", "pancreas", "10x", "IFN-beta stimulated"), "mouse_set", 1)
    monkeypatch.setattr(gen, "table", ConditionTable([*gen.table.records, other]))
    with pytest.warns(ConditionChoiceWarning, match=r"generated human / pancreas 'alpha'.*mouse / pancreas: 'alpha' "
                                                    r"\(mouse_set, 1 cells: IFN-beta stimulated\)"):
        adata = generate_cells(gen_model, "alpha", 2, seed=0)
    assert adata.obs["species"].iloc[0] == "human"
    provenance = adata.uns["instructcell_generation"]
    assert "mouse_set" in provenance["alternatives"] and provenance["learned_from"] != "mouse_set"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConditionChoiceWarning)  # a settled request does not warn
        adata = generate_cells(gen_model, "alpha", 2, species="human", tissue="pancreas", seed=0)
    assert "alternatives" not in adata.uns["instructcell_generation"]


def test_cells_made_sparse_as_drawn_are_the_cells_of_the_dense_path(gen_model):
    gen = load_generator(gen_model)
    texts = ["Generate one alpha."] * 1100  # three batches of 512, the last one short
    dense, near = sample_counts(gen_model, gen, texts, seed=4)
    sparse, near_sparse = sample_counts(gen_model, gen, texts, seed=4, sparse=True)
    assert sp.isspmatrix_csr(sparse) and sparse.dtype == np.float32 and near == near_sparse
    assert np.array_equal(sparse.toarray(), dense.astype(np.float32))
    empty, _ = sample_counts(gen_model, gen, [], sparse=True)
    assert empty.shape == (0, len(gen_model.vocab))


def test_the_default_phrasing_names_species_and_tissue(gen_model):
    # the generator reads only the instruction: a species or tissue left out of it cannot steer the cells
    adata = generate_cells(gen_model, "alpha", 2, species="human", tissue="pancreas", condition="ctrl", seed=0)
    text = adata.obs["instruction"].iloc[0]
    assert "alpha from human pancreas" in text and text.endswith("Condition: control.")
    full = Condition("B", "human", "peripheral blood", "10x", "")
    assert "{sequencing_method}" in default_template(full)
    assert placeholders_in(default_template(replace(full, sequencing_method=""))) == {"cell_type", "species", "tissue"}
    assert default_template(replace(full, species="", sequencing_method="")) == "Generate one {cell_type}."
    assert set(DEFAULT_TEMPLATES) <= set(load_bank("generation").train)  # phrasings the generator trained on


def test_an_instruction_read_as_another_condition_is_named():
    rows = [Condition("beta", "human", "pancreas", "SMARTer", ""), Condition("beta", "mouse", "pancreas", "inDrop", ""),
            Condition("Beta", "human", "pancreas", "inDrop", "")]
    gen = SimpleNamespace(table=ConditionTable([ConditionRecord(c, f"set{i}", 10) for i, c in enumerate(rows)]))
    res = gen.table.resolve("beta", species="human", sequencing_method="SMARTer")
    assert res.record == 0
    note = misread_note(gen, res, understood=1)
    assert note.startswith("the instruction was read as mouse / pancreas 'beta' (set1), not as the human / pancreas")
    assert misread_note(gen, res, understood=0) is None
    assert misread_note(gen, res, understood=2) is None  # the same condition, learned from another set


def test_mostly_atypical_generated_cells_warn(gen_model, monkeypatch):
    # the generator's rendering of a type is judged as a file's cells are on the annotation side:
    # half of them below typicality -3 warns (the scores are planted; the rule is what is tested)
    planted = {"typ": -4.0}
    monkeypatch.setattr(gen_model.reference, "typicality", lambda X, genes, labels: np.full(X.shape[0], planted["typ"]))
    with pytest.warns(AtypicalCellsWarning, match=r"100% of the generated cells are unlike the training cells of "
                                                  r"'alpha' \(typicality below -3\).*learned from"):
        adata = generate_cells(gen_model, "alpha", 6, condition="ctrl", seed=0)
    assert "renders this type poorly" in adata.uns["instructcell_generation"]["atypical"]
    planted["typ"] = -2.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", AtypicalCellsWarning)
        adata = generate_cells(gen_model, "alpha", 6, condition="ctrl", seed=0)
    assert "atypical" not in adata.uns["instructcell_generation"]


def test_generator_files_are_small_and_described(gen_checkpoint):
    meta = json.loads((gen_checkpoint / META_FILE).read_text())
    assert meta["config"]["n_genes"] > 0 and len(meta["conditions"]) == 8  # 4 types x ctrl/stim
    assert {c["condition"] for c in meta["conditions"]} == {"control", "IFN-beta stimulated"}
    assert (gen_checkpoint / WEIGHTS_FILE).stat().st_size < 12e6
    assert "signal_nearest_condition_accuracy_valid" in meta["report"]
    assert not list(gen_checkpoint.glob(".generator*"))  # no temporary files left


def test_checkpoint_without_generator_says_how_to_add_one(tiny_model):
    with pytest.raises(CheckpointError, match="train-generator"):
        load_generator(tiny_model)


def test_tampered_weights_are_refused(gen_checkpoint, tmp_path):
    from instructcell_agent.core_model.checkpoint import load_checkpoint

    copy = tmp_path / "ckpt"
    shutil.copytree(gen_checkpoint, copy)
    with open(copy / WEIGHTS_FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(CheckpointError, match="does not match"):
        load_generator(load_checkpoint(copy))


def test_generator_of_other_model_weights_is_refused(gen_checkpoint, tmp_path):
    from instructcell_agent.core_model.checkpoint import load_checkpoint

    copy = tmp_path / "ckpt"
    shutil.copytree(gen_checkpoint, copy)
    meta = json.loads((copy / META_FILE).read_text())
    meta["model_weights_sha256"] = "0" * 64  # as if the cell model had been retrained since
    (copy / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="retrain the generator"):
        load_generator(load_checkpoint(copy))


def test_restore_counts_inverts_log_normalization():
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(30, 50)).astype(np.float32)
    counts[:, 0] += 1  # every cell has a count of at least one somewhere
    totals = counts.sum(1, keepdims=True)
    logged = np.log1p(counts / totals * 1832.5)  # normalized to a median-like total, as kang2018 is
    restored, how = restore_counts(ad.AnnData(sp.csr_matrix(logged.astype(np.float32))))
    assert how == "restored"
    min_per_cell = np.where(counts > 0, counts, np.inf).min(1, keepdims=True)
    assert np.allclose(restored.X.toarray(), counts / min_per_cell)


def test_api_generate_cells(gen_model):
    import instructcell_agent as ica

    adata = ica.generate_cells(model=gen_model, cell_type="alpha", n=3, condition="IFN-beta stimulated", seed=0)
    assert adata.n_obs == 3 and adata.obs["condition"].iloc[0] == "IFN-beta stimulated"


def test_evaluate_generation_reports_metrics(gen_model, condition_set):
    from instructcell_agent.core_model.generation.evaluate import evaluate_generation

    result = evaluate_generation(gen_model, condition_set["path"], condition_set["split_path"], "cell_type", seed=0)
    assert result["n_real"] == result["n_generated"] == 40
    for key in ("mmd", "delta_sknn@5", "pknn@25", "classifier_auc", "nonzero_fraction_corr", "mean_expression_corr",
                "marker_frac_expressing_abs_diff", "understood_rate"):
        assert np.isfinite(result[key]), key
    assert result["n_unseen_conditions"] == 0
