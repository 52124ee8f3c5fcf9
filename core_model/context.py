"""Species and tissue as people write them, read as the training sets name them.

The checkpoint learned its label sets, and the language model its prompts, with a few spellings:
'human', 'mouse', 'human and mouse'; 'peripheral blood', 'pancreas', 'immune (spleen/marrow)'.
Files spell the same contexts otherwise: CELLxGENE writes organism 'Homo sapiens' and tissue
'blood', others 'PBMC' or 'islets of Langerhans'. Read literally, 'Homo sapiens' matched no label
set, so free answers ranged over every tissue's labels and the prompt showed the model a species
text it never saw. Both prompts and label-set matching go through `canonical_species` and
`canonical_tissue`; text not in the tables is kept as written.
"""

from __future__ import annotations

SPECIES_ALIASES: dict[str, str] = {
    "homo sapiens": "human", "homo_sapiens": "human", "h. sapiens": "human", "h sapiens": "human",
    "hsapiens": "human", "humans": "human",
    "mus musculus": "mouse", "mus_musculus": "mouse", "m. musculus": "mouse", "m musculus": "mouse",
    "mmusculus": "mouse", "mice": "mouse", "murine": "mouse",
}
TISSUE_ALIASES: dict[str, str] = {
    **dict.fromkeys(("blood", "pbmc", "pbmcs", "peripheral blood mononuclear cell",
                     "peripheral blood mononuclear cells"), "peripheral blood"),
    **dict.fromkeys(("islet", "islets", "islet of langerhans", "islets of langerhans", "pancreatic islet",
                     "pancreatic islets"), "pancreas"),
    **dict.fromkeys(("spleen", "bone marrow", "marrow"), "immune (spleen/marrow)"),
}


def _key(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def canonical_species(text: str) -> str:
    """'Homo sapiens' -> 'human', 'Mus musculus' -> 'mouse'; other text as given (spaces trimmed)."""
    return SPECIES_ALIASES.get(_key(text), " ".join(str(text).split()))


def canonical_tissue(text: str) -> str:
    """'PBMC' / 'blood' -> 'peripheral blood', 'islets of Langerhans' -> 'pancreas'; other text as given."""
    return TISSUE_ALIASES.get(_key(text), " ".join(str(text).split()))


def species_clash(stated: list[str], detected: str) -> str | None:
    """A sentence when the species the cells are said to be (obs or the caller) is not the one
    their genes show ('mouse' in obs, human symbols in var), else None. Why: the prompt and the
    label sets free answers range over follow what is said, so a wrong column quietly changes
    the question."""
    named = {canonical_species(s) for s in stated if str(s).strip()}
    if detected not in ("human", "mouse") or not named:
        return None
    other = sorted(s for s in named if s in ("human", "mouse") and s != detected)
    if not other or any(detected in s.split() for s in named):  # 'human and mouse' names both
        return None
    return (f"the cells are said to be {' and '.join(other)} (obs species or the species given), but their genes "
            f"read as {detected} ones: the prompt and the labels free answers range over follow what is said; "
            f"pass species={detected!r} (command line: --species {detected}) if the column is wrong")

