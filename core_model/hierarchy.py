"""The finest answer the model is sure of: a cell's label, or a broader Cell Ontology type.

Why: some populations are told apart poorly by any method (zheng2017's four CD4+ T subsets),
while which lineage the cell belongs to is rarely in doubt. A cell answered
'CD4+/CD45RO+ Memory' at 0.45, with 0.50 more spread over the other CD4+ subsets, is a
CD4-positive T cell at 0.95. Summing the probabilities of the labels under each Cell Ontology
term (core_model/resources/label_ontology.json, 'is_a') gives that answer, honestly weighted,
instead of a coin toss at the fine level or 'Unassigned'.

The rule, per cell, for a threshold `at` above 0.5: among the label itself and the ontology
terms above some of the labels (not all: a term over every candidate is sure by construction), take
the most specific one whose probability (the sum over the labels it covers) reaches `at`; none
reaching it leaves the cell 'Unassigned'. Above 0.5 two such terms always share labels, so 'most
specific' is well defined on this table's tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .labels import UNASSIGNED, normalize_label, ontology_ancestors, ontology_id, ontology_name

# what `level` says of a resolved answer
AT_LABEL, BROADER = "label", "broader type"


def check_resolve_at(at: float) -> None:
    """Refuse a threshold that would not single out one answer (at or below 0.5) or is not a probability."""
    if isinstance(at, bool) or not isinstance(at, (int, float, np.number)) or not 0.5 < at <= 1:
        raise ValueError(f"resolve_at takes a probability above 0.5 and at most 1 (0.9, say), got {at!r}")


@dataclass(frozen=True)
class _Node:
    name: str  # a label, or a Cell Ontology name
    term: str | None  # its Cell Ontology id, where the table has one
    covers: frozenset[int]  # the labels (column indices) it sums
    depth: int  # ancestors in the table: more is more specific among equal covers


def _informative(n_covered: int, n_labels: int) -> bool:
    """Whether a type over `n_covered` of `n_labels` labels is an answer of its own: it must cover
    two labels or more (one is that label), and not all of them: over every label its probability
    is 1 whatever the cell, so it would say what the candidates say, not what the cell does
    (xin2016's four islet labels asked of mouse ductal cells and progenitors would all come back
    'pancreatic endocrine cell')."""
    return 2 <= n_covered < n_labels


def broader_cover(name: str, labels: Sequence[str]) -> tuple[int, ...] | None:
    """The indices of `labels` under the Cell Ontology type `name`, where that type is a broader
    answer over them (`_informative`); None otherwise (no term, or not broader)."""
    term = ontology_id(str(name))
    if term is None:
        return None
    under = tuple(i for i, label in enumerate(labels)
                  if (t := ontology_id(str(label))) is not None and (t == term or term in ontology_ancestors(t)))
    return under if _informative(len(under), len(labels)) else None


def _nodes(labels: Sequence[str], terms: Sequence[str | None]) -> list[_Node]:
    """Each label, and each ontology term over the labels that is an answer of its own
    (`_informative`), most specific first."""
    nodes = [_Node(str(label), term, frozenset([j]), 1 << 30) for j, (label, term) in enumerate(zip(labels, terms))]
    covers: dict[str, set[int]] = {}
    for j, term in enumerate(terms):
        for t in ([term, *ontology_ancestors(term)] if term else []):
            covers.setdefault(t, set()).add(j)
    seen = {node.covers for node in nodes}
    # a term covering one label is that label; among terms covering the same labels the deepest
    # (the one whose ancestors include the others) names them best
    for term in sorted(covers, key=lambda t: -len(ontology_ancestors(t))):
        cover = frozenset(covers[term])
        if cover not in seen and _informative(len(cover), len(labels)):
            seen.add(cover)
            nodes.append(_Node(ontology_name(term), term, cover, len(ontology_ancestors(term))))
    return sorted(nodes, key=lambda n: (len(n.covers), -n.depth))


@dataclass(frozen=True)
class Resolved:
    """Per cell: the answer (a label, a broader type's Cell Ontology name, or 'Unassigned'), its
    probability, its Cell Ontology id (None where the table has none) and its level ('label',
    'broader type', or None for 'Unassigned' and unanswered cells)."""

    names: np.ndarray
    confidence: np.ndarray
    ontology_ids: np.ndarray
    levels: np.ndarray


def resolve(probs: np.ndarray, labels: Sequence[str], at: float) -> Resolved:
    """The finest answer reaching probability `at` for each row of `probs` (cells x labels, rows
    summing to 1; a NaN row, an unanswered cell, gets None). Labels sharing a Cell Ontology term
    (one population in several training sets' spellings) count as one: their summed probability
    keeps the most likely spelling, at the 'label' level."""
    check_resolve_at(at)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"probabilities of shape {probs.shape} for {len(labels)} labels")
    terms = [ontology_id(str(label)) for label in labels]
    nodes = _nodes(labels, terms)
    member = np.zeros((len(labels), len(nodes)))
    for k, node in enumerate(nodes):
        member[list(node.covers), k] = 1.0
    mass = probs @ member  # cells x nodes, nodes most specific first
    n = probs.shape[0]
    names = np.full(n, None, dtype=object)
    conf = np.full(n, np.nan)
    ids = np.full(n, None, dtype=object)
    levels = np.full(n, None, dtype=object)
    answered = ~np.isnan(probs).any(axis=1)
    reached = mass >= at - 1e-9  # a lone label at probability 1.0 may sum to 0.9999999
    for i in np.flatnonzero(answered):
        hits = np.flatnonzero(reached[i])
        if not len(hits):  # not even the broadest type is sure: no answer, so no probability of one
            names[i] = UNASSIGNED
            continue
        node = nodes[hits[0]]
        best = int(np.argmax(probs[i]))
        conf[i] = float(mass[i, hits[0]])
        if len(node.covers) == 1 or (node.term is not None and node.term == terms[best] and best in node.covers):
            # the label itself, or its population under several spellings: named as the model named it
            names[i], ids[i], levels[i] = str(labels[best]), terms[best], AT_LABEL
        else:
            names[i], ids[i], levels[i] = node.name, node.term, BROADER
    return Resolved(names, conf, ids, levels)


def consistent(answer: str, known: str) -> bool:
    """Whether `answer` is right for a cell known as `known`: the same type (a synonym too), a
    broader one ('CD4-positive, alpha-beta T cell' for 'CD4+/CD45RO+ Memory'), or a finer one
    ('CD8+ Cytotoxic T' for 'CD8T', as `evaluate` reads answers)."""
    if normalize_label(answer) == normalize_label(known):
        return True
    a, k = ontology_id(answer), ontology_id(known)
    return a is not None and k is not None and (a == k or a in ontology_ancestors(k) or k in ontology_ancestors(a))


def count_right(names: Sequence, levels: Sequence, known: Sequence) -> dict[str, int]:
    """How many resolved answers are at a label and at a broader type, how many of each are right
    for the `known` labels (`consistent`; a cell with no known label, None or NaN, is left out of
    both), and how many are 'Unassigned'."""
    out = {"n_label": 0, "right_label": 0, "n_broader": 0, "right_broader": 0,
           "n_unassigned": sum(name == UNASSIGNED for name in names)}
    for name, level, label in zip(names, levels, known):
        key = {AT_LABEL: "label", BROADER: "broader"}.get(level)
        if key is None or label is None or (isinstance(label, float) and np.isnan(label)):
            continue
        out[f"n_{key}"] += 1
        out[f"right_{key}"] += int(consistent(str(name), str(label)))
    return out
