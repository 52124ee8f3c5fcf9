"""Gene id detection and mapping to human symbols, and the shipped tables behind them."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from types import ModuleType

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from instructcell_agent.core_model import genes
from instructcell_agent.core_model.genes import (
    GeneMappingInfo,
    detect_gene_id_type,
    detect_species,
    to_human_symbols,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
RESOURCES = REPO_ROOT / "core_model" / "resources"
TABLES = ("ensembl_to_symbol.tsv.gz", "mouse_to_human.tsv.gz", "human_aliases.tsv.gz", "earlier_names.tsv.gz")


def _load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_gene_tables", REPO_ROOT / "scripts" / "build_gene_tables.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_detect_gene_id_type() -> None:
    assert detect_gene_id_type(["ENSG00000141510.17", "ENSG00000121410", "CD4"]) == "ensembl"
    assert detect_gene_id_type(["ENSMUSG00000030605", "ENSMUSG00000029580.14"]) == "ensembl"
    assert detect_gene_id_type(["CD4", "TP53", "ENSG00000121410"]) == "symbol"
    assert detect_gene_id_type([]) == "symbol"


def test_detect_species() -> None:
    assert detect_species(["CD4", "TP53", "C1orf127", "MT-ND1", "RP11-206L10.2"]) == "human"
    assert detect_species(["Cd4", "Trp53", "Actb", "mt-Nd1", "0610005C13Rik", "H2-Ab1"]) == "mouse"
    assert detect_species(["ENSMUSG00000030605", "ENSMUSG00000029580"]) == "mouse"
    assert detect_species(["ENSG00000141510", "ENSG00000121410.3"]) == "human"
    # A mouse set whose symbols were upper-cased reads as human, as matching needs.
    assert detect_species(["CD4", "TRP53", "ACTB"]) == "human"


def test_ensembl_ids_with_versions_map_to_symbols() -> None:
    names = ["ENSG00000141510.17", "ENSG00000121410", "ENSG00000010610.10", "ENSG99999999999"]
    symbols, info = to_human_symbols(names)
    assert symbols == ["TP53", "A1BG", "CD4", None]
    assert isinstance(info, GeneMappingInfo)
    assert (info.id_type, info.species) == ("ensembl", "human")
    assert (info.n_mapped, info.n_unmapped) == (3, 1)
    assert info.unmapped_examples == ("ENSG99999999999",)


def test_mouse_symbols_map_to_human_orthologs() -> None:
    names = ["Cd19", "Ptprc", "Actb", "Cd3e", "NotAGene1", "Cd79a"]
    symbols, info = to_human_symbols(names)
    assert symbols == ["CD19", "PTPRC", "ACTB", "CD3E", None, "CD79A"]
    assert info.species == "mouse"
    assert (info.n_mapped, info.n_unmapped, info.n_renamed) == (5, 1, 5)
    assert info.unmapped_examples == ("NotAGene1",)


def test_species_can_be_forced() -> None:
    # Upper-cased mouse symbols are read as human unless the caller says otherwise.
    symbols, info = to_human_symbols(["CD19", "PTPRC"], species="mouse")
    assert info.species == "mouse"
    assert symbols == ["CD19", "PTPRC"]
    with pytest.raises(ValueError):
        to_human_symbols(["CD19"], species="zebrafish")


def test_outdated_human_aliases_are_renamed() -> None:
    symbols, info = to_human_symbols(["C10orf54", "FAM46C", "SEPT7", "CD4", "MADEUP7"])
    assert symbols == ["VSIR", "TENT5C", "SEPTIN7", "CD4", "MADEUP7"]
    assert info.n_renamed == 3
    assert info.n_unmapped == 0


def test_alias_kept_when_its_approved_symbol_is_also_present() -> None:
    symbols, _ = to_human_symbols(["SEPT7", "SEPTIN7", "FAM46C"])
    assert symbols == ["SEPT7", "SEPTIN7", "TENT5C"]


def test_empty_and_missing_names_are_unmapped() -> None:
    symbols, info = to_human_symbols(["CD4", "", None, float("nan")])
    assert symbols == ["CD4", None, None, None]
    assert info.n_unmapped == 3


@pytest.mark.parametrize("name", TABLES)
def test_shipped_tables_small_sorted_with_header(name: str) -> None:
    path = RESOURCES / name
    assert path.stat().st_size < 1.5 * 1024 * 1024
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert len(lines[0].split("\t")) == 2 and not lines[0].startswith("ENSG")
    keys = [line.split("\t")[0] for line in lines[1:]]
    assert len(keys) > 1000
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_tables_are_cached() -> None:
    assert genes.ensembl_to_symbol_table() is genes.ensembl_to_symbol_table()


def test_build_mouse_to_human_prefers_same_name() -> None:
    build = _load_build_script()
    table = build.build_mouse_to_human(
        pd.DataFrame([["HLA-X", "H2-Ab1"], ["ABC1", "Abc1"], ["ABC2", "Abc1"], ["XYZ", "Foo"],
                      ["XYY", "Foo"], ["NOMOUSE", ""]])
    )
    assert table == {"H2-Ab1": "HLA-X", "Abc1": "ABC1", "Foo": "XYZ"}
    table = build.build_mouse_to_human(pd.DataFrame([["ABC2", "Abc1"], ["ABC1", "Abc1"]]))
    assert table["Abc1"] == "ABC1"


def test_build_aliases_drops_ambiguous_and_approved() -> None:
    build = _load_build_script()
    hgnc = pd.DataFrame(
        {
            "Status": ["Approved"] * 4,
            "Approved symbol": ["AAA", "BBB", "CCC", "DDD"],
            "Alias symbol": ["OLD1", "OLD1", "AAA", "OLD2"],
            "Previous symbol": ["", "", "", "CLONE1"],
        }
    )
    table = build.build_human_aliases(hgnc, other_names=["CLONE1"])
    assert table == {"OLD2": "DDD"}


def test_build_write_table_is_deterministic(tmp_path: Path) -> None:
    build = _load_build_script()
    first, second = tmp_path / "a.tsv.gz", tmp_path / "b.tsv.gz"
    build.write_table(first, ("k", "v"), {"b": "2", "a": "1"})
    build.write_table(second, ("k", "v"), {"a": "1", "b": "2"})
    assert first.read_bytes() == second.read_bytes()
    with gzip.open(first, "rt") as fh:
        assert fh.read() == "k\tv\na\t1\nb\t2\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_earlier_name_by_id_or_current_symbol() -> None:
    # SARS1's id (ENSG00000031698) was named SARS in zheng2017's annotation; AL627309.1's id is retired
    assert genes.earlier_name("ENSG00000031698.7", "SARS1") == "SARS"
    assert genes.earlier_name("SARS1", "SARS1") == "SARS"
    assert genes.earlier_name("ENSG00000237683", None) == "AL627309.1"
    assert genes.earlier_name("CD4", "CD4") is None and genes.earlier_name("NOPE", None) is None


def test_build_earlier_names_keeps_one_gene_per_pair(tmp_path: Path) -> None:
    build = _load_build_script()
    ids = ["ENSG00000000001", "ENSG00000000002", "ENSG00000000003", "ENSG00000000004", "ENSG00000000005"]
    adata = ad.AnnData(np.zeros((2, 5), np.float32), var=pd.DataFrame(
        {"ensembl": [f"{i}.3" for i in ids]}, index=["OLD1", "SAME", "RETIRED", "DUP", "DUP-2"]))
    adata.write_h5ad(tmp_path / "a.h5ad")
    pairs = build.dataset_gene_names([tmp_path / "a.h5ad"])
    assert pairs == list(zip(ids, ["OLD1", "SAME", "RETIRED", "DUP", "DUP-2"]))
    current = {ids[0]: "NEW1", ids[1]: "SAME", ids[3]: "X", ids[4]: "Y"}
    # an id named two ways, or a name given to two ids, names no one gene
    pairs += [(ids[3], "DUP-B"), ("ENSG00000000007", "RETIRED")]
    assert build.build_earlier_names(pairs, current) == {ids[0]: "OLD1", ids[4]: "DUP-2"}


def test_ensembl_ids_inside_a_symbol_list_are_mapped() -> None:
    symbols, info = to_human_symbols(["CD4", "TP53", "ENSG00000121410.2", "ENSG99999999999"])
    assert info.id_type == "symbol"
    assert symbols == ["CD4", "TP53", "A1BG", "ENSG99999999999"]


def test_lower_cased_human_symbols_get_their_hgnc_casing_back() -> None:
    # all lower case carries no species sign; a capitalised mouse set still reads as mouse
    assert genes.detect_species(["cd19", "actb", "mt-nd1"]) == "human"
    assert genes.detect_species(["Cd19", "Actb", "mt-nd1", "a"]) == "mouse"
    symbols, info = genes.to_human_symbols(["cd19", "c1orf127", "hla-dra", "mt-nd1"])
    assert symbols == ["CD19", "C1orf127", "HLA-DRA", "MT-ND1"] and info.species == "human"
    assert any("4 lower-case symbols" in note for note in info.notes)
