"""Which cells `explain` attributes, and to which labels.

The labels come from the caller (an obs column, one per cell, or one for all), from the model's
own answers given first (`max_cells_per_label` without labels), or from the attribution pass
itself (predicted labels); cells without a label to explain are left out; `max_cells_per_label`
draws at most that many of each; the candidates scored are the caller's, a label set's, or the
labels the cells name. A drug makes the question a drug-response one.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from instructcell_agent.core_model.checkpoint import LoadedModel
from instructcell_agent.core_model.errors import LabelKeyError
from instructcell_agent.core_model.hierarchy import broader_cover
from instructcell_agent.core_model.labels import UNASSIGNED, LabelMapper, unexplainable

from .attribution import RUNNER_UP, Attributions

# Without labels or candidates, explain scores the learned label set that holds most free answers.
# Why: over every learned label at once (53 for the shipped checkpoint, from several tissues) the
# scored labels are no one set, so the read-out cannot join and the reference is a pool of sets'
# mean cells; on 97 zheng2017 cells half the top-5 genes were then mitochondrial or ribosomal,
# and the run took 4 min 14 s against 1 min 20 s over one set (not timed side by side).
_MAJORITY = 0.5
# Choosing the set needs a sample, not every cell: an extra free-answer pass over a large file
# would cost a fair share of the attribution itself.
_SET_SAMPLE = 256


def drug_and_task(model: LoadedModel, dataset: str | None, drug: str | None) -> tuple[str | None, str]:
    """The drug asked about (a drug-response `dataset` brings its own) and the task it makes."""
    entry = model.label_sets.get(dataset, {}) if dataset is not None else {}
    if drug is None and entry.get("task") == "drug_response":
        drug = entry.get("drug") or None  # a response set's labels are asked about its own drug
        if drug is None:
            raise ValueError(f"{dataset!r} is a drug-response label set that records no drug; pass drug=...")
    if drug is not None and not str(drug).strip():
        raise ValueError("drug is empty; name the drug the responses are to (e.g. 'erlotinib')")
    return drug, "annotation" if drug is None else "drug_response"


def answer_candidates(model: LoadedModel, candidates: Sequence[str] | None, dataset: str | None,
                      drug: str | None) -> list[str] | None:
    """What the cells are asked to choose from before they are drawn: the candidates, else the
    label set's labels, else the learned responses; None (free answers) for cell types of no
    one set, whose free answers range over the labels learned for the cells' species and tissue."""
    if candidates is not None:
        return [str(c) for c in candidates]
    if dataset is not None:
        return [str(c) for c in model.label_set(dataset)["labels"]]
    return model.labels_for_task("drug_response") if drug is not None else None


def answers_first(model: LoadedModel, adata: ad.AnnData, cands: list[str] | None, drug: str | None,
                  **kwargs: Any) -> tuple[np.ndarray, str]:
    """Each cell's answer (None where annotate leaves a cell unlabelled), what max_cells_per_label
    draws from when no labels are given, and a note saying so."""
    from instructcell_agent.api import annotate, predict_drug_response

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # annotate's notes on the file are explain's own to give
        if drug is not None:
            result = predict_drug_response(adata, drug=drug, model=model, candidates=cands, **kwargs)
        else:
            result = annotate(adata, model=model, candidates=cands, **kwargs)
    answers = np.asarray([None if a is None else str(a) for a in result.labels], dtype=object)
    how = "predict_drug_response" if drug is not None else "annotate"
    if (fast := result.provenance.get("fast")) is not None:
        how += (f", fast: {fast['cells_answered_by_readout_alone']:,} by the linear read-out alone"
                if fast["cells_answered_by_readout_alone"] else f", fast not used: {fast.get('why_none', '')}")
    return answers, (f"no labels given: the {adata.n_obs:,} cells were answered first ({how}, without gradients) "
                     "and max_cells_per_label drew from each answer")


