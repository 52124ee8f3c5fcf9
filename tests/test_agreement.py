"""Agreement of answers with labels the cells already have."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from synthetic import CELL_TYPES, make_counts

import instructcell_agent as ica
from instructcell_agent.agreement import agreement, known_labels
from instructcell_agent.core_model.errors import LabelKeyError


@pytest.fixture()
def cells():
    return make_counts(24, seed=5)


def test_answers_agree_by_name_synonym_or_finer_type_never_coarser():
    # 'CD8+ Cytotoxic T' is finer than 'T cell'; 'CD19+ B' is a synonym of 'B cell'; 'nk' is the
    # name in another case; 'Macrophage' is none of them
    found = agreement(["CD8+ Cytotoxic T", "CD19+ B", "nk", "Macrophage"], ["T cell", "B cell", "NK", "NK"])
    assert found.n_compared == 4 and found.agreement == pytest.approx(3 / 4)
    assert found.per_label.loc["B cell", "agreement"] == 1.0 and found.per_label.loc["NK", "agreement"] == 0.5
    # where the known labels split T cells, 'T cell' does not say which one it means
    split = agreement(["T cell", "CD8+ Cytotoxic T"], ["CD4T", "CD8T"])
    assert split.per_label["agreement"].to_dict() == {"CD4T": 0.0, "CD8T": 1.0}
    assert split.per_label.loc["CD4T", "most_common_answer"] == "T cell"


def test_common_author_spellings_are_read_as_their_population():
    # Azimuth's and tutorials' names for the shared PBMC populations
    found = agreement(["CD14+Mono", "FCGR3A+Mono", "CD4+/CD45RA+/CD25- Naive T", "CD4+/CD25 T Reg", "CD8T"],
                      ["CD14 Mono", "CD16 Mono", "CD4 Naive", "Regulatory T cells", "CD8+ T cells"])
    assert found.agreement == 1.0


def test_unlabelled_cells_and_cells_without_a_known_label_are_left_out():
    found = agreement(["B", None, "NK", "B"], ["B", "B", None, "NK"])
    assert (found.n_compared, found.n_unlabelled, found.n_unknown) == (2, 1, 1)
    assert found.agreement == 0.5
    assert found.per_label["n_cells"].to_dict() == {"B": 1, "NK": 1}
    assert "left out: 1 unlabelled, 1 without a known label" in found.summary()
    nothing = agreement([None, None], ["B", "NK"])
    assert nothing.n_compared == 0 and math.isnan(nothing.agreement) and nothing.per_label.empty


def test_most_common_answer_and_its_share_per_label():
    found = agreement(["B", "NK", "NK", "B"], ["NK", "NK", "NK", "B"])
    row = found.per_label.loc["NK"]
    assert row["n_cells"] == 3 and row["most_common_answer"] == "NK"
    assert row["agreement"] == pytest.approx(2 / 3) and row["most_common_share"] == pytest.approx(2 / 3)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="3 predicted labels for 2"):
        agreement(["B", "B", "B"], ["B", "B"])


def test_a_result_aligns_known_labels_by_cell_name(tiny_model, cells):
    result = ica.annotate(cells, model=tiny_model, candidates=list(CELL_TYPES))
    known = cells.obs["cell_type"]
    in_order = result.agreement(known)
    shuffled = result.agreement(known.iloc[np.random.default_rng(0).permutation(len(known))])
    assert in_order.agreement == shuffled.agreement
    expected = np.mean(np.asarray(result.labels, dtype=str) == known.astype(str).to_numpy())
    assert in_order.agreement == pytest.approx(expected)
    with pytest.raises(ValueError, match="does not hold the annotated cells"):
        result.agreement(pd.Series(known.to_numpy(), index=[f"x{i}" for i in range(len(known))]))


def test_a_missing_column_is_refused_with_the_columns_there_are(cells):
    with pytest.raises(LabelKeyError, match="no column 'celltype'.*'cell_type'"):
        known_labels(cells, "celltype")


def test_the_stored_form_survives_an_h5ad_round_trip_with_slashes_in_labels(tmp_path):
    import warnings

    import anndata as ad

    found = agreement(["CD4+/CD25 T Reg", "B"], ["CD4+/CD25 T Reg", "CD4+/CD25 T Reg"])
    cells = ad.AnnData(obs=pd.DataFrame(index=["a", "b"]))
    cells.uns["check"] = found.to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a '/' in a key warns now and fails in later anndata
        cells.write_h5ad(tmp_path / "x.h5ad")
    back = ad.read_h5ad(tmp_path / "x.h5ad").uns["check"]["per_label"]
    assert list(back["known"]) == ["CD4+/CD25 T Reg"] and list(back["agreement"]) == [0.5]
