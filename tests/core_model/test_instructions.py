"""Tests of the instruction bank (core_model/instructions.py and core_model/instructions/*.json)."""

from __future__ import annotations

import difflib
import json
import os
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from instructcell_agent.core_model import instructions as ins
from instructcell_agent.core_model.errors import InstructionError

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "core_model" / "instructions"
STYLES = {"terse", "verbose", "question", "command", "novice", "expert", "polite", "typo"}
MIN_COUNTS = {"annotation": 220, "drug_response": 120, "generation": 120}
SHARED_DIRS = {
    "annotation": "cell_type_annotation",
    "drug_response": "drug_sensitivity_prediction",
    "generation": "conditional_pseudo_cell_generation",
}
SHARED_COUNTS = {"annotation": 279, "drug_response": 240, "generation": 208}
FIELDS = {
    "species": "human", "tissue": "lung", "sequencing_method": "10x Chromium", "drug": "cisplatin",
    "cell_type": "CD14 monocyte", "condition": "IFN-beta stimulated", "choices": "B cell, T cell or NK cell",
}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _raw(task: str) -> dict:
    return json.loads((DATA_DIR / f"{task}.json").read_text(encoding="utf-8"))


def _all(task: str) -> list[str]:
    bank = ins.load_bank(task)
    return list(bank.train) + list(bank.valid)


def _templates_dir() -> Path:
    shared = Path(os.environ.get("INSTRUCTCELL_SHARED", REPO_ROOT.parent / "shared"))
    folder = shared / "benchmarks" / "instructcell" / "test_templates"
    if not folder.is_dir():
        pytest.skip(f"shared test templates not found at {folder}")
    return folder


# ----------------------------------------------------------------------------- packaged data


def test_data_folder_is_not_a_package() -> None:
    assert not (DATA_DIR / "__init__.py").exists()
    assert sorted(p.name for p in DATA_DIR.glob("*.json")) == sorted(f"{t}.json" for t in ins.TASKS)


@pytest.mark.parametrize("task", ins.TASKS)
def test_file_structure_and_styles(task: str) -> None:
    data = _raw(task)
    assert set(data) == {"task", "train", "valid"} and data["task"] == task
    for split in ("train", "valid"):
        for entry in data[split]:
            assert set(entry) == {"instruction", "style"}, entry
            assert entry["style"] in STYLES, entry
        styles = {entry["style"] for entry in data[split]}
        assert styles == STYLES, f"{task}/{split} lacks styles {STYLES - styles}"
    bank = ins.load_bank(task)
    assert bank.task == task
    assert bank.train == tuple(e["instruction"] for e in data["train"])
    assert bank.valid == tuple(e["instruction"] for e in data["valid"])


@pytest.mark.parametrize("task", ins.TASKS)
def test_counts_and_split_ratio(task: str) -> None:
    bank = ins.load_bank(task)
    total = len(bank.train) + len(bank.valid)
    assert total >= MIN_COUNTS[task]
    assert 0.15 <= len(bank.valid) / total <= 0.25
    assert bank.split("train") == bank.train and bank.split("valid") == bank.valid
    styles = Counter(e["style"] for s in ("train", "valid") for e in _raw(task)[s])
    assert all(n >= 4 for n in styles.values()), styles
    assert 0.03 <= styles["typo"] / total <= 0.08, styles


def test_split_rejects_unknown_names() -> None:
    with pytest.raises(ValueError):
        ins.load_bank("annotation").split("test")
    with pytest.raises(ValueError):
        ins.load_bank("translation")


@pytest.mark.parametrize("task", ins.TASKS)
def test_no_duplicates_and_disjoint_splits(task: str) -> None:
    bank = ins.load_bank(task)
    train = [_norm(t) for t in bank.train]
    valid = [_norm(t) for t in bank.valid]
    assert len(set(train)) == len(train)
    assert len(set(valid)) == len(valid)
    assert not set(train) & set(valid)


def test_no_duplicates_across_tasks() -> None:
    seen: list[str] = [_norm(t) for task in ins.TASKS for t in _all(task)]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("task", ins.TASKS)
