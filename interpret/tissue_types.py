"""The known cell types of a tissue, as candidates for cells of a tissue the model never learned.

The model learned blood, pancreas and head-and-neck types. For liver, lung, kidney or brain cells
the candidates have to be named, and their known markers then answer them (`annotate_by_markers`,
and `annotate`'s marker gate beside the types the model learned). `tissue_cell_types("liver")`
names them: the cell types PanglaoDB files under the tissue's organ (``marker_organs.json``, built
with the marker table by ``scripts/build_marker_table.py``), and the types most tissues hold
(`COMMON_TYPES`: blood vessels, stroma, resident and circulating immune cells). A list to start
from, not a verdict: types the file lacks still take a few cells (``benchmarks/results/
marker_annotation.md``), and a user who knows the tissue should cut or extend it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

from instructcell_agent.core_model.errors import InstructCellError
from instructcell_agent.core_model.labels import ontology_id

from .markers import fold_cell_type

ORGANS_FILE = "marker_organs.json"
# Found in most tissues (PanglaoDB files them under 'Vasculature', 'Connective tissue' and 'Immune
# system'): added to an organ's own types unless `common=False`. Broad types only: the immune
# system's subsets (memory and naive T, gamma delta T) share their markers, which cannot tell them apart.
COMMON_TYPES = ("Endothelial cells", "Fibroblasts", "Macrophages", "Monocytes", "T cells", "B cells", "NK cells")
# Subsets of a lineage PanglaoDB lists beside the lineage: their markers are largely the lineage's,
# which known markers cannot tell apart (macro-F1 0.39 to 0.45 on the PBMC sets' T subsets,
# benchmarks/results/marker_annotation.md); left out unless `subsets=True`.
SUBSETS = frozenset({"B cells memory", "B cells naive", "T memory cells", "T helper cells", "T regulatory cells",
                     "T cytotoxic cells", "T follicular helper cells", "Gamma delta T cells", "Natural killer T cells",
                     "Nuocytes", "Myeloid-derived suppressor cells", "Red pulp macrophages"})
# tissue words files and users write, folded (`fold_cell_type`: case, punctuation and a plural 's'
# set aside), beyond PanglaoDB's own organ names
TISSUE_WORDS = {
    "lung": ("Lungs",), "airway": ("Lungs",), "alveolu": ("Lungs",), "bronchu": ("Lungs",), "trachea": ("Lungs",),
    "liver": ("Liver",), "hepatic": ("Liver",),
    "kidney": ("Kidney",), "renal": ("Kidney",),
    "brain": ("Brain",), "cortex": ("Brain",), "cerebral cortex": ("Brain",), "hippocampu": ("Brain",),
    "cerebellum": ("Brain",), "striatum": ("Brain",), "midbrain": ("Brain",),
    "gut": ("GI tract",), "intestine": ("GI tract",), "small intestine": ("GI tract",),
    "large intestine": ("GI tract",), "colon": ("GI tract",), "ileum": ("GI tract",), "jejunum": ("GI tract",),
    "duodenum": ("GI tract",), "stomach": ("GI tract",), "gastric": ("GI tract",), "rectum": ("GI tract",),
    "esophagu": ("GI tract",),
    "pancreatic islet": ("Pancreas",), "islet": ("Pancreas",), "islet of langerhan": ("Pancreas",),
    "blood": ("Blood", "Immune system"), "peripheral blood": ("Blood", "Immune system"),
    "pbmc": ("Blood", "Immune system"), "bone marrow": ("Blood", "Immune system"),
    "spleen": ("Immune system",), "lymph node": ("Immune system",), "immune": ("Immune system",),
    "cardiac": ("Heart",), "myocardium": ("Heart",), "epidermi": ("Skin",), "dermi": ("Skin",),
    "testi": ("Reproductive",), "ovary": ("Reproductive",), "uteru": ("Reproductive",),
    "breast": ("Mammary gland",), "retina": ("Eye",), "muscle": ("Skeletal muscle",),
    "bladder": ("Urinary bladder",), "mouth": ("Oral cavity",), "adrenal gland": ("Adrenal glands",),
}


class UnknownTissueError(InstructCellError, ValueError):
    """A tissue none of whose words names an organ the marker database files cell types under."""


@lru_cache(maxsize=1)
def cell_type_organs() -> dict[str, str]:
    """PanglaoDB's organ of each of its cell types ('Kupffer cells': 'Liver')."""
    text = resources.files(__package__).joinpath(ORGANS_FILE).read_text(encoding="utf-8")
    return dict(json.loads(text)["panglaodb"])


def tissue_organs(tissue: str) -> tuple[str, ...]:
    """The PanglaoDB organs a tissue's name stands for: an organ's own name ('Lungs', 'lung'), or
    one of `TISSUE_WORDS` ('hepatic', 'PBMC', 'colon'); else those of every such name among its
    words ('immune (spleen/marrow)': the immune system).

    Raises
    ------
    UnknownTissueError
        A name that stands for no organ, with the organs there are.
    """
    organs = sorted(set(cell_type_organs().values()))
    folded = fold_cell_type(tissue)
    by_name = {fold_cell_type(o): (o,) for o in organs}
    names = {**by_name, **TISSUE_WORDS}  # a word of ours over an organ of the same name ("blood": its immune cells too)
    found = names.get(folded) or tuple(dict.fromkeys(
        o for name, found in names.items() if re.search(rf"\b{re.escape(name)}\b", folded) for o in found))
    if not found:
        raise UnknownTissueError(f"no organ of the marker database is known as {tissue!r}; name one of "
                                 f"{', '.join(organs)} (or liver, lung, kidney, brain, colon, blood...), or give "
                                 "the candidates yourself")
    return found


def tissue_cell_types(tissue: str, common: bool = True, subsets: bool = False,
                      besides: Sequence[str] = ()) -> list[str]:
    """Candidates for cells of `tissue`: the cell types PanglaoDB files under its organ (names the
    marker route and `annotate` take as they are), then `COMMON_TYPES` (with `common`); lineage
    subsets (`SUBSETS`) only with `subsets`. Two names of one Cell Ontology term ('Megakaryocytes',
    'Platelets') keep the first: candidates sharing a term cannot be read through the ontology,
    and `annotate` would score them all as plain text. `besides`: candidates named already, whose
    types (the same name or term: 'T cell' for 'T cells') are not listed again.

    Raises
    ------
    UnknownTissueError
        A tissue the database files no cell types under (`tissue_organs`).
    """
    organs = tissue_organs(tissue)
    own = sorted(t for t, organ in cell_type_organs().items() if organ in organs and (subsets or t not in SUBSETS))
    out, terms = [], {ontology_id(n) for n in besides} - {None}
    names = {fold_cell_type(n) for n in besides}
    for name in own + [t for t in COMMON_TYPES if common and t not in own]:
        term = ontology_id(name)
        if fold_cell_type(name) not in names and (term is None or term not in terms):
            out.append(name)
            terms.add(term)
    return out
