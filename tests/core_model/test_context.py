"""Species and tissue spellings read as the training sets name them, in prompts and label-set matching."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from instructcell_agent.core_model.checkpoint import LoadedModel
from instructcell_agent.core_model.context import canonical_species, canonical_tissue
from instructcell_agent.core_model.datasets import prompt_fields


def test_canonical_spellings():
    assert canonical_species("Homo sapiens") == "human" and canonical_species(" Mus  musculus ") == "mouse"
    assert canonical_species("human and mouse") == "human and mouse"  # the training sets' own text stays
    assert canonical_tissue("PBMC") == "peripheral blood" and canonical_tissue("blood") == "peripheral blood"
    assert canonical_tissue("Islets of Langerhans") == "pancreas"
    assert canonical_tissue("liver") == "liver" and canonical_tissue("head and neck tumour") == "head and neck tumour"


def test_prompt_fields_read_cellxgene_columns_in_training_spelling():
    obs = pd.DataFrame({"organism": ["Homo sapiens", "Mus musculus"], "tissue": ["blood", "pancreas"]},
                       index=["a", "b"])
    fields = prompt_fields(ad.AnnData(np.zeros((2, 3), dtype=np.float32), obs=obs))
    assert [(f["species"], f["tissue"]) for f in fields] == [("human", "peripheral blood"), ("mouse", "pancreas")]
    # an explicit value is read the same way; a 'species' column wins over 'organism'
    obs["species"] = ["mouse", "mouse"]
    fields = prompt_fields(ad.AnnData(np.zeros((2, 3), dtype=np.float32), obs=obs), None, tissue="PBMC")
    assert {(f["species"], f["tissue"]) for f in fields} == {("mouse", "peripheral blood")}


def test_label_sets_are_found_for_cellxgene_spellings():
    sets = {
        "blood": {"task": "annotation", "labels": ["B", "NK"], "species": "human", "tissue": "peripheral blood"},
        "islets": {"task": "annotation", "labels": ["alpha"], "species": "human and mouse", "tissue": "pancreas"},
    }
    loaded = LoadedModel(model=None, vocab=[], label_sets=sets)  # type: ignore[arg-type]
    assert loaded.label_sets_for_context("annotation", "Homo sapiens", "blood") == ["blood"]
    assert loaded.label_sets_for_context("annotation", "Mus musculus", "pancreatic islets") == ["islets"]
    assert loaded.label_sets_for_context("annotation", "Homo sapiens", "liver") == []
