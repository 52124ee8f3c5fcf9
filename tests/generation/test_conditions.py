"""Conditions: text mapping, the training table's checks, and instruction composition."""

from __future__ import annotations

from instructcell_agent.core_model.errors import InstructCellError
from instructcell_agent.core_model.generation.conditions import (
    Condition,
    ConditionRecord,
    ConditionTable,
    UnseenConditionError,
    compose_instruction,
    condition_incidence,
    condition_text,
    phrasings_for,
)


def _table() -> ConditionTable:
    rows = [
        Condition("CD14+Mono", "human", "peripheral blood", "10x Chromium", "control"),
        Condition("CD14+Mono", "human", "peripheral blood", "10x Chromium", "IFN-beta stimulated"),
        Condition("CD4T", "human", "peripheral blood", "10x Chromium", "control"),
        Condition("beta", "mouse", "pancreas", "10x Chromium", ""),
    ]
    return ConditionTable([ConditionRecord(c, "set", 10 + i) for i, c in enumerate(rows)])


def test_condition_codes_map_to_text():
    assert condition_text("stim") == "IFN-beta stimulated"
    assert condition_text(" CTRL ") == "control"
    assert condition_text("heat shock") == "heat shock"
    # the ways people write kang2018's two conditions reach the text the model was trained on
    for written in ("interferon beta", "Interferon-β stimulated", "IFN-b", "ifnb treated", "IFN beta"):
        assert condition_text(written) == "IFN-beta stimulated", written
    for written in ("Untreated", "unstimulated", "mock"):
        assert condition_text(written) == "control", written
    assert condition_text("IFN-gamma stimulated") == "IFN-gamma stimulated"  # another condition stays unseen
    assert condition_text("treated") == "treated"
    assert condition_text(None) == ""


def test_unseen_error_is_a_package_error():
    assert issubclass(UnseenConditionError, InstructCellError)


def test_resolve_seen_request_fills_missing_fields_from_the_table():
    res = _table().resolve("cd4t", condition="ctrl")
    assert not res.unseen
    assert res.condition.cell_type == "CD4T"  # the table's spelling
    assert res.condition.tissue == "peripheral blood" and res.condition.species == "human"
    assert "filled" in res.message


def test_resolve_prefers_control_when_no_condition_is_given():
    assert _table().resolve("CD14+Mono").condition.condition == "control"


def test_resolve_matches_cell_ontology_synonyms():
    res = _table().resolve("CD14+ Monocyte", condition="stim")
    assert not res.unseen and res.condition.cell_type == "CD14+Mono"


def test_resolve_reads_species_and_tissue_as_cellxgene_writes_them():
    res = _table().resolve("CD14+Mono", species="Homo sapiens", tissue="PBMC", condition="interferon beta")
    assert not res.unseen and res.condition.species == "human" and res.condition.tissue == "peripheral blood"
    assert res.condition.condition == "IFN-beta stimulated"


def test_unseen_cell_type_lists_known_values():
    res = _table().resolve("hepatocyte")
    assert res.unseen and "hepatocyte" in res.message and "CD4T" in res.message and "allow_unseen" in res.message


def test_unseen_combination_is_reported():
    res = _table().resolve("CD4T", condition="IFN-beta stimulated")
    assert res.unseen
    # where the type was learned, with its conditions
    assert "combination" in res.message and "'CD4T' (set, 12 cells: control)" in res.message
    assert _table().resolve("beta", species="human").unseen


def _two_contexts() -> ConditionTable:
    rows = [(Condition("B cell", "mouse", "immune (spleen/marrow)", "10x", ""), "tabula", 381),
            (Condition("CD19+ B", "human", "peripheral blood", "10x", ""), "zheng", 635),
            (Condition("Monocyte", "mouse", "immune (spleen/marrow)", "10x", ""), "tabula", 55),
            (Condition("CD14+ Mono", "human", "peripheral blood", "10x", ""), "pbmc3k", 384),
            (Condition("FCGR3A+Mono", "human", "peripheral blood", "10x", "control"), "kang", 103),
            (Condition("FCGR3A+Mono", "human", "peripheral blood", "10x", "IFN-beta stimulated"), "kang", 234)]
    return ConditionTable([ConditionRecord(c, d, n) for c, d, n in rows])


