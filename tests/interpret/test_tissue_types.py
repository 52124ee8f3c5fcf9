"""A tissue's known cell types as candidates (interpret/tissue_types.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import anndata as ad
import pytest
from synthetic import make_liver_like

import instructcell_agent as ica
from instructcell_agent.cli import main
from instructcell_agent.interpret.tissue_types import (COMMON_TYPES, UnknownTissueError, cell_type_organs,
                                                       tissue_organs)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("tissue, organs", [("liver", ("Liver",)), ("Lungs", ("Lungs",)), ("lung", ("Lungs",)),
                                            ("hepatic", ("Liver",)), ("colon", ("GI tract",)),
                                            ("peripheral blood", ("Blood", "Immune system")),
                                            ("immune (spleen/marrow)", ("Immune system",)),
                                            ("Adrenal glands", ("Adrenal glands",))])
def test_a_tissue_is_read_as_the_organs_it_stands_for(tissue, organs):
    assert tissue_organs(tissue) == organs


def test_a_tissue_that_names_no_organ_is_refused_with_the_organs_there_are():
    with pytest.raises(UnknownTissueError, match="head and neck tumour.*Liver, Lungs"):
        tissue_organs("head and neck tumour")


def test_the_candidates_are_the_organs_types_then_the_common_ones():
    types = ica.tissue_cell_types("liver")
    liver = [t for t, organ in cell_type_organs().items() if organ == "Liver"]
    assert types[:len(liver)] == sorted(liver) and {"Hepatocytes", "Kupffer cells"} <= set(liver)
    assert types[len(liver):] == list(COMMON_TYPES) and len(set(types)) == len(types)
    assert ica.tissue_cell_types("liver", common=False) == sorted(liver)
    # an organ whose own types include common ones lists each once
    blood = ica.tissue_cell_types("blood")
    assert len(set(blood)) == len(blood) and "T cells" in blood


def test_types_named_already_are_not_listed_again():
    # 'Hepatocyte' is 'Hepatocytes' spelt otherwise, 'T cell' the Cell Ontology term of 'T cells'
    types = ica.tissue_cell_types("liver", besides=["Hepatocyte", "T cell"])
    assert "Hepatocytes" not in types and "T cells" not in types and "Kupffer cells" in types


def test_the_organ_table_is_what_the_build_script_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("build_marker_table", REPO_ROOT / "scripts" / "build_marker_table.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    pangl = tmp_path / "p.tsv"
    pangl.write_text("species\tofficial gene symbol\tcell type\torgan\n"
                     "Hs\tALB\tHepatocytes\tLiver\nHs\tAPOA1\tHepatocytes\tLiver\nHs\tKRT19\tCholangiocytes\tLiver\n"
                     "Hs\tPOU5F1\tPluripotent stem cells\tNA\n")
    organs = build.panglaodb_organs(pangl)
    assert organs == {"Cholangiocytes": "Liver", "Hepatocytes": "Liver"}
    assert build.write_organs(tmp_path / "o.json", organs) > 0
    assert json.loads((tmp_path / "o.json").read_text()) == {"panglaodb": organs}


def test_annotate_takes_a_tissues_types_as_candidates(tiny_checkpoint, tmp_path, capsys):
    path, out = tmp_path / "liver.h5ad", tmp_path / "annotated.h5ad"
    make_liver_like(24).write_h5ad(path)
    assert main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(path), "--tissue-types", "liver",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "candidates of 'liver' (12 known types): Cholangiocytes, Hepatic stellate cells" in printed
    answered = ad.read_h5ad(out)
    assert list(answered.uns["instructcell"]["candidates"]) == ica.tissue_cell_types("liver")
    assert answered.uns["instructcell"]["candidate_route"] == "known markers"  # the tiny model learned none
    assert main(["annotate", "--checkpoint", str(tiny_checkpoint), "--data", str(path), "--tissue-types",
                 "head and neck tumour", "--out", str(tmp_path / "refused.h5ad")]) == 2
    assert "no organ of the marker database" in capsys.readouterr().err
    assert not (tmp_path / "refused.h5ad").exists()
