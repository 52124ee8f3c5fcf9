"""`evaluate`: metrics, option handling, instruction files, label mapping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from instructcell_agent.core_model.errors import InputFileError, LabelKeyError
from instructcell_agent.core_model.evaluation import INVALID, evaluate, metrics
from instructcell_agent.core_model.instructions import load_instruction_file
from instructcell_agent.core_model.labels import LabelMapper


def test_metrics_count_invalid_answers_as_wrong():
    truth = np.array(["a", "a", "b", "b"])
    pred = np.array(["a", INVALID, "b", "b"])
    m = metrics(truth, pred, ["a", "b"])
    assert m["accuracy"] == 0.75 and m["invalid_rate"] == 0.25
    # a: precision 1, recall 1/2 -> F1 2/3; b: F1 1.
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)


def test_label_mapper_uses_exact_then_ontology_synonyms():
    mapper = LabelMapper(("CD14+ Monocyte", "CD19+ B", "CD8+ Cytotoxic T"))
    assert mapper.map(" cd14+ monocyte. ") == "CD14+ Monocyte"
    assert mapper.map("CD14+ Mono") == "CD14+ Monocyte"
    assert mapper.map("B cell") == "CD19+ B"
    assert mapper.map("a liver cell") is None


def test_a_more_specific_answer_maps_to_its_nearest_ancestor_in_the_set():
    kang = LabelMapper(("B", "CD14+Mono", "CD4T", "CD8T", "NK"))
    assert kang.map("CD8+ Cytotoxic T") == "CD8T"
    assert kang.map("naive CD4 T cell") == "CD4T"
    assert kang.map("Th2") == "CD4T"
    # Nearest first: with CD8 T cells in the set, a naive CD8 T cell is one of them, not just a T cell.
    assert LabelMapper(("T cell", "CD8 T cell")).map("CD8+/CD45RA+ Naive Cytotoxic") == "CD8 T cell"
    assert LabelMapper(("B cell", "T cell")).map("CD8+ Cytotoxic T") == "T cell"
    # Never coarser: 'T cell' does not say whether it means CD4T or CD8T.
    assert kang.map("T cell") is None
    # A term two labels of the set share is ambiguous, also as an ancestor.
    assert LabelMapper(("CD8T", "CD8 T cell")).map("CD8+ Cytotoxic T") is None


def test_evaluate_reports_required_fields(tiny_model, synthetic_set):
    result = evaluate(tiny_model, synthetic_set["path"], synthetic_set["split_path"], "cta", "cell_type", seed=1)
    for key in ("accuracy", "macro_f1", "weighted_f1", "invalid_rate", "n_cells", "n_instructions"):
        assert key in result
    assert result["n_cells"] == 40
    assert result["with_options"]["n_cells"] + result["without_options"]["n_cells"] == 40
    # The planted types are easy: with options (scored candidates) the tiny model is well above chance.
    assert result["with_options"]["accuracy"] > 0.5
    # Free answers are decoded within the labels the checkpoint learned for this tissue, which
    # here are exactly the set's labels: none can be invalid.
    assert result["without_options"]["n_cells"] > 0 and result["without_options"]["invalid_rate"] == 0.0


def test_evaluate_with_an_instruction_file(tiny_model, synthetic_set, tmp_path):
    path = tmp_path / "phrasings.json"
    path.write_text(json.dumps([{"instruction": "Cell {input} is which of {choices}?", "response": "{output}"}]))
    result = evaluate(tiny_model, synthetic_set["path"], synthetic_set["split_path"], "cta", "cell_type",
                      instructions=load_instruction_file(path))
    assert result["n_instructions"] == 1 and result["with_options"]["n_cells"] == 40
    assert result["invalid_rate"] == 0.0  # scored candidates are always valid


def test_evaluate_is_seeded(tiny_model, synthetic_set):
    a = evaluate(tiny_model, synthetic_set["path"], synthetic_set["split_path"], "cta", "cell_type", seed=3)
    b = evaluate(tiny_model, synthetic_set["path"], synthetic_set["split_path"], "cta", "cell_type", seed=3)
    assert a["accuracy"] == b["accuracy"] and a["with_options"]["n_cells"] == b["with_options"]["n_cells"]


def test_evaluate_can_keep_each_cells_answer_for_paired_comparisons(tiny_model, synthetic_set):
    import anndata as ad
    from sklearn.metrics import accuracy_score

    args = (tiny_model, synthetic_set["path"], synthetic_set["split_path"], "cta", "cell_type")
    assert "cells" not in evaluate(*args, seed=2)
    result = evaluate(*args, seed=2, keep_predictions=True)
    cells = result["cells"]
    assert cells["obs_names"] == json.loads(synthetic_set["split_path"].read_text())["test"]
    obs = ad.read_h5ad(synthetic_set["path"]).obs
    assert cells["truth"] == [str(obs.loc[n, "cell_type"]) for n in cells["obs_names"]]
    assert accuracy_score(cells["truth"], cells["predicted"]) == result["accuracy"]


def test_kept_scores_name_each_rows_true_column(tiny_model, synthetic_set):
    result = evaluate(tiny_model, synthetic_set["path"], synthetic_set["split_path"], "cta", "cell_type", seed=2,
                      keep_scores=True)
    rows, columns, correct = result["score_rows"], result["truth_columns"], result["correct"]
    assert len(rows) == len(columns) == len(correct) > 0
    # every row here holds its cell's true label (the set's labels, or every learned label of its tissue)
    assert all(0 <= c < len(r) for r, c in zip(rows, columns))
    assert [int(r.argmax()) == c for r, c in zip(rows, columns)] == correct


def test_decisive_scoring_changes_no_free_answer(tiny_model, synthetic_set):
    # Free answers are decoded within the learned labels; stopping once one is left cannot change
    # them. Scored answers may differ (the tiny model reads its labels' first letter less well).
    args = (tiny_model, synthetic_set["path"], synthetic_set["split_path"], "cta", "cell_type")
    full = evaluate(*args, seed=4, keep_predictions=True, scoring="full")
    fast = evaluate(*args, seed=4, keep_predictions=True, scoring="auto")
    assert (full["scoring"], fast["scoring"]) == ("full", "decisive tokens")
    assert full["without_options"] == fast["without_options"] and full["without_options"]["n_cells"] > 0
    with pytest.raises(ValueError, match="scoring must be one of"):
        evaluate(*args, scoring="quick")


def test_evaluate_refuses_a_missing_label_column(tiny_model, synthetic_set):
    with pytest.raises(LabelKeyError, match="cell_type"):
        evaluate(tiny_model, synthetic_set["path"], synthetic_set["split_path"], "cta", "celltype")


def test_evaluate_refuses_a_split_the_file_lacks_and_a_drug_set_without_its_drug(tiny_model, synthetic_set, tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "valid": []}))
    with pytest.raises(InputFileError, match=r"no split 'test'; it has \['train', 'valid'\]"):
        evaluate(tiny_model, synthetic_set["path"], split, "cta", "cell_type")
    args = (tiny_model, synthetic_set["path"], synthetic_set["split_path"], "dsp", "cell_type")
    with pytest.raises(InputFileError, match="no drug to name"):
        evaluate(*args)
    assert evaluate(*args, drug="cisplatin")["n_cells"] > 0


def test_evaluate_with_and_without_the_readout(tiny_model, synthetic_set):
    both = evaluate(tiny_model, synthetic_set["path"], synthetic_set["split_path"], "cta", "cell_type", seed=1)
    alone = evaluate(tiny_model, synthetic_set["path"], synthetic_set["split_path"], "cta", "cell_type", seed=1,
                     readout=False)
    assert both["readout"].startswith("linear gene read-out") and alone["readout"] == "none"
    # free answers with the read-out are chosen among the learned labels: never invalid
    assert both["without_options"]["invalid_rate"] == 0.0 and both["without_options"]["n_cells"] > 0
    assert both["accuracy"] > 0.8


def test_evaluate_resolves_scored_answers_when_asked(tiny_model, synthetic_set):
    args = (tiny_model, synthetic_set["path"], synthetic_set["split_path"], "cta", "cell_type")
    plain = evaluate(*args, seed=1)
    result = evaluate(*args, seed=1, resolve_at=0.9)
    assert "resolved" not in plain and result["accuracy"] == plain["accuracy"]  # the answers do not change
    found = result["resolved"]
    n_scored = found["n_label"] + found["n_broader"] + found["n_unassigned"]
    assert n_scored + found["n_decoded"] == result["n_cells"] and n_scored > 0
    # the tiny model's four labels are all pancreatic endocrine cells: a type over every label is no
    # answer, so unsure cells stay unassigned
    assert found["n_broader"] == 0
    assert 0 <= found["right_label"] <= found["n_label"]
    with pytest.raises(ValueError, match="resolve_at"):
        evaluate(*args, resolve_at=0.5)
    with pytest.raises(ValueError, match="cell types"):
        evaluate(*args[:3], "dsp", "cell_type", resolve_at=0.9)


def test_resolved_summary_counts_labels_broader_types_and_decoded_answers():
    from instructcell_agent.core_model.evaluation import Predictions, resolved_summary

    labels = ["B", "CD4T", "CD8T", "NK"]
    rows = [np.log([0.02, 0.50, 0.45, 0.03]), np.log([0.97, 0.01, 0.01, 0.01]), None,
            np.log([0.40, 0.30, 0.01, 0.29])]  # a T cell; a sure NK; decoded; nothing reaches 0.9
    # the NK cell's options came in another order, as evaluate shuffles them per cell
    preds = Predictions(truth=np.array(["CD8T", "NK", "B", "B"]), predicted=np.array(["CD4T", "NK", "B", "B"]),
                        with_options=np.array([True, True, False, True]), answers=["CD4T", "NK", "B", "B"],
                        seconds=1.0, score_rows=rows, score_labels=[labels, labels[::-1], None, labels])
    found = resolved_summary(preds, 1.0, 0.9)
    assert (found["n_label"], found["right_label"], found["n_broader"], found["right_broader"]) == (1, 1, 1, 1)
    assert found["n_unassigned"] == 1 and found["n_decoded"] == 1 and found["accuracy"] == 1.0
    # a temperature above 1 flattens the rows: the NK cell no longer reaches 0.9 alone
    assert resolved_summary(preds, 3.0, 0.9)["n_label"] == 0