def test_a_choice_left_open_names_the_other_contexts_of_the_population():
    res = _two_contexts().resolve("B cell")
    assert not res.unseen and res.condition.species == "mouse"  # the exact spelling is still what is generated
    assert res.alternatives.startswith("generated mouse / immune (spleen/marrow) 'B cell' (tabula, 381 training")
    assert "human / peripheral blood: 'CD19+ B' (zheng, 635 cells)" in res.alternatives
    assert "Pass species and tissue" in res.alternatives
    # a request that settles the context has nothing to add
    assert _two_contexts().resolve("B cell", species="mouse").alternatives == ""
    assert _two_contexts().resolve("CD19+ B", species="human", tissue="blood").alternatives == ""
    assert _two_contexts().resolve("FCGR3A+Mono").alternatives == ""  # learned in one context only


def test_a_type_unseen_in_a_context_points_to_finer_and_broader_ones_there():
    res = _two_contexts().resolve("monocyte", species="human")
    assert res.unseen
    assert "'monocyte' was learned as mouse / immune (spleen/marrow): 'Monocyte' (tabula, 55 cells)" in res.message
    finer = res.message.split("finer types learned with species 'human': ")[1]
    assert finer.startswith("human / peripheral blood: 'CD14+ Mono' (pbmc3k, 384 cells), 'FCGR3A+Mono' (kang, "
                            "337 cells: control, IFN-beta stimulated)")
    res = _two_contexts().resolve("CD14+ Mono", species="mouse")
    assert res.unseen and "broader types learned with species 'mouse': mouse / immune (spleen/marrow): 'Monocyte'" \
        in res.message
    assert "finer" not in res.message


def test_table_round_trips_through_json_rows():
    table = _table()
    again = ConditionTable.from_list(table.to_list())
    assert again.to_list() == table.to_list()
    assert again.index(Condition("cd4t", "Homo sapiens", "Peripheral Blood", "10x chromium", "ctrl")) == 2


def test_compose_appends_conditions_a_phrasing_leaves_out():
    cond = Condition("B", "human", "peripheral blood", "10x Chromium", "IFN-beta stimulated")
    assert compose_instruction("Generate one {cell_type}.", cond) == "Generate one B. Condition: IFN-beta stimulated."
    text = compose_instruction("Make a cell from {tissue} ({species}).", cond)
    assert text.endswith("Cell type: B. Condition: IFN-beta stimulated.") and "peripheral blood" in text
    plain = compose_instruction("Generate one {cell_type} in the {condition} condition.", cond)
    assert plain == "Generate one B in the IFN-beta stimulated condition."


def test_phrasings_without_condition_are_used_for_unconditioned_cells():
    bank = ["One {cell_type}.", "One {cell_type}, {condition}."]
    assert phrasings_for(Condition("B"), bank) == ["One {cell_type}."]
    assert phrasings_for(Condition("B", condition="control"), bank) == bank


def test_sequencing_method_picks_among_otherwise_equal_records():
    rows = [Condition("B", "human", "peripheral blood", "10x Chromium", ""),
            Condition("B", "human", "peripheral blood", "10x Chromium (v1)", "")]
    table = ConditionTable([ConditionRecord(rows[0], "a", 50), ConditionRecord(rows[1], "b", 10)])
    assert table.resolve("B").record == 0  # the larger set when nothing tells them apart
    assert table.resolve("B", sequencing_method="10x chromium (v1)").record == 1


def test_condition_incidence_shares_field_values_across_rows():
    rows = condition_incidence(_table())
    assert len(rows) == 4 and all(sum(r) == 5 for r in rows)  # one value per field
    width = len(rows[0])
    # CD14+Mono: control, CD14+Mono: stimulated, CD4T: control share the human/blood/10x columns
    shared = [j for j in range(width) if rows[0][j] and rows[1][j] and rows[2][j]]
    assert len(shared) == 3
    # the two control rows share the "control" column, which the stimulated row lacks
    assert any(rows[0][j] and rows[2][j] and not rows[1][j] for j in range(width))
    assert condition_incidence(_table()) == rows  # a function of the table alone
