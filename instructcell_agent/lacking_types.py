"""Cells of a type the candidates lack, found by the checkpoint's linear read-out.

A closed candidate list puts every cell on one of its names. A list that leaves out a type the
file holds (NK cells, blood progenitors) puts those cells on the nearest listed type, often
confidently, and nothing in the answer says so. The checkpoint learned more types than a list
usually names, and its linear read-out (core_model/readout.py) scores every type of a label set
for the cost of one matrix product. So, per cell, within the label set that learned the model's
own answer, the read-out's probability on that set's types the candidates lack says whether the
cell may be one of them; the type it favours names what is missing.

Measured on the test splits, one type at a time left out of each set's own labels
(`python benchmarks/lacking_types.py`, benchmarks/results/lacking_types_test.md, 2026-12-07; 64
trials): 0.84 of the left-out type's cells flagged (0.80 flagged and named as it), 0.01 of the
other cells, AUC 0.95. The note named the left-out type in 46 trials; of the other 18, 15 left
out three cells or fewer (under the note's rules), one was named as another set's spelling of it
(baron2016's 'activated_stellate' as 'stellate'), and two were missed (kang2018's 11 dendritic
cells, 0.27 of them flagged; bastidasponce2019's 5 'Ngn3 low EP' cells, none). With every label
listed one cell of the nine sets' 1,193 was flagged and no note fired. Cells too shallow for the
read-out's depth curve to give it half its weight are not measured (wang2016's and pbmc3k's
small gene panels leave some of their cells so: 0.76 and 0.82 of their left-out cells flagged).

A type only another set learned goes unseen (zheng2017's CD34+ cells among kang2018's labels: 0.04
flagged). Reading every other set that learned the answer too (`across_sets=True`), for its types
the candidates lack outside their lineages, found them (0.94) but cried wolf: with every label
listed 0.07 of the cells flagged and the note fired on five of nine sets (tabula muris's mouse
cells among kang2018's labels: 0.26 flagged, nearly all as 'CD34+' by the human blood sets'
read-outs), so it is not the default. The check costs milliseconds against seconds for the
answers (the read-out was fitted on the train and valid cells, so valid says nothing here; the
threshold 0.5 and the rules' criteria were fixed before the test runs, benchmarks/EXPERIMENTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .core_model.checkpoint import LoadedModel
from .core_model.labels import normalize_label, ontology_ancestors, ontology_id
from .core_model.readout_first import readout_log_probs

LACKING_AT = 0.5  # a cell is flagged where the read-out puts more than this on types the candidates lack
NOTE_SHARE, NOTE_CELLS = 0.02, 3  # the note needs this share of the cells flagged, and this many
# The read-out's weight for a set on this file (its curve over gene coverage, core_model/readout_weight.py)
# says how far it can be trusted there: 1 on files holding the genes its training files held, 0.18 to 0.30
# on pbmc68k_reduced's 5% of them, where it saw CD16 monocytes in 58 of 300 cells. Below this, no check.
MIN_WEIGHT = 0.5
# The curve refitted for the re-centred read-out (core_model/readout_adapt.py; an option) keeps weight 1
# on files holding few of the genes; the check keeps to the files it was measured on, those the falling
# curve gives 0.5 or more (gene coverage 0.26 and up).
MIN_COVERAGE = 0.26
LACK_PHRASE = "look like types the model learned that the candidates lack"

# benchmarks/results/lacking_types_test.md (`python benchmarks/lacking_types.py`)
MEASURED = ("(On nine shared test sets, one type at a time left out of their own labels, 0.84 of the left-out type's "
            "cells were flagged and 0.01 of the other cells; with every label listed, 1 cell of 1,193 and no note.)")


@dataclass(frozen=True)
class Lacking:
    """Per cell: the read-out's probability that it is a learned type the candidates lack (NaN
    where not measured) and the likeliest such type (None where there is none)."""

    probability: np.ndarray
    label: np.ndarray


def lacking_labels(candidates: Sequence[str], labels: Sequence[str]) -> list[str]:
    """Of a label set's `labels`, the types `candidates` lack: neither a candidate (same name, or
    at or below a candidate's Cell Ontology term) nor broader than one ('T cell' beside 'CD4 T
    cell', which every CD4 T cell also is)."""
    names = {normalize_label(c) for c in candidates}
    terms = {t for c in candidates if (t := ontology_id(c))}
    lacking = []
    for label in labels:
        term = ontology_id(label)
        within = term is not None and (term in terms or bool(terms & set(ontology_ancestors(term))))
        broader = term is not None and any(term in ontology_ancestors(t) for t in terms)
        if normalize_label(label) not in names and not within and not broader:
            lacking.append(label)
    return lacking


