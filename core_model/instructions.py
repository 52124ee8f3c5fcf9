"""Instruction bank: packaged phrasings per task, file loading, choice formatting and rendering.

``{input}`` marks where the cell sits in a sentence; :func:`render` replaces it with a (usually empty)
marker, as the model appends the cell's query embeddings after the instruction text."""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import InstructionError

PLACEHOLDERS: frozenset[str] = frozenset(
    {"input", "species", "tissue", "sequencing_method", "choices", "drug", "cell_type", "condition"})
TASKS: tuple[str, ...] = ("annotation", "drug_response", "generation")
CHOICE_STYLES: tuple[str, ...] = (
    "comma", "comma_or", "semicolon", "slash", "bracket", "quoted", "newline_bullets", "numbered")
SPLITS: tuple[str, ...] = ("train", "valid")

_JOINERS: dict[str, Callable[[list[str]], str]] = {
    "comma": ", ".join, "semicolon": "; ".join, "slash": " / ".join,
    "comma_or": lambda items: ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else items[0],
    "bracket": lambda items: "[" + ", ".join(items) + "]", "quoted": lambda items: ", ".join(f"'{i}'" for i in items),
    "newline_bullets": lambda items: "".join(f"\n- {item}" for item in items),
    "numbered": lambda items: "".join(f"\n{i}. {item}" for i, item in enumerate(items, start=1)),
}
_BRACED = re.compile(r"\{([^{}]*)\}")
_TIDY_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"[ \t]*\n[ \t]*"), "\n"),  # spaces around a line break
    (re.compile(r"[ \t]{2,}"), " "),  # double spaces
    (re.compile(r"[ \t]+([,.;:?!)])"), r"\1"),  # " ," " ?" " ." ...
)
# Per-task rules for the packaged banks: (placeholders that must appear, placeholders that must not).
_RULES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "annotation": (frozenset({"input"}), frozenset({"drug", "cell_type", "condition"})),
    "drug_response": (frozenset({"input", "drug"}), frozenset({"cell_type", "condition"})),
    "generation": (frozenset({"cell_type"}), frozenset({"input", "choices", "drug"})),
}


@dataclass(frozen=True)
class InstructionBank:
    """The phrasings of one task, split into a training and a validation set."""

    task: str
    train: tuple[str, ...]
    valid: tuple[str, ...]

    def split(self, name: str) -> tuple[str, ...]:
        """Return the templates of the split ``name``.

        Parameters
        ----------
        name
            ``"train"`` or ``"valid"``.

        Raises
        ------
        ValueError
            If ``name`` is not a known split.
        """
        if name in SPLITS:
            return self.train if name == "train" else self.valid
        raise ValueError(f"Unknown split {name!r}; use one of {SPLITS}.")


def placeholders_in(template: str) -> set[str]:
    """Return every name written in curly braces in a template, known or not.

    Parameters
    ----------
    template
        An instruction template such as ``"Which cell type is this cell {input}?"``.

    Returns
    -------
    set of str
        The brace-enclosed names (here ``{"input"}``).
    """
    return set(_BRACED.findall(template))


def has_choices(template: str) -> bool:
    """Tell whether a template offers candidate labels through ``{choices}``.

    Parameters
    ----------
    template
        An instruction template.

    Returns
    -------
    bool
        True if ``{choices}`` occurs in the template.
    """
    return "choices" in placeholders_in(template)


def _check_braces(template: str, where: str) -> None:
    """Raise InstructionError on an unknown placeholder or an unbalanced brace."""
    if unknown := sorted(placeholders_in(template) - PLACEHOLDERS):
        raise InstructionError(f"{where}: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)} "
                               f"in {template!r}; allowed: {', '.join(sorted(PLACEHOLDERS))}.")
    if "{" in (stripped := _BRACED.sub("", template)) or "}" in stripped:
        raise InstructionError(f"{where}: unbalanced curly brace in {template!r}.")


def _check_bank_entry(task: str, template: str, where: str) -> None:
    """Apply the placeholder rules of ``task`` to one packaged template."""
    _check_braces(template, where)
    names, (required, forbidden) = placeholders_in(template), _RULES[task]
    if required - names or forbidden & names:
        raise InstructionError(f"{where}: {task} needs {sorted(required)}, bans {sorted(forbidden)}: {template!r}")
    if "input" in names and template.count("{input}") != 1:
        raise InstructionError(f"{where}: {{input}} must occur exactly once in {template!r}.")


