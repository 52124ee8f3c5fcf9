"""The Python API: AnnData in, results out; refusals of bad input; inputs never modified."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import instructcell_agent as ica
from synthetic import CELL_TYPES, make_counts
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


def test_annotate_does_not_modify_the_input(tiny_model, cells):
    before = cells.X.toarray().copy()
    obs_cols = list(cells.obs.columns)
    ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES))
    np.testing.assert_array_equal(cells.X.toarray(), before)
    assert list(cells.obs.columns) == obs_cols


def test_negative_values_are_refused(tiny_model, cells):
    bad = cells.copy()
    bad.X = sp.csr_matrix(bad.X.toarray() - 1.0)
    with pytest.raises(InvalidValuesError, match="negative"):
        ica.annotate(bad, model=tiny_model)


def test_too_few_shared_genes_are_refused(tiny_model, cells):
    other = cells.copy()
    other.var_names = [f"OTHER{i}" for i in range(other.n_vars)]
    with pytest.raises(GeneOverlapError):
        ica.annotate(other, model=tiny_model)


def test_duplicate_candidates_are_refused(tiny_model, cells):
    with pytest.raises(ValueError, match="duplicates"):
        ica.annotate(cells, model=tiny_model, candidates=["alpha", "alpha"])


def test_default_checkpoint_path_points_into_the_package():
    path = ica.default_checkpoint_path()
    assert path.name == "default" and path.parent.name == "checkpoints"