def _terms_with_self(term: str) -> set[str]:
    return {term, *ontology_ancestors(term)}


def learned_elsewhere(candidates: Sequence[str], labels: Sequence[str], learned_terms: set[str]) -> list[str]:
    """Of another label set's `labels`, the types `candidates` lack (`lacking_labels`) that are not
    another cut of a listed type's lineage: sharing with no candidate an ancestor (themselves
    included) that some training set names as one type. zheng2017's 'CD4+ T Helper2' beside
    pbmc3k's 'Memory CD4 T' shares 'CD4-positive, alpha-beta T cell', kang2018's 'CD4T': where a
    study calls that one type, a finer cut is resolution, not a missing type. Its 'CD34+' shares
    nothing learned with blood's mature types, so a list of those lacks it. Labels without a
    term count as lacking."""
    terms = [_terms_with_self(t) for c in candidates if (t := ontology_id(c))]
    kept = []
    for label in lacking_labels(candidates, labels):
        term = ontology_id(label)
        if term is None or not any(_terms_with_self(term) & c & learned_terms for c in terms):
            kept.append(label)
    return kept


def _learns(labels: Sequence[str], answer: str) -> bool:
    """Whether a label set learned `answer` or a finer type (a label at or under its term)."""
    if answer in labels:
        return True
    term = ontology_id(answer)
    return term is not None and any((t := ontology_id(l)) is not None and term in _terms_with_self(t) for l in labels)


def held(candidates: Sequence[str], labels: Sequence[str]) -> int:
    """How many of `candidates` a label set spells: by name, or by the same Cell Ontology term."""
    names = {normalize_label(l) for l in labels}
    terms = {t for l in labels if (t := ontology_id(l))}
    return sum(normalize_label(c) in names or ontology_id(c) in terms for c in candidates)