def test_placeholder_rules(task: str) -> None:
    templates = _all(task)
    for t in templates:
        names = ins.placeholders_in(t)
        assert names <= ins.PLACEHOLDERS, t
        leftover = re.sub(r"\{[a-z_]+\}", "", t)
        assert "{" not in leftover and "}" not in leftover, t
        if task in ("annotation", "drug_response"):
            assert t.count("{input}") == 1, t
            assert not names & {"cell_type", "condition"}, t
        else:
            assert not names & {"input", "choices", "drug"}, t
            assert "cell_type" in names, t
        if task == "drug_response":
            assert "drug" in names, t
        if task == "annotation":
            assert "drug" not in names, t
    with_choices = sum(ins.has_choices(t) for t in templates) / len(templates)
    if task == "generation":
        assert with_choices == 0
        with_condition = sum("{condition}" in t for t in templates) / len(templates)
        assert 0.35 <= with_condition <= 0.65
    else:
        assert 0.40 <= with_choices < 1.0
    for context in ("species", "tissue", "sequencing_method"):
        share = sum(f"{{{context}}}" in t for t in templates) / len(templates)
        assert 0.0 < share < 0.6, (context, share)


@pytest.mark.parametrize("task", ["annotation", "drug_response"])
def test_options_present_and_absent_in_both_splits(task: str) -> None:
    bank = ins.load_bank(task)
    for split in (bank.train, bank.valid):
        flags = {ins.has_choices(t) for t in split}
        assert flags == {True, False}


@pytest.mark.parametrize("task", ins.TASKS)
def test_not_copied_from_held_out_templates(task: str) -> None:
    path = _templates_dir() / SHARED_DIRS[task] / "templates.json"
    theirs = [_norm(t) for t in ins.load_instruction_file(path)]
    ours = [_norm(t) for other in ins.TASKS for t in _all(other)]
    for mine in ours:
        assert mine not in theirs, mine
        matcher = difflib.SequenceMatcher(None, "", mine)
        for other in theirs:
            matcher.set_seq1(other)
            if matcher.real_quick_ratio() >= 0.85 and matcher.quick_ratio() >= 0.85:
                assert matcher.ratio() < 0.85, f"near copy of a held-out template: {mine!r}"


@pytest.mark.parametrize("task", ins.TASKS)
def test_every_bank_phrasing_renders_cleanly(task: str) -> None:
    for t in _all(task):
        out = ins.render(t, FIELDS)
        assert "{" not in out and "}" not in out, out
        assert "  " not in out, out
        assert not re.search(r" [?.!,;:)]", out), out
        assert not re.search(r"[:,;(][.?!,;)]|\(\)", out), out
        assert out == out.strip() and out[0].isalnum(), out


# ----------------------------------------------------------------------------- format_choices


LABELS = ["B cell", "naive B cell", "T cell", "CD4 T cell", "NK cell", "monocyte", "dendritic cell"]


def _parse_choices(text: str, style: str) -> list[str]:
    if style == "comma":
        return text.split(", ")
    if style == "comma_or":
        head, last = text.rsplit(" or ", 1)
        return head.split(", ") + [last]
    if style == "semicolon":
        return text.split("; ")
    if style == "slash":
        return text.split(" / ")
    if style == "bracket":
        assert text.startswith("[") and text.endswith("]")
        return text[1:-1].split(", ")
    if style == "quoted":
        parts = text.split(", ")
        assert all(p.startswith("'") and p.endswith("'") for p in parts)
        return [p[1:-1] for p in parts]
    if style == "newline_bullets":
        assert text.startswith("\n- ")
        return text[3:].split("\n- ")
    assert style == "numbered" and text.startswith("\n1. ")
    lines = text[1:].split("\n")
    assert [line.split(". ", 1)[0] for line in lines] == [str(i) for i in range(1, len(lines) + 1)]
    return [line.split(". ", 1)[1] for line in lines]


@pytest.mark.parametrize("style", ins.CHOICE_STYLES)
def test_format_choices_each_label_once(style: str) -> None:
    assert len(ins.CHOICE_STYLES) == 8
    for seed in range(5):
        text = ins.format_choices(LABELS, random.Random(seed), style)
        parsed = _parse_choices(text, style)
        assert sorted(parsed) == sorted(LABELS), text
    single = ins.format_choices(["only"], random.Random(0), style)
    assert single.count("only") == 1 and " or " not in single, single


def test_format_choices_orders_vary_with_seed_and_call() -> None:
    orders = {ins.format_choices(LABELS, random.Random(seed), "comma") for seed in range(10)}
    assert len(orders) > 1
    rng = random.Random(3)
    assert len({ins.format_choices(LABELS, rng, "comma") for _ in range(10)}) > 1
    assert ins.format_choices(LABELS, random.Random(7)) == ins.format_choices(LABELS, random.Random(7))
    styles = {ins.format_choices(LABELS, random.Random(seed)).startswith("\n") for seed in range(40)}
    assert styles == {True, False}  # style drawn with rng when not given
    assert ins.format_choices(["a", "b"], random.Random(0), "comma_or") in {"a or b", "b or a"}


def test_format_choices_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        ins.format_choices([], random.Random(0))
    with pytest.raises(ValueError):
        ins.format_choices(["a"], random.Random(0), "stars")


