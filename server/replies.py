"""The replies' views of the package's results: what the MCP and LangChain tools return, cut
to a size an agent can read."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .schemas import AgreementSummary, GroupSummary, LabelAgreement, MarkerSupport, ObsColumn


def marker_support(checked) -> list[MarkerSupport]:
    """The reply's view of a `MarkerCheck`: weakest labels first, 200 at most."""
    rows = checked.table.sort_values("auroc", na_position="last", kind="stable").head(200)
    return [MarkerSupport(label=str(r.label), n_cells=int(r.n_cells), n_markers=int(r.n_markers),
                          auroc=None if np.isnan(r.auroc) else round(float(r.auroc), 4), support=r.support,
                          top_markers=r.top_markers, shares_markers_with=r.shares_markers_with)
            for r in rows.itertuples(index=False)]


def agreement_summary(found, key: str) -> AgreementSummary:
    """The reply's view of an `Agreement`: overall, and the 50 largest known labels."""
    largest = found.per_label.sort_values("n_cells", ascending=False, kind="stable").head(50)
    return AgreementSummary(
        compare_key=key, agreement=None if np.isnan(found.agreement) else round(found.agreement, 4),
        n_compared=found.n_compared,
        per_label={str(label): LabelAgreement(n_cells=int(row.n_cells), agreement=round(float(row.agreement), 4),
                                              most_common_answer=str(row.most_common_answer))
                   for label, row in largest.iterrows()})


def group_summaries(grouped, max_groups: int = 200) -> list[GroupSummary]:
    """The reply's view of a `Composition`: its first `max_groups` groups."""
    return [GroupSummary(group=str(group), n_cells=int(row.n_cells), answer=row.answer, share=round(row.share, 4),
                         runner_up=row.runner_up, runner_up_share=round(row.runner_up_share, 4),
                         mean_confidence=rounded(row.mean_confidence), not_labelled=int(row.not_labelled))
            for group, row in grouped.table.head(max_groups).iterrows()]


def describe_column(obs: pd.DataFrame, name: str) -> ObsColumn:
    col = obs[name]
    values = col.dropna().astype(str)
    return ObsColumn(name=str(name), dtype=str(col.dtype), n_unique=int(values.nunique()),
                     examples=list(dict.fromkeys(values.head(200)))[:5])


def rounded(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 3)


def outside_counts(result) -> dict[str, int] | None:
    """Cells flagged as a learned type the candidates lack, by that type (instructcell_agent/lacking_types.py)."""
    from instructcell_agent.lacking_types import LACKING_AT

    if result.outside is None:
        return None
    flagged = np.asarray(result.outside, dtype=float) > LACKING_AT  # NaN compares False
    return {str(k): int(v) for k, v in pd.Series(result.outside_type[flagged]).value_counts().items()}


def candidates_for(model, cells: ad.AnnData, detected_species: str = "") -> dict[str, Any]:
    """inspect_dataset's candidates for `cells`: the label sets learned for their most common
    (species, tissue), the species its gene names show standing in for a missing species column
    (as annotate_cells does); where there are none and the tissue is known, its known cell types
    (interpret/tissue_types.py). Listing every learned label instead mixes sets, and a mix is
    scored as plain text (route_candidates), which the model answers poorly."""
    from instructcell_agent.core_model.datasets import prompt_fields
    from instructcell_agent.interpret.tissue_types import UnknownTissueError, tissue_cell_types

    contexts = Counter((f["species"], f["tissue"]) for f in prompt_fields(cells))
    species, tissue = contexts.most_common(1)[0][0] if contexts else ("", "")
    species = species or detected_species or ""
    names = model.label_sets_for_context("annotation", species, tissue)
    types: list[str] = []
    if not names and tissue:
        try:
            types = tissue_cell_types(tissue)
        except UnknownTissueError:
            pass  # a tissue no organ of the database stands for: nothing to offer
    return {"matching_label_sets": {name: list(model.label_sets[name]["labels"]) for name in names},
            "tissue_cell_types": types}


def explained_per_label(result) -> dict[str, int]:
    """Cells per label that its gene ranking averages: cells with no counts on the model's genes
    (all-zero model input) keep a group but are left out of the means, so they are not counted."""
    expressed = np.asarray(result.attributions.inputs > 0).any(axis=1)
    return dict(Counter(map(str, np.asarray(result.groups)[expressed])))