def _homes(sets: Sequence[Sequence[str]], answers: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
    """Per answer, the index in `sets` of the set that learned it and spells the most candidates
    (ties: the earlier, larger set); -1 where none learned it. The candidates are the user's
    vocabulary: tabula muris's five labels put a B cell in tabula muris's set, not in puram2017's
    nine head-and-neck types, which spell 'B cell' too."""
    rank = sorted(range(len(sets)), key=lambda i: -held(candidates, sets[i]))  # stable: ties keep size order
    home = {a: next((i for i in rank if a in sets[i]), -1) for a in set(answers)}
    return np.array([home[a] for a in answers], dtype=int)


def lacking_types(loaded: LoadedModel, X, matched: np.ndarray, candidates: Sequence[str],
                  answers: Sequence[str], task: str = "annotation", across_sets: bool = False,
                  home_by: str = "largest") -> Lacking | None:
    """`Lacking` for count rows `X` (the vocabulary genes at `matched`) answered `answers` (the
    model's own learned label per cell) among `candidates`; None without a read-out. A cell is
    read within the largest label set that learned its answer (the widest view of what else it
    might be: xin2016's four islet types are a part of wang2016's seven) and, with `across_sets`,
    within every other set that learned its answer or a finer type, for the types that set
    learned and the candidates lack (`learned_elsewhere`): zheng2017's CD34+ cells asked among
    kang2018's labels, which no kang2018 type covers. Per cell the largest probability counts. A
    cell whose answer no set learned (a type the markers gave), or whose set the read-out cannot
    be trusted for on this file or in this cell (`MIN_WEIGHT`), is not measured there. With
    `home_by="candidates"` the home set is the one spelling the most candidates (`_homes`)."""
    if home_by not in ("largest", "candidates"):
        raise ValueError(f"home_by must be 'largest' or 'candidates', not {home_by!r}")
    readout = loaded.readout_for(matched)
    if readout is None:
        return None
    n = X.shape[0]
    probability, label = np.full(n, np.nan), np.full(n, None, dtype=object)
    genes = np.asarray((X > 0).sum(1)).ravel()
    sets = sorted((e["labels"] for e in loaded.label_sets.values() if e["task"] == task and readout.covers(e["labels"])),
                  key=len, reverse=True)
    home = _homes(sets, answers, candidates) if home_by == "candidates" else \
        np.array([next((i for i, labels in enumerate(sets) if answer in labels), -1) for answer in answers])
    if across_sets:
        learned_terms = {t for labels in sets for l in labels if (t := ontology_id(l))}
        distinct = {a for a in answers if isinstance(a, str)}
    for i, labels in enumerate(sets):
        shift = readout.shift_for(labels)
        if readout.weight_for(labels) < MIN_WEIGHT or (shift is not None and shift.coverage < MIN_COVERAGE):
            continue
        # a shallow cell's few genes cap the read-out's weight too (its depth curve): not measured there
        # either; read anyway, pbmc3k's test cells thinned to a fifth of their counts had 0.38 of the cells of
        # listed types flagged where 0.01 were (benchmarks/EXPERIMENTS.md, 2026-12-07)
        deep = readout.depth_caps(genes, labels) >= MIN_WEIGHT
        own = (home == i) & deep
        readings = [(np.flatnonzero(own), lacking_labels(candidates, labels))]
        if across_sets:
            read_here = {a for a in distinct if _learns(labels, a)}
            others = np.array([a in read_here for a in answers], dtype=bool) & (home >= 0) & (home != i) & deep
            readings.append((np.flatnonzero(others), learned_elsewhere(candidates, labels, learned_terms)))
        for rows, lacking in readings:
            if not len(rows):
                continue
            total, best = np.zeros(len(rows)), np.full(len(rows), None, dtype=object)
            if lacking:
                order = lacking + [l for l in labels if l not in lacking]
                p = np.exp(readout_log_probs(loaded.model, X[rows], readout, order))[:, :len(lacking)]
                total, best = p.sum(1), np.asarray(lacking, dtype=object)[p.argmax(1)]
            better = ~(probability[rows] >= total)  # NaN (not yet measured) is replaced
            probability[rows[better]], label[rows[better]] = total[better], best[better]
    label[~(probability > 0)] = None
    return Lacking(probability, label)


def is_lacking_note(note: str) -> bool:
    """Whether a result's note is `lacking_note`'s (a file answered in chunks recounts it whole)."""
    return LACK_PHRASE in note


def lacking_note(lacking: Lacking | None) -> str | None:
    """A note naming the types the candidates seem to lack, where enough cells are flagged."""
    if lacking is None:
        return None
    flagged = lacking.probability > LACKING_AT  # NaN compares False
    n, measured = int(flagged.sum()), int(np.isfinite(lacking.probability).sum())
    if not measured or n < NOTE_CELLS or n < NOTE_SHARE * measured:
        return None
    names, counts = np.unique(lacking.label[flagged].astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    named = ", ".join(f"{str(names[i])!r} ({counts[i]})" for i in order[:5])
    return (f"{n:,} of {measured:,} cells ({n / measured:.0%}) {LACK_PHRASE}: {named} (the read-out's "
            f"probability on those types above {LACKING_AT:g}; per cell in 'outside_candidates' and 'outside_type'). "
            f"Add the type to the candidates if the file may hold it: those cells were given the nearest candidate. "
            f"{MEASURED}")