def set_of_free_answers(model: LoadedModel, adata: ad.AnnData, *, species: str | None,
                        **matrix: Any) -> tuple[str | None, str | None]:
    """The learned annotation label set holding the most of the free answers of up to
    `_SET_SAMPLE` evenly spaced cells (a label several sets share counts for each), when it holds
    at least half of them; and a note saying so."""
    from instructcell_agent.api import annotate

    rows = np.unique(np.linspace(0, adata.n_obs - 1, num=min(adata.n_obs, _SET_SAMPLE)).round().astype(int))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # annotate's notes on the file are explain's own to give
        answers = annotate(adata[rows], model=model, species=species or "", **matrix).labels
    answered = [str(a) for a in answers if a is not None]
    counts = {name: sum(a in set(entry["labels"]) for a in answered)
              for name, entry in model.label_sets.items() if entry["task"] == "annotation"}
    if not answered or not counts:
        return None, None
    best = max(counts, key=lambda name: counts[name])
    if counts[best] < _MAJORITY * len(answered):
        return None, None
    return best, (f"no labels or candidates given: explained over label set {best!r}, which holds "
                  f"{counts[best]:,} of the free answers of {len(answered):,} of the cells (annotate)")


def given_labels(adata: ad.AnnData, labels: str | Sequence[str] | None) -> np.ndarray | str | None:
    """Per-cell labels from `labels`; a single label name is returned as a str (checked later)."""
    if labels is None:
        return None
    if isinstance(labels, str):
        if labels not in adata.obs.columns:
            return labels
        column = adata.obs[labels]  # missing labels kept as None: _without_unlabelled says what it left out
        return np.asarray([None if pd.isna(v) else str(v) for v in column], dtype=object)
    # None / NaN stay missing (annotate leaves cells without counts unlabelled), not the string 'None'
    values = np.asarray([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in labels],
                        dtype=object)
    if len(values) != adata.n_obs:
        raise ValueError(f"labels has {len(values)} entries for {adata.n_obs} cells; pass one label per cell, "
                         "an obs column name, or a single label name")
    return values


def recorded_candidates(adata: ad.AnnData, labels) -> tuple[list[str] | None, str | None]:
    """The candidates ``annotate`` answered among, with a note, when `labels` names a column its
    ``to_adata`` wrote (``<key>_label``, ``<key>_resolved``) and ``uns[key]`` records them: the
    answers are then explained over the probabilities they came from (a candidate no cell was
    given still takes its share; a resolved broader type sums the candidates under it)."""
    if not isinstance(labels, str) or labels not in adata.obs.columns:
        return None, None
    key, _, kind = labels.rpartition("_")
    record = adata.uns.get(key) if kind in ("label", "resolved") and key else None
    found = record.get("candidates") if isinstance(record, Mapping) else None
    if found is None or len(found) < 2:
        return None, None
    names = [str(c) for c in found]
    return names, f"candidates taken from uns[{key!r}]: the {len(names)} annotate answered among"


def recorded_probabilities(adata: ad.AnnData, labels, candidates: Sequence[str]) -> np.ndarray | None:
    """The probabilities ``annotate`` wrote beside the answers `labels` names (``<key>_label``:
    ``obsm['<key>_probabilities']``, columns ``uns[key]['candidates']``), in `candidates` order;
    None where the file holds no such record for these candidates."""
    if not isinstance(labels, str):
        return None
    key, _, kind = labels.rpartition("_")
    record = adata.uns.get(key) if kind == "label" and key else None
    found = adata.obsm.get(f"{key}_probabilities") if isinstance(record, Mapping) else None
    columns = [str(c) for c in record.get("candidates", ())] if found is not None else []
    if found is None or sorted(columns) != sorted(map(str, candidates)) or np.shape(found)[1] != len(columns):
        return None
    return np.asarray(found, dtype=np.float32)[:, [columns.index(str(c)) for c in candidates]]


def without_unlabelled(adata: ad.AnnData, given: np.ndarray | str | None,
                       candidates: Sequence[str] | None) -> tuple[ad.AnnData, np.ndarray | str | None, str | None]:
    """Leave out the cells that have no label to explain (`unexplainable`), with a note saying
    how many."""
    if given is None or isinstance(given, str):
        return adata, given, None
    missing, unassigned = unexplainable(given, candidates)
    drop = missing | unassigned
    if not drop.any():
        return adata, given.astype(str), None
    if drop.all():
        raise LabelKeyError(f"none of the {adata.n_obs:,} cells has a label to explain "
                            f"({int(missing.sum()):,} missing, {int(unassigned.sum()):,} {UNASSIGNED!r})")
    parts = [f"{int(n):,} {what}" for n, what in ((missing.sum(), "without a label"),
                                                   (unassigned.sum(), f"labelled {UNASSIGNED!r}")) if n]
    note = f"{' and '.join(parts)} of {adata.n_obs:,} cells left out: no label to explain"
    keep = np.flatnonzero(~drop)
    return adata[keep].copy(), given[keep].astype(str), note


