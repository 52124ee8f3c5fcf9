"""Label sets, Cell Ontology synonyms, and mapping free-text answers onto a label set."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

import numpy as np


# The label of a cell whose answer's confidence fell below the caller's threshold
# (`AnnotationResult.unassigned_below`); the model's best guess stays in the answer.
UNASSIGNED = "Unassigned"


def unexplainable(labels: Sequence[Any], candidates: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """(missing, unassigned) masks of the cells with no label to explain: a missing one (None or
    NaN: annotate leaves cells without counts on the model's genes unlabelled) or 'Unassigned'
    (annotate's unassigned_below / unassigned_atypical), unless the candidates name it. The
    server counts an explain call's cells with the same rule before it runs (this module is
    light to import, interpret's is not)."""
    missing = np.array([label is None or (isinstance(label, float) and np.isnan(label)) for label in labels],
                       dtype=bool)
    named = candidates is not None and UNASSIGNED in [str(c) for c in candidates]
    unassigned = np.zeros_like(missing) if named else np.array([label == UNASSIGNED for label in labels], dtype=bool)
    return missing, unassigned


def normalize_label(text: str) -> str:
    """Case- and whitespace-insensitive form used to compare answers with labels."""
    text = text.strip().strip(".").strip().strip("'\"`").strip()
    return re.sub(r"\s+", " ", text).casefold()


@lru_cache(maxsize=1)
def _table() -> dict[str, dict]:
    table = json.loads(resources.files(__package__).joinpath("resources/label_ontology.json").read_text())
    return {term: entry for term, entry in table.items() if not term.startswith("_")}


@lru_cache(maxsize=1)
def _synonym_ids() -> dict[str, str]:
    return {normalize_label(label): term for term, entry in _table().items()
            for label in [entry["name"], *entry["labels"]]}


def ontology_ancestors(term: str) -> list[str]:
    """The term's ancestors that the synonym table also records, nearest first."""
    entry = _table().get(term)
    return list(entry.get("is_a", [])) if entry else []


def ontology_name(term: str) -> str:
    """The Cell Ontology name of a term in the synonym table ('CL:0000236' -> 'B cell')."""
    return _table()[term]["name"]


def ontology_synonyms(term: str) -> list[str]:
    """The label strings the synonym table ties to a term ('CL:0000236' -> ['B', 'B cell', ...])."""
    return list(_table()[term]["labels"])


def loose_label(text: str) -> str:
    """A label folded past spelling habits: '-positive' / ' positive' as '+', '-negative' as a minus,
    spaces, hyphens and underscores dropped, a plural 's' set aside ('CD16-positive monocytes' and
    'CD16+ Monocyte' are both 'cd16+monocyte'; 'B-cells' is 'bcell')."""
    key = normalize_label(text)
    key = re.sub(r"[\s_-]*positive\b", "+", key)
    key = re.sub(r"[\s_-]*negative\b", "\u2212", key)  # a minus sign, which the next line keeps
    key = re.sub(r"[\s_\-\u2010\u2011]+", "", key)
    return key[:-1] if len(key) > 3 and key.endswith("s") and not key.endswith("ss") else key


@lru_cache(maxsize=1)
def _loose_ids() -> dict[str, str]:
    """Loose forms of the recorded names, each kept only where it names one term."""
    seen: dict[str, set[str]] = {}
    for term, entry in _table().items():
        for label in [entry["name"], *entry["labels"]]:
            seen.setdefault(loose_label(label), set()).add(term)
    return {key: next(iter(terms)) for key, terms in seen.items() if len(terms) == 1}


def ontology_id(label: str) -> str | None:
    """Cell Ontology id recorded for a label string, if any: as written (case and spacing aside),
    else as spelt another common way ('CD16-positive monocyte' for the table's 'CD16+ Monocyte')."""
    return _synonym_ids().get(normalize_label(label)) or _loose_ids().get(loose_label(label))


@dataclass(frozen=True)
class LabelMapper:
    """Maps generated answers onto one dataset's label set: exact, then through CL synonyms, then
    to the label of the answer's nearest CL ancestor in the set ('CD8+ Cytotoxic T' is a 'CD8T').

    Never the other way: an answer coarser than the set's labels ('T cell' where the set has CD4
    and CD8 T cells) does not say which label it means, so it stays invalid."""

    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        exact: dict[str, str] = {}
        by_term: dict[str, list[str]] = {}
        for label in self.labels:
            exact[normalize_label(label)] = label
            term = ontology_id(label)
            if term:
                by_term.setdefault(term, []).append(label)
        object.__setattr__(self, "_exact", exact)
        # A term shared by two labels of one set is ambiguous there: drop it rather than guess.
        object.__setattr__(self, "_by_term", {t: v[0] for t, v in by_term.items() if len(v) == 1})

    def map(self, answer: str) -> str | None:
        """The label `answer` names, or None (an invalid answer)."""
        key = normalize_label(answer)
        if key in self._exact:  # type: ignore[attr-defined]
            return self._exact[key]  # type: ignore[attr-defined]
        term = ontology_id(answer)
        if term is None:
            return None
        by_term = self._by_term  # type: ignore[attr-defined]
        for candidate in [term, *ontology_ancestors(term)]:
            if candidate in by_term:
                return by_term[candidate]
        return None

    def map_all(self, answers: Sequence[str]) -> list[str | None]:
        return [self.map(a) for a in answers]