@lru_cache(maxsize=None)
def load_bank(task: str) -> InstructionBank:
    """Load and validate the packaged instruction bank of a task.

    Parameters
    ----------
    task
        One of :data:`TASKS`.

    Returns
    -------
    InstructionBank
        The train and valid templates, in file order.

    Raises
    ------
    ValueError
        If ``task`` is unknown.
    InstructionError
        If the packaged file is malformed, breaks the placeholder rules or repeats a phrasing.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; use one of {TASKS}.")
    resource = resources.files(__package__).joinpath("instructions", f"{task}.json")
    try:
        data = json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InstructionError(f"Cannot read the packaged instruction bank {task}.json: {exc}") from exc
    if not isinstance(data, dict) or data.get("task") != task:
        raise InstructionError(f'{task}.json must be an object with "task": {task!r}.')
    splits: dict[str, tuple[str, ...]] = {}
    seen: set[str] = set()
    for split in SPLITS:
        entries = data.get(split)
        if not isinstance(entries, list) or not entries:
            raise InstructionError(f"{task}.json: {split!r} must be a non-empty list.")
        for i, entry in enumerate(entries):
            where = f"{task}.json {split}[{i}]"
            text = entry.get("instruction") if isinstance(entry, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise InstructionError(f'{where}: expected an object with a non-empty "instruction".')
            _check_bank_entry(task, text, where)
            if (key := " ".join(text.lower().split())) in seen:
                raise InstructionError(f"{where}: duplicate phrasing {text!r}.")
            seen.add(key)
        splits[split] = tuple(entry["instruction"] for entry in entries)
    return InstructionBank(task=task, train=splits["train"], valid=splits["valid"])


def _parse_records(text: str, path: Path) -> list[Any]:
    """Parse a whole-file JSON document, falling back to JSON lines."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as whole:
        records: list[Any] = []
        for lineno, line in ((n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InstructionError(f"{path}: bad JSON ({whole.msg}); not JSON lines either "
                                       f"(line {lineno}: {exc.msg}).") from exc
        return records
    if isinstance(data, (dict, list)):  # a dict: a JSON-lines file with a single object
        return data if isinstance(data, list) else [data]
    raise InstructionError(f"{path}: expected a JSON list of instructions, got {type(data).__name__}.")


def load_instruction_file(path: str | os.PathLike[str]) -> list[str]:
    """Read instruction templates from a user file.

    Formats: a JSON list of objects with an ``"instruction"`` field (other fields such as ``"response"``
    are ignored), a JSON list of strings, or JSON lines of such objects.

    Parameters
    ----------
    path
        The file to read.

    Returns
    -------
    list of str
        The templates in file order.

    Raises
    ------
    InstructionError
        If the file is missing or unreadable, is not JSON, holds no instruction, has an entry
        without ``"instruction"``, or uses a placeholder outside :data:`PLACEHOLDERS`.
    """
    file = Path(path)
    if not file.is_file():
        raise InstructionError(f"Instruction file not found: {file}.")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InstructionError(f"Cannot read instruction file {file}: {exc}") from exc
    records = _parse_records(text, file)
    if not records:
        raise InstructionError(f"{file}: no instructions found (empty list).")
    templates: list[str] = []
    for i, record in enumerate(records):
        where = f"{file} entry {i}"
        if isinstance(record, dict) and "instruction" not in record:
            raise InstructionError(f'{where}: object has no "instruction" field.')
        instruction = record["instruction"] if isinstance(record, dict) else record
        if not isinstance(instruction, str) or not instruction.strip():
            raise InstructionError(f'{where}: expected a non-empty string or "instruction", got {record!r}.')
        _check_braces(instruction, where)
        templates.append(instruction)
    return templates


def format_choices(labels: Sequence[str], rng: random.Random, style: str | None = None) -> str:
    """Shuffle candidate labels and join them in one of :data:`CHOICE_STYLES`.

    Parameters
    ----------
    labels
        Candidate labels; each appears exactly once in the result.
    rng
        Random source for the order (and for the style when ``style`` is None).
    style
        A name from :data:`CHOICE_STYLES`, or None to draw one with ``rng``.

    Returns
    -------
    str
        E.g. ``"a, b or c"``; the list styles start with a line break (``"\\n- a\\n- b"``).

    Raises
    ------
    ValueError
        If ``labels`` is empty or ``style`` is unknown.
    """
    if not labels:
        raise ValueError("format_choices needs at least one label.")
    style = rng.choice(CHOICE_STYLES) if style is None else style
    if style not in CHOICE_STYLES:
        raise ValueError(f"Unknown choice style {style!r}; use one of {CHOICE_STYLES}.")
    rng.shuffle(items := [str(label) for label in labels])
    return _JOINERS[style](items)


def render(template: str, fields: Mapping[str, str], *, cell_marker: str = "") -> str:
    """Fill a template's placeholders.

    Parameters
    ----------
    template
        An instruction template.
    fields
        Text for each placeholder other than ``input``; entries the template does not use are ignored.
    cell_marker
        Text that replaces ``{input}`` (empty by default: the cell follows the instruction).

    Returns
    -------
    str
        The instruction, with the spaces around a removed ``{input}`` tidied up.

    Raises
    ------
    InstructionError
        If the template uses an unknown placeholder, or one that ``fields`` lacks.
    """
    _check_braces(template, "render")
    names = placeholders_in(template) - {"input"}
    if missing := sorted(name for name in names if name not in fields):
        raise InstructionError(f"Missing field(s) {', '.join(missing)} for instruction template {template!r}.")
    skeleton = template.replace("{input}", cell_marker)  # tidied before filling: field values stay as given
    for pattern, replacement in _TIDY_RULES:
        skeleton = pattern.sub(replacement, skeleton)
    filled = _BRACED.sub(lambda m: str(fields[m.group(1)]) if m.group(1) in names else m.group(0), skeleton.strip())
    return re.sub(r"[ \t]+\n", "\n", filled)  # "Options: {choices}" followed by a list that starts a new line
