"""Cells of a type the candidates lack, found by the checkpoint's linear read-out.

A closed candidate list puts every cell on one of its names. A list that leaves out a type the
file holds (NK cells, blood progenitors) puts those cells on the nearest listed type, often
confidently, and nothing in the answer says so. The checkpoint learned more types than a list
usually names, and its linear read-out (core_model/readout.py) scores every type of a label set
for the cost of one matrix product. So, per cell, within the label set that learned the model's
own answer, the read-out's probability on that set's types the candidates lack says whether the
cell may be one of them; the type it favours names what is missing.

Measured on the test splits, one type at a time left out of each set's own labels
(`python benchmarks/lacking_types.py`, benchmarks/results/lacking_types_test.md; 64 trials): 0.86
of the left-out type's cells flagged (0.83 flagged and named as it), 0.01 of the other cells, AUC
0.99. The note named the left-out type in 46 trials; of the other 18, 15 left out three cells or
fewer (under the note's rules), one was named as another set's spelling of it (baron2016's
'activated_stellate' as 'stellate'), and two were missed (kang2018's 11 dendritic cells, 0.09 of
them flagged; bastidasponce2019's 5 'Ngn3 low EP' cells, none). With every label listed the note
fired on none of the nine sets. A type only another set learned goes unseen (zheng2017's CD34+
cells among kang2018's labels: 0.06 flagged); reading every set that learned a finer type of the
answer found them (0.94) but flagged 0.49 of kang2018's cells among pbmc3k's labels, where nothing
was lacking (sets that cut the CD4 T lineage differently; benchmarks/EXPERIMENTS.md). The check
costs a few milliseconds against seconds for the answers (the read-out was fitted on the train and
valid cells, so valid says nothing here; the threshold 0.5 was fixed before the test run).
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
MEASURED = ("(On nine shared test sets, one type at a time left out of their own labels, 0.86 of the left-out type's "
            "cells were flagged and 0.01 of the other cells; with every label listed, none.)")


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


def lacking_types(loaded: LoadedModel, X, matched: np.ndarray, candidates: Sequence[str],
                  answers: Sequence[str], task: str = "annotation") -> Lacking | None:
    """`Lacking` for count rows `X` (the vocabulary genes at `matched`) answered `answers` (the
    model's own learned label per cell) among `candidates`; None without a read-out. A cell is
    read within the largest label set that learned its answer (the widest view of what else it
    might be: xin2016's four islet types are a part of wang2016's seven); a cell whose answer no
    set learned (a type the markers gave), or whose set the read-out cannot be trusted for on this
    file or in this cell (`MIN_WEIGHT`), is not measured."""
    readout = loaded.readout_for(matched)
    if readout is None:
        return None
    n = X.shape[0]
    probability, label = np.full(n, np.nan), np.full(n, None, dtype=object)
    genes = np.asarray((X > 0).sum(1)).ravel()
    sets = sorted((e["labels"] for e in loaded.label_sets.values() if e["task"] == task and readout.covers(e["labels"])),
                  key=len, reverse=True)
    home = [next((i for i, labels in enumerate(sets) if answer in labels), None) for answer in answers]
    for i, labels in enumerate(sets):
        # a shallow cell's few genes cap the read-out's weight too (its depth curve): not measured there either
        deep = readout.depth_caps(genes, labels) >= MIN_WEIGHT
        rows = np.flatnonzero(np.array([h == i for h in home], dtype=bool) & deep)
        lacking = lacking_labels(candidates, labels)
        shift = readout.shift_for(labels)
        few_genes = readout.weight_for(labels) < MIN_WEIGHT or (shift is not None and shift.coverage < MIN_COVERAGE)
        if not len(rows) or few_genes:
            continue
        probability[rows] = 0.0
        if not lacking:
            continue
        p = np.exp(readout_log_probs(loaded.model, X[rows], readout, lacking + [l for l in labels if l not in lacking]))
        probability[rows] = p[:, :len(lacking)].sum(1)
        label[rows] = np.asarray(lacking, dtype=object)[p[:, :len(lacking)].argmax(1)]
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
