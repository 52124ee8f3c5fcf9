"""Several samples read as one: named by sample, over the genes every sample holds."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest

from instructcell_agent.core_model.errors import InputFileError
from instructcell_agent.core_model.samples import SamplesJoinWarning, read_samples, sample_name
from synthetic import make_counts, write_cellranger


@pytest.mark.parametrize("path, name", [
    ("run/pbmc_ctrl/outs/filtered_feature_bc_matrix.h5", "pbmc_ctrl"),
    ("run/stim/outs/filtered_feature_bc_matrix", "stim"),
    ("multi/outs/per_sample_outs/donor1/count/sample_filtered_feature_bc_matrix.h5", "donor1"),
    ("data/ctrl.h5ad", "ctrl"),
    ("data/day3.zarr", "day3"),
    ("GSE1_RAW/GSM1_ctrl_matrix.mtx.gz", "GSM1_ctrl"),  # GEO's per-sample Matrix Market files
    ("run/stim/outs/filtered_feature_bc_matrix/matrix.mtx.gz", "stim"),
    ("sampleA/Solo.out/Gene/filtered/matrix.mtx", "sampleA"),  # STARsolo
    ("data/GSE2_counts.csv.gz", "GSE2_counts")])
def test_a_sample_is_named_by_its_folder_or_file(path, name):
    assert sample_name(path) == name


def _digests(root):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_samples_are_read_as_one_named_by_sample_over_shared_genes(tmp_path):
    first, second = make_counts(12, seed=1), make_counts(8, seed=2)
    (tmp_path / "ctrl" / "outs").mkdir(parents=True)
    write_cellranger(first, tmp_path / "ctrl" / "outs" / "filtered_feature_bc_matrix.h5", "h5")
    write_cellranger(second[:, 2:], tmp_path / "stim" / "outs" / "filtered_feature_bc_matrix", "mtx")  # 2 genes fewer
    before = _digests(tmp_path)
    paths = [tmp_path / "ctrl" / "outs" / "filtered_feature_bc_matrix.h5",
             tmp_path / "stim" / "outs" / "filtered_feature_bc_matrix"]
    with pytest.warns(SamplesJoinWarning, match=r"genes not in every sample \(118 kept\)"):
        both = read_samples(paths)
    assert _digests(tmp_path) == before  # read-only
    assert list(both.obs["sample"]) == ["ctrl"] * 12 + ["stim"] * 8
    assert both.obs_names[0] == f"{first.obs_names[0]}-ctrl" and both.obs_names.is_unique
    assert list(both.var_names) == list(second.var_names[2:])
    np.testing.assert_array_equal(both[both.obs["sample"] == "stim"].X.toarray(), second[:, 2:].X.toarray())
    np.testing.assert_array_equal(both[both.obs["sample"] == "ctrl"].X.toarray(), first[:, 2:].X.toarray())
    assert both.uns["samples"]["names"] == ["ctrl", "stim"]


def test_a_files_own_sample_column_is_kept_and_names_repeat_in_order(tmp_path):
    for i in range(2):
        cells = make_counts(6, seed=i)
        cells.obs["sample"] = f"donor{i}"
        (tmp_path / f"run{i}").mkdir()
        cells.write_h5ad(tmp_path / f"run{i}" / "pbmc.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same genes and columns: nothing left out, nothing to say
        both = read_samples([tmp_path / "run0" / "pbmc.h5ad", tmp_path / "run1" / "pbmc.h5ad"])
    assert list(both.obs["sample"].unique()) == ["donor0", "donor1"]  # theirs, untouched
    assert list(both.obs["sample_file"].unique()) == ["pbmc", "pbmc_2"]


def test_each_files_own_umap_is_left_out(tmp_path):
    for i in range(2):
        cells = make_counts(6, seed=i)
        cells.obsm["X_umap"] = np.full((6, 2), float(i))  # two analyses, two coordinate systems
        cells.write_h5ad(tmp_path / f"s{i}.h5ad")
    with pytest.warns(SamplesJoinWarning, match=r"each file's own embeddings and graphs \(X_umap\)"):
        both = read_samples([tmp_path / "s0.h5ad", tmp_path / "s1.h5ad"])
    assert "X_umap" not in both.obsm  # the map of the joined cells is computed afresh


def test_samples_on_different_scales_are_refused(tmp_path):
    import scanpy as sc

    counts, logged = make_counts(6, seed=1), make_counts(6, seed=2)
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    counts.write_h5ad(tmp_path / "a.h5ad")
    logged.write_h5ad(tmp_path / "b.h5ad")
    with pytest.raises(InputFileError, match=r"different scales \(a: raw_counts, b: log1p\)"):
        read_samples([tmp_path / "a.h5ad", tmp_path / "b.h5ad"])
    with pytest.raises(InputFileError, match="two or more samples"):
        read_samples([tmp_path / "a.h5ad"])
