"""Generation conditions: what a pseudo-cell is asked to be, and what the generator has seen.

A condition is (cell type, species, tissue, sequencing method, free condition text). The table
of conditions seen in training is stored with the generator; requests are checked against it so
that an unseen condition is refused (or generated with an explicit warning), never silently.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..context import canonical_species, canonical_tissue
from ..errors import InstructCellError
from ..instructions import placeholders_in, render
from ..labels import normalize_label, ontology_ancestors, ontology_id

log = logging.getLogger(__name__)

# Dataset condition codes and the ways people write them -> the text a prompt uses. Kept to the
# conditions of the sets we train on (kang2018: IFN-beta stimulated vs control). Keys are
# `_condition_key`s: case, spaces, hyphens and underscores ignored, "interferon" read as "ifn",
# "β" as "beta", a trailing "stimulated" / "treated" dropped.
CONDITION_TEXT: dict[str, str] = {
    "stim": "IFN-beta stimulated", "stimulated": "IFN-beta stimulated", "ifnb": "IFN-beta stimulated",
    "ifnbeta": "IFN-beta stimulated",
    "ctrl": "control", "control": "control", "unstimulated": "control", "untreated": "control",
    "mock": "control", "baseline": "control",
}
_IFN = re.compile(r"interferon")
_TRAILING_TREATMENT = re.compile(r"(?<=.)(stimulated|stimulation|treated|treatment)$")
FIELDS: tuple[str, ...] = ("cell_type", "species", "tissue", "sequencing_method", "condition")
CHECKED: tuple[str, ...] = ("cell_type", "species", "tissue", "condition")  # sequencing method is descriptive


class UnseenConditionError(InstructCellError):
    """A requested generation condition was not seen when the generator was trained."""


class ConditionChoiceWarning(UserWarning):
    """The request left species or tissue open and its cell type was learned in more than one
    context: the message names the one generated and the others, and how to ask for them."""


class MisreadConditionWarning(UserWarning):
    """The generator read the instruction as another training condition than the one requested."""


def condition_text(value: str | None) -> str:
    """Map a dataset's condition code (``"stim"``, ``"ctrl"``) to prompt text; other text is kept.

    Parameters
    ----------
    value
        A condition code or free text; None or blank gives ``""`` (no condition).

    Returns
    -------
    str
        E.g. ``"IFN-beta stimulated"`` for ``"stim"``.
    """
    text = " ".join(str(value or "").split())
    return CONDITION_TEXT.get(_condition_key(text), text)


def _condition_key(text: str) -> str:
    """'Interferon-β stimulated', 'IFN beta', 'ifnb' -> 'ifnbeta' / 'ifnb' (keys of CONDITION_TEXT)."""
    key = re.sub(r"[\s_\-]+", "", _IFN.sub("ifn", text.casefold().replace("β", "beta")))
    return key if key in CONDITION_TEXT else _TRAILING_TREATMENT.sub("", key)


def _norm(field: str, value: str, loose: bool = False) -> str:
    """Comparison key of a field value: case/space-insensitive, synonyms folded. `loose` also
    folds cell-type spellings that name one Cell Ontology term ("CD14+ Monocyte" = "CD14+Mono")."""
    key = normalize_label(value)
    if field == "species":
        return normalize_label(canonical_species(value))
    if field == "tissue":
        return normalize_label(canonical_tissue(value))
    if field == "condition":
        return normalize_label(condition_text(value))
    if field == "cell_type" and loose:
        return ontology_id(value) or re.sub(r"[\s_\-]+", "", key)
    return key


@dataclass(frozen=True)
class Condition:
    """One generation condition (empty strings mean "not specified")."""

    cell_type: str = ""
    species: str = ""
    tissue: str = ""
    sequencing_method: str = ""
    condition: str = ""

    def fields(self) -> dict[str, str]:
        """Prompt fields, for :func:`~instructcell_agent.core_model.instructions.render`."""
        return asdict(self)

    def key(self, loose: bool = False) -> tuple[str, ...]:
        """Normalized identity (what two spellings of one condition share)."""
        return tuple(_norm(f, getattr(self, f), loose) for f in FIELDS)

    def label(self) -> str:
        """Conditioning label used by the metrics: the cell type, plus the condition if any."""
        return f"{self.cell_type} | {self.condition}" if self.condition else self.cell_type


@dataclass
class ConditionRecord:
    """A condition seen in training, with where it came from and how many cells it had."""

    condition: Condition
    dataset: str
    n_cells: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.condition.fields(), "dataset": self.dataset, "n_cells": self.n_cells}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConditionRecord:
        return cls(Condition(**{f: str(d.get(f, "")) for f in FIELDS}), str(d.get("dataset", "")), int(d["n_cells"]))


@dataclass(frozen=True)
class Resolution:
    """A request checked against the table: the condition to generate and whether it was seen."""

    condition: Condition
    unseen: bool
    record: int | None  # index of the matching training record, if any
    message: str
    # When the request left the choice open: the same population learned in other contexts
    # (species / tissue), and how to ask for one of them. Empty otherwise.
    alternatives: str = ""


class ConditionTable:
    """The conditions a generator was trained on (index i = row i of its condition embeddings)."""

    def __init__(self, records: Sequence[ConditionRecord]) -> None:
        self.records = list(records)
        self._keys = {False: [r.condition.key() for r in self.records],
                      True: [r.condition.key(loose=True) for r in self.records]}

    def __len__(self) -> int:
        return len(self.records)

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.records]

    @classmethod
    def from_list(cls, rows: Iterable[Mapping[str, Any]]) -> ConditionTable:
        return cls([ConditionRecord.from_dict(r) for r in rows])

    def grouped(self) -> list[dict[str, Any]]:
        """The table as a reader wants it: one entry per cell type, species, tissue and training
        set, with the conditions it was learned under and its training cells, largest first."""
        groups: dict[tuple[str, ...], dict[str, Any]] = {}
        for r in self.records:
            c = r.condition
            entry = groups.setdefault((c.cell_type, c.species, c.tissue, r.dataset), {
                "cell_type": c.cell_type, "species": c.species, "tissue": c.tissue, "dataset": r.dataset,
                "conditions": [], "n_cells": 0})
            entry["n_cells"] += r.n_cells
            if c.condition and c.condition not in entry["conditions"]:
                entry["conditions"].append(c.condition)
        return sorted(groups.values(), key=lambda e: (e["species"], e["tissue"], -e["n_cells"]))

    def index(self, cond: Condition) -> int | None:
        """Row of exactly this condition (normalized comparison), or None."""
        key = cond.key()
        return self._keys[False].index(key) if key in self._keys[False] else None

    def known(self, field: str) -> list[str]:
        """Distinct values of one field in the table, first spelling kept."""
        seen: dict[str, str] = {}
        for r in self.records:
            value = getattr(r.condition, field)
            seen.setdefault(_norm(field, value), value)
        return [v for v in seen.values() if v]

    def _matches(self, requested: Mapping[str, str]) -> list[int]:
        """Rows agreeing with every non-empty requested field: exact spellings first, else
        cell-type synonyms (Cell Ontology)."""
        for loose in (False, True):
            if rows := self._rows(requested, loose):
                return rows
        return []

    def _rows(self, requested: Mapping[str, str], loose: bool) -> list[int]:
        want = {f: _norm(f, v, loose) for f, v in requested.items() if v and f in FIELDS}
        return [i for i, key in enumerate(self._keys[loose]) if all(key[FIELDS.index(f)] == w for f, w in want.items())]

    def resolve(self, cell_type: str, species: str | None = None, tissue: str | None = None,
                condition: str | None = None, sequencing_method: str | None = None) -> Resolution:
        """Match a request to the table; fields left out are filled from the best-matching record.

        Parameters
        ----------
        cell_type, species, tissue, condition, sequencing_method
            The request; None or ``""`` means "not specified". A condition given as a dataset
            code (``"stim"``) is mapped to its text first.

        Returns
        -------
        Resolution
            ``unseen`` is True when no training record agrees with every given field; the
            message then lists what the table knows.
        """
        requested = {"cell_type": cell_type or "", "species": species or "", "tissue": tissue or "",
                     "condition": condition_text(condition), "sequencing_method": sequencing_method or ""}
        checked = {f: v for f, v in requested.items() if f in CHECKED}
        rows = self._matches(checked)
        if not rows:
            return Resolution(Condition(**requested), True, None, self._unseen_message(checked))
        if not requested["condition"]:
            # Untreated cells first (no condition, or control), then the record with most training
            # cells: the generator renders well-sampled types better ('Dendritic' from kang2018's 42
            # control cells: median typicality -0.80, its real test cells -1.25; from puram2017's 16:
            # -2.46 against -0.89; benchmarks/results/generated_types.md).
            rows = sorted(rows, key=lambda i: (self.records[i].condition.condition not in ("", "control"),
                                               -self.records[i].n_cells))
        else:
            rows = sorted(rows, key=lambda i: -self.records[i].n_cells)
        exact = set(self._matches(requested)) if requested["sequencing_method"] else set(rows)
        best = next((i for i in rows if i in exact), rows[0])  # keeps the preference order above
        known = self.records[best].condition
        # The table's spelling wins for fields the user gave (the model was trained on it); fields
        # left out are taken from the record, and the caller records them in obs.
        filled = Condition(**{f: (getattr(known, f) if f in CHECKED or not requested[f] else requested[f])
                              for f in FIELDS})
        filled_from = [f for f in FIELDS if not requested[f] and getattr(filled, f)]
        message = f"filled {', '.join(filled_from)} from training data ({self.records[best].dataset})" if filled_from else ""
        return Resolution(filled, False, best, message, self._alternatives(checked, best))

    def _alternatives(self, requested: Mapping[str, str], chosen: int) -> str:
        """The same population (Cell Ontology term) learned in other species / tissues than the
        chosen record's, among the rows agreeing with what the request gave; "" when there are
        none. A request naming 'B cell' alone is otherwise answered with one context silently
        (mouse spleen, or with species='human' the 16 head-and-neck tumour B cells, not the
        blood B cells three sets hold), the choice visible only in obs."""
        where = _context(self.records[chosen].condition)
        others = [i for i in self._rows(requested, loose=True) if _context(self.records[i].condition) != where]
        if not others:
            return ""
        record = self.records[chosen]
        return (f"generated {where} {record.condition.cell_type!r} ({record.dataset}, {record.n_cells:,} training "
                f"cells); {requested['cell_type']!r} was also learned as {self._listing(others)}. "
                f"Pass species and tissue to choose.")

    def _listing(self, rows: Iterable[int], limit: int = 8) -> str:
        """"human / peripheral blood: 'CD19+ B' (zheng2017_pbmc_sorted, 635 cells), 'B'
        (kang2018_pbmc_ifnb, 178 cells: control, IFN-beta stimulated), ...": one entry per spelling
        and dataset, its conditions pooled and named; contexts in first-seen order."""
        groups: dict[str, dict[tuple[str, str], tuple[int, list[str]]]] = {}
        for i in rows:
            r = self.records[i]
            entry, key = groups.setdefault(_context(r.condition), {}), (r.condition.cell_type, r.dataset)
            n, conditions = entry.get(key, (0, []))
            if r.condition.condition:
                conditions = [*conditions, r.condition.condition]
            entry[key] = (n + r.n_cells, conditions)
        parts = []
        for where, entries in groups.items():
            items = [f"{t!r} ({d}, {n:,} cells{': ' + ', '.join(c) if c else ''})"
                     for (t, d), (n, c) in sorted(entries.items(), key=lambda e: -e[1][0])]
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{where}: {', '.join(items[:limit])}{more}")
        return "; ".join(parts)

    def _unseen_message(self, requested: Mapping[str, str]) -> str:
        parts = []
        for f, v in requested.items():
            if v and not self._matches({f: v}):
                parts.append(f"{f} {v!r} was not seen in training; known: {', '.join(sorted(self.known(f)))}")
        if not parts:  # each value seen, but never together
            given = {f: v for f, v in requested.items() if v}
            parts.append(f"the combination {given} was not seen in training")
            cell_type = given.get("cell_type", "")
            if same := self._matches({"cell_type": cell_type}):
                parts.append(f"{cell_type!r} was learned as {self._listing(same)}")
            others = {f: v for f, v in given.items() if f != "cell_type"}
            asked = ", ".join(f"{f} {v!r}" for f, v in others.items())
            for relation, rows in _related(self, cell_type, self._rows(others, loose=False)).items():
                parts.append(f"{relation} types learned with {asked}: {self._listing(rows)}")
        return "; ".join(parts) + ". Pass allow_unseen=True (CLI: --allow-unseen) to generate anyway."


def _context(cond: Condition) -> str:
    return f"{cond.species or '?'} / {cond.tissue or '?'}"


def _related(table: ConditionTable, cell_type: str, rows: Sequence[int]) -> dict[str, list[int]]:
    """Rows whose cell type is a finer kind of `cell_type` ('CD14+ Mono' of 'monocyte') or a broader
    one, by the Cell Ontology terms the label table records: what to ask for instead where the
    requested type was not learned as such."""
    term = ontology_id(cell_type)
    out: dict[str, list[int]] = {}
    if term is None:
        return out
    for i in rows:
        other = ontology_id(table.records[i].condition.cell_type)
        if other is None or other == term:
            continue
        if term in ontology_ancestors(other):
            out.setdefault("finer", []).append(i)
        elif other in ontology_ancestors(term):
            out.setdefault("broader", []).append(i)
    return out


def condition_incidence(table: ConditionTable) -> list[list[float]]:
    """0/1 matrix (conditions x field values): which normalized cell type, species, tissue,
    sequencing method and condition text each training condition has. An empty value ("no
    condition given") is a value too: it is what separates unconditioned sets from control cells.
    Columns follow first appearance in the table, so the matrix is a function of the table alone."""
    columns: dict[tuple[str, str], int] = {}
    keys = [r.condition.key() for r in table.records]
    for key in keys:
        for f, v in zip(FIELDS, key):
            columns.setdefault((f, v), len(columns))
    rows = []
    for key in keys:
        row = [0.0] * len(columns)
        for f, v in zip(FIELDS, key):
            row[columns[(f, v)]] = 1.0
        rows.append(row)
    return rows


def compose_instruction(template: str, cond: Condition) -> str:
    """Render a generation phrasing and make sure the key conditions reach the prompt.

    A phrasing without ``{condition}`` (or ``{cell_type}``) would silently drop what the user
    asked for, so a short clause is appended instead; training uses the same rule, so the model
    has seen such prompts. Other empty fields render as empty text.

    Parameters
    ----------
    template
        A phrasing with placeholders such as ``{cell_type}``.
    cond
        The condition to describe.

    Returns
    -------
    str
        The instruction text.
    """
    text = render(template, cond.fields())
    names = placeholders_in(template)
    if cond.cell_type and "cell_type" not in names:
        text = f"{text} Cell type: {cond.cell_type}."
    if cond.condition and "condition" not in names:
        text = f"{text} Condition: {cond.condition}."
    return text


def phrasings_for(cond: Condition, bank: Sequence[str]) -> list[str]:
    """Phrasings that fit a condition: without a condition, those naming ``{condition}`` read
    badly ("in the  condition"), so they are left out when another phrasing is available."""
    if cond.condition:
        return list(bank)
    plain = [t for t in bank if "condition" not in placeholders_in(t)]
    return plain or list(bank)
