"""Label sets, Cell Ontology synonyms, and mapping free-text answers onto a label set."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Sequence


def normalize_label(text: str) -> str:
    """Case- and whitespace-insensitive form used to compare answers with labels."""
    text = text.strip().strip(".").strip().strip("'\"`").strip()
    return re.sub(r"\s+", " ", text).casefold()


@lru_cache(maxsize=1)
def _synonym_ids() -> dict[str, str]:
    table = json.loads(resources.files(__package__).joinpath("resources/label_ontology.json").read_text())
    out: dict[str, str] = {}
    for term, entry in table.items():
        if term.startswith("_"):
            continue
        for label in entry["labels"]:
            out[normalize_label(label)] = term
    return out


def ontology_id(label: str) -> str | None:
    """Cell Ontology id recorded for a label string, if any."""
    return _synonym_ids().get(normalize_label(label))


@dataclass(frozen=True)
class LabelMapper:
    """Maps generated answers onto one dataset's label set (exact, then through CL synonyms)."""

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
        term = _synonym_ids().get(key)
        return self._by_term.get(term) if term else None  # type: ignore[attr-defined]

    def map_all(self, answers: Sequence[str]) -> list[str | None]:
        return [self.map(a) for a in answers]