# ----------------------------------------------------------------------------- render


def test_render_removes_input_cleanly() -> None:
    assert ins.render("Which cell type is this cell {input}?", {}) == "Which cell type is this cell?"
    assert ins.render("Here is a cell profile: {input}", {}) == "Here is a cell profile:"
    assert ins.render("The cell {input} , from {tissue} .", {"tissue": "lung"}) == "The cell, from lung."
    out = ins.render("Is this {species} cell {input} sensitive to {drug} ?", {"species": "mouse", "drug": "x"})
    assert out == "Is this mouse cell sensitive to x?"
    assert ins.render("Cell {input}?", {}, cell_marker="<cell>") == "Cell <cell>?"


def test_render_keeps_choice_newlines_and_ignores_unused_fields() -> None:
    choices = ins.format_choices(["a", "b"], random.Random(0), "newline_bullets")
    out = ins.render("Label the cell {input}. Options: {choices}", {"choices": choices, "drug": "unused"})
    assert out == "Label the cell. Options:" + choices
    assert out.count("\n- ") == 2
    template = "Pick a label for the cell {input}.\nOptions: {choices}"
    assert ins.render(template, {"choices": "a, b"}) == "Pick a label for the cell.\nOptions: a, b"


def test_render_missing_field_raises_naming_it() -> None:
    with pytest.raises(InstructionError, match="tissue"):
        ins.render("Which cell from {tissue} is this {input}?", {"species": "human"})
    with pytest.raises(InstructionError, match="colour"):
        ins.render("A {colour} cell {input}", {})


def test_placeholders_in_and_has_choices() -> None:
    assert ins.placeholders_in("A {species} cell {input}: {choices}") == {"species", "input", "choices"}
    assert ins.has_choices("Pick from {choices}.") and not ins.has_choices("Which type is the cell {input}?")
    assert ins.PLACEHOLDERS == {
        "input", "species", "tissue", "sequencing_method", "choices", "drug", "cell_type", "condition"}
    assert ins.TASKS == ("annotation", "drug_response", "generation")


# ----------------------------------------------------------------------------- load_instruction_file


def test_load_file_json_objects(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"instruction": "What is cell {input}?", "response": "{cell_type}"},
                                {"instruction": "Options {choices} for {input}", "response": "x"}]))
    assert ins.load_instruction_file(path) == ["What is cell {input}?", "Options {choices} for {input}"]
    assert ins.load_instruction_file(str(path)) == ins.load_instruction_file(path)


def test_load_file_json_strings(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(["Annotate {input}.", "Generate one {cell_type} ({condition})."]))
    assert ins.load_instruction_file(path) == ["Annotate {input}.", "Generate one {cell_type} ({condition})."]


def test_load_file_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [json.dumps({"instruction": "Cell type of {input}?"}), "", json.dumps({"instruction": "Drug {drug}: {input}"})]
    path.write_text("\n".join(lines) + "\n")
    assert ins.load_instruction_file(path) == ["Cell type of {input}?", "Drug {drug}: {input}"]
    single = tmp_path / "one.jsonl"
    single.write_text(json.dumps({"instruction": "Only {input}"}) + "\n")
    assert ins.load_instruction_file(single) == ["Only {input}"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[{\"instruction\": \"a {input}\"", "JSON"),
        ("{\"instruction\": \"a\"}\nnot json\n", "line 2"),
        ("[]", "empty"),
        ("", "empty"),
        ("[{\"response\": \"x\"}]", "instruction"),
        ("[{\"instruction\": 3}]", "instruction"),
        ("[\"Which {cell} is {input}?\"]", r"unknown placeholder.*\{cell\}"),
        ("[\"Which cell is {input}? {Choices}\"]", r"unknown placeholder.*\{Choices\}"),
        ("[\"Unbalanced { brace {input}\"]", "brace"),
        ("42", "list"),
    ],
)
def test_load_file_refuses_bad_input(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InstructionError, match=message):
        ins.load_instruction_file(path)


def test_load_file_missing(tmp_path: Path) -> None:
    with pytest.raises(InstructionError, match="not found"):
        ins.load_instruction_file(tmp_path / "absent.json")
    with pytest.raises(InstructionError, match="not found"):
        ins.load_instruction_file(tmp_path)


@pytest.mark.parametrize("task", ins.TASKS)
def test_load_file_on_shared_templates(task: str) -> None:
    path = _templates_dir() / SHARED_DIRS[task] / "templates.json"
    templates = ins.load_instruction_file(path)
    assert len(templates) == SHARED_COUNTS[task]
    assert all(ins.placeholders_in(t) <= ins.PLACEHOLDERS for t in templates)