def check_cap(cap: int | None) -> None:
    """Refuse a cap that is not a whole number of at least 1 (before any cell is answered)."""
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1):
        raise ValueError(f"max_cells_per_label must be a whole number of at least 1, got {cap!r}")


def cap_per_label(adata: ad.AnnData, given: np.ndarray | str, cap: int,
                  seed: int) -> tuple[ad.AnnData, np.ndarray | str, str | None]:
    """At most `cap` cells of each label, drawn at random (seeded), kept in file order; with a note
    saying so when cells were left out."""
    groups = np.full(adata.n_obs, given, dtype=object) if isinstance(given, str) else given
    rng = np.random.default_rng(seed)
    parts = [np.flatnonzero(groups == label) for label in sorted(set(groups.tolist()))]
    keep = np.sort(np.concatenate([rng.choice(rows, cap, replace=False) if rows.size > cap else rows
                                   for rows in parts]))
    if keep.size == adata.n_obs:
        return adata, given, None
    note = (f"explained {keep.size:,} of {adata.n_obs:,} cells: at most {cap:,} per label, drawn at random "
            f"(seed {seed})")
    return adata[keep].copy(), given if isinstance(given, str) else given[keep], note


def candidates_of(model: LoadedModel, dataset: str | None, candidates: Sequence[str] | None,
                  given: np.ndarray | str | None, task: str = "annotation") -> list[str]:
    if candidates is not None:
        cands = [str(c) for c in candidates]
    elif dataset is not None:
        cands = [str(c) for c in model.label_set(dataset)["labels"]]
    elif given is not None and not isinstance(given, str):
        cands = sorted(set(given.tolist()))
    else:
        cands = model.labels_for_task(task)
    if len(set(cands)) != len(cands) or not cands:
        raise ValueError("candidates must be a non-empty list without duplicates")
    return cands


