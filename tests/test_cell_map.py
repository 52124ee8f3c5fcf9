"""The map of the answers: the file's own embedding where it has one, else a UMAP from its genes;
a two-panel PNG of labels and confidence."""

from __future__ import annotations

import numpy as np
import pytest

from instructcell_agent.cell_map import CellMap, cell_map, linear_values, plot_answers
from instructcell_agent.core_model.errors import InputFileError
from synthetic import CELL_TYPES, make_counts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cells():
    return make_counts(60, seed=3)


def test_the_files_own_umap_is_the_map(cells):
    own = cells.copy()
    own.obsm["X_umap"] = np.random.default_rng(0).normal(size=(own.n_obs, 2))
    got = cell_map(own)
    assert not got.computed and "obsm['X_umap']" in got.source
    np.testing.assert_allclose(got.coords, own.obsm["X_umap"], rtol=1e-6)


def test_a_seurat_exports_umap_columns_are_the_map(cells):
    own = cells.copy()
    own.obs["UMAP_1"], own.obs["UMAP_2"] = np.arange(own.n_obs), -np.arange(own.n_obs)
    got = cell_map(own)
    assert not got.computed and "obs['UMAP_1']" in got.source
    np.testing.assert_array_equal(got.coords[:, 1], -np.arange(own.n_obs))


def test_without_one_a_umap_is_computed_that_separates_the_types(cells):
    before = cells.copy()
    got = cell_map(cells)
    assert got.computed and got.coords.shape == (cells.n_obs, 2) and np.isfinite(got.coords).all()
    assert not cells.obsm and (cells.X != before.X).nnz == 0  # the input is left as it was
    np.testing.assert_array_equal(cell_map(cells).coords, got.coords)  # seeded: the same map twice
    assert _types_apart(got.coords, cells.obs["cell_type"].to_numpy())


def test_a_file_of_thousands_of_cells_gets_its_map():
    # from 8,192 cells on scanpy's neighbours take another path (one that fails under scipy 1.17)
    many = make_counts(8300, seed=4)
    got = cell_map(many)
    assert got.coords.shape == (8300, 2) and np.isfinite(got.coords).all()
    assert _types_apart(got.coords, many.obs["cell_type"].to_numpy())


def test_log_normalised_values_give_the_map_of_their_counts(cells):
    import scanpy as sc

    logged = cells.copy()
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    # read back to a linear scale first, not logged twice: the map is drawn from the same values
    linear = linear_values(logged).X.toarray()
    per_10k = cells.X.toarray() / cells.X.toarray().sum(axis=1, keepdims=True) * 1e4
    np.testing.assert_allclose(linear, per_10k, rtol=1e-4, atol=1e-3)
    assert _types_apart(cell_map(logged).coords, cells.obs["cell_type"].to_numpy())


def _types_apart(coords, labels) -> bool:
    """The planted types lie apart on the map: the closest two type centres are further apart
    than the widest type's mean distance to its centre."""
    centres = np.stack([coords[labels == t].mean(axis=0) for t in CELL_TYPES])
    spread = max(np.linalg.norm(coords[labels == t] - centres[i], axis=1).mean() for i, t in enumerate(CELL_TYPES))
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=2)[np.triu_indices(len(CELL_TYPES), 1)]
    return bool(gaps.min() > spread)


def test_cells_without_counts_are_left_off_and_too_few_refused(cells):
    import scipy.sparse as sp

    emptied = cells.copy()
    X = emptied.X.toarray()
    X[:4] = 0
    emptied.X = sp.csr_matrix(X)
    got = cell_map(emptied)
    assert np.isnan(got.coords[:4]).all() and np.isfinite(got.coords[4:]).all()
    with pytest.raises(InputFileError, match="too few to draw a map"):
        cell_map(emptied[:7].copy())  # three cells with counts


def test_the_figure_is_a_png_with_every_cell(tmp_path, cells):
    coords = np.random.default_rng(1).normal(size=(cells.n_obs, 2)).astype(np.float32)
    labels = [None, "Unassigned", *cells.obs["cell_type"].astype(str)[2:]]
    conf = np.r_[np.nan, 0.3, np.linspace(0.4, 1.0, cells.n_obs - 2)]
    path = plot_answers(CellMap(coords, "test", computed=False), labels, conf, tmp_path / "map.png", title="t")
    assert path.read_bytes()[:8] == PNG_MAGIC and [p.name for p in tmp_path.iterdir()] == ["map.png"]
    with pytest.raises(ValueError, match="60 cells on the map, 59 labels"):
        plot_answers(CellMap(coords, "test", computed=False), labels[1:], conf, tmp_path / "x.png")


def test_free_answers_are_coloured_by_population_candidates_as_given(cells, tmp_path, monkeypatch):
    import pandas as pd

    from instructcell_agent import cell_map as module
    from instructcell_agent.results import AnnotationResult

    drawn = {}
    monkeypatch.setattr(module, "plot_answers", lambda cmap, labels, conf, path, title: drawn.update(labels=labels))
    spellings = ["CD14+ Mono", "CD14+Mono", "CD14+Mono", None, "Unassigned", "a type of its own"]
    labels = np.array([spellings[i % 6] for i in range(cells.n_obs)], dtype=object)
    free = AnnotationResult(obs_names=list(cells.obs_names), labels=labels, confidence=np.full(cells.n_obs, 0.9),
                            answers=list(labels), provenance={"task": "annotation"})
    free.draw_map(cells, tmp_path / "m.png")
    # two training sets' spellings of one population share a colour, under the more frequent one
    assert drawn["labels"][:6] == ["CD14+Mono", "CD14+Mono", "CD14+Mono", None, "Unassigned", "a type of its own"]
    assert free.composition(["g"] * cells.n_obs).table.loc["g", "answer"] == "CD14+Mono"  # counted the same way
    scored = AnnotationResult(obs_names=list(cells.obs_names), labels=labels, confidence=np.full(cells.n_obs, 0.9),
                              answers=list(labels), provenance={"task": "annotation"},
                              probabilities=pd.DataFrame(np.full((cells.n_obs, 2), 0.5), columns=["x", "y"]))
    scored.draw_map(cells, tmp_path / "m.png")
    assert list(drawn["labels"][:6]) == spellings  # the caller's candidates are drawn under their own names


def test_a_computed_map_never_replaces_a_umap_the_file_holds(cells):
    from instructcell_agent.cell_map import keep_coords

    partial = cells.copy()
    partial.obsm["X_umap"] = np.full((partial.n_obs, 2), np.nan)  # e.g. cells added after the UMAP was made
    partial.obsm["X_umap"][:10] = 1.0
    got = cell_map(partial)
    assert got.computed  # an embedding with holes is not drawn on
    assert keep_coords(partial, got) == "X_instructcell_umap"
    assert np.isnan(partial.obsm["X_umap"][10:]).all() and (partial.obsm["X_umap"][:10] == 1).all()
    fresh = cells.copy()
    assert keep_coords(fresh, got) == "X_umap" and keep_coords(fresh, cell_map(fresh)) is None
