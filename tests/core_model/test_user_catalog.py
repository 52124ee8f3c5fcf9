"""A user's own catalog file: every malformed entry is refused with a message before any training."""

from __future__ import annotations

import json

import pytest

from synthetic import tiny_train_config
from instructcell_agent.core_model.datasets import load_user_catalog
from instructcell_agent.core_model.errors import InputFileError
from instructcell_agent.core_model.training import train


def _catalog(tmp_path, synthetic_set, entries):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(entries))
    return path


def _entry(synthetic_set, **fields):
    return {"name": "mine", "task": "cta", "path": str(synthetic_set["path"]), "label": "cell_type",
            "split": str(synthetic_set["split_path"]), **fields}


def test_an_empty_catalog_is_refused(synthetic_set, tmp_path):
    # Before: [] gave no specs, and `train` fell back to every shared set, even with --no-shared.
    with pytest.raises(InputFileError, match="holds no entries"):
        load_user_catalog(_catalog(tmp_path, synthetic_set, []))


@pytest.mark.parametrize("fields, named", [({"label": ["cell_type"]}, "label"), ({"task": ["cta"]}, "task"),
                                            ({"name": 7}, "name"), ({"task": "dsp", "drug": ["x"]}, "drug")])
def test_a_field_that_is_not_text_is_refused_by_name(synthetic_set, tmp_path, fields, named):
    # Before: a list label reached pandas ("unhashable type: 'list'") as a traceback after data loading.
    with pytest.raises(InputFileError, match=f"entry 0: missing or invalid {named}"):
        load_user_catalog(_catalog(tmp_path, synthetic_set, [_entry(synthetic_set, **fields)]))


def test_train_refuses_an_empty_list_of_datasets(tmp_path):
    with pytest.raises(ValueError, match="specs is empty"):
        train(tiny_train_config(), tmp_path / "run", specs=[], show_progress=False)
    assert not (tmp_path / "run" / "gene_vocab.json").exists()


def test_a_set_that_is_not_an_h5ad_is_answered_with_the_conversion(synthetic_set, tmp_path):
    table = tmp_path / "GSE0_counts.csv.gz"
    table.write_bytes(b"")
    with pytest.raises(InputFileError, match="is not an .h5ad.*instructcell convert --data GSE0_counts.csv.gz "
                                             r"\[--obs-table METADATA\] --out GSE0_counts.h5ad"):
        load_user_catalog(_catalog(tmp_path, synthetic_set, [_entry(synthetic_set, path=str(table))]))