def broader_types(given: np.ndarray | str | None, cands: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, candidate indices) of each given label that is no candidate but a Cell Ontology type
    over two candidates or more, not all: a broader answer of `resolve_at` (core_model/hierarchy.py,
    the same rule), explained as the summed probability of the candidates under it."""
    if given is None:
        return []
    names = [given] if isinstance(given, str) else sorted(set(given.tolist()))
    return [(name, under) for name in names if name not in cands and (under := broader_cover(name, cands))]


def check_in_candidates(given: np.ndarray | str | None, cands: list[str], n_obs: int) -> np.ndarray | None:
    if given is None:
        return None
    if isinstance(given, str):
        if given not in cands:
            raise LabelKeyError(f"{given!r} is neither an obs column nor a candidate label; candidates: {cands}. "
                                "Pass labels=<obs column>, a label among the candidates, or candidates=[...]")
        return np.full(n_obs, given, dtype=object).astype(str)
    unknown = sorted(set(given.tolist()) - set(cands))
    if unknown:
        raise LabelKeyError(f"label(s) {unknown[:10]} are not among the candidates {cands}; pass candidates=[...] "
                            "or dataset=<label set> that contains them (a broader Cell Ontology type, as resolve_at "
                            "answers, is explained over two or more of the candidates but not all)")
    return given


def per_cell_versus(adata: ad.AnnData, versus: str | Sequence[str] | None) -> dict[str, str | None] | None:
    """`explain`'s `versus` per cell name, read on the input before any cell is left out, when it
    names an obs column (the author's labels, say) or holds one label per cell; None otherwise."""
    if versus is None or (isinstance(versus, str) and versus not in adata.obs.columns):
        return None
    values = given_labels(adata, versus)
    names = [str(n) for n in adata.obs_names]
    if len(set(names)) != len(names):
        raise ValueError("a versus label per cell needs unique cell names (adata.obs_names_make_unique())")
    return dict(zip(names, values.tolist()))


def versus_indices(versus: str | Sequence[str] | None, per_cell: dict[str, str | None] | None, explained: list[str],
                   adata: ad.AnnData, given: np.ndarray | str | None
                   ) -> tuple[np.ndarray | str | None, ad.AnnData, np.ndarray | str | None, str | None]:
    """`explain`'s `versus` as `attribute` takes it (None, ``"runner-up"``, or an index per cell),
    with the cells and labels left to explain and a note. A versus label spelled unlike the
    candidates is read through the Cell Ontology (`LabelMapper`, as free answers are). One label
    for every cell that maps to no candidate is refused, naming the candidates; per cell (an
    author's column), cells whose label is missing or maps to no candidate are left out."""
    if versus is None or (per_cell is None and versus == RUNNER_UP):
        return versus, adata, given, None
    names = ([versus] * adata.n_obs if per_cell is None
             else [per_cell[str(n)] for n in adata.obs_names])
    # an author's labels are often spelled their own way: read each through the Cell Ontology onto
    # the candidate naming its type or its nearest broader type ('CD14+ Monocyte' as 'CD14+Mono')
    mapper = LabelMapper(tuple(explained))
    read_as = {n: mapper.map(n) for n in set(names) if n is not None and n not in explained}
    unknown = sorted(n for n, m in read_as.items() if m is None)
    hint = (f"pass a candidate, an obs column of candidates, or {RUNNER_UP!r} for each cell's most probable other "
            "candidate")
    if unknown and per_cell is None:
        raise LabelKeyError(f"versus {versus!r} is neither an obs column nor among the candidates {explained} "
                            f"(nor a Cell Ontology name of one); {hint}")
    names = [n if n is None or n in explained else read_as[n] for n in names]
    have = np.asarray([n is not None for n in names])
    if not have.any():
        raise LabelKeyError(f"no cell has a versus label among the candidates {explained} (labels found: "
                            f"{unknown[:10]}); {hint}")
    read = sorted((n, m) for n, m in read_as.items() if m is not None)
    notes = ([f"versus labels read as candidates through the Cell Ontology: "
              f"{', '.join(f'{n!r} as {m!r}' for n, m in read[:5])}{' and more' if len(read) > 5 else ''}"]
             if read else [])
    if not have.all():
        keep = np.flatnonzero(have)
        why = f"missing or naming no candidate ({', '.join(map(repr, unknown[:5]))})" if unknown else "missing"
        notes.append(f"{int((~have).sum()):,} of {adata.n_obs:,} cells left out: their versus label is {why}")
        adata = adata[keep].copy()
        given = given[keep] if isinstance(given, np.ndarray) else given
        names = [names[i] for i in keep]
    return np.asarray([explained.index(n) for n in names], dtype=np.int64), adata, given, "; ".join(notes) or None


def contrast_groups(attr: Attributions, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[str, str]],
                                                                     str | None]:
    """The cells with something to contrast (their label is not the versus label itself), their
    'A vs B' groups, ``{group: (A, B)}`` ordered by A then B as the labels are explained, and a
    note on the cells left out."""
    names = np.asarray(attr.explained, dtype=object)
    label, other = np.asarray(groups, dtype=object), names[attr.versus]
    keep = np.flatnonzero(label != other)
    if keep.size == 0:
        raise LabelKeyError(f"every cell's label is its versus label ({', '.join(sorted(set(other.tolist())))}); "
                            f"nothing to explain. Pass another versus, or {RUNNER_UP!r}")
    contrast = np.asarray([f"{a} vs {b}" for a, b in zip(label[keep], other[keep])], dtype=str)
    present = set(zip(label[keep].tolist(), other[keep].tolist()))
    pairs = {f"{a} vs {b}": (a, b) for a in names.tolist() for b in names.tolist() if (a, b) in present}
    dropped = label.size - keep.size
    same = ", ".join(sorted(set(other[label == other].tolist())))
    note = (f"{dropped:,} cell(s) whose label is their versus label ({same}) left out: nothing to contrast a label "
            "with itself") if dropped else None
    return keep, contrast, pairs, note
