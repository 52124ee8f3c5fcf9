"""Gene identifiers: detect their type and species, and map them to human HGNC-style symbols.

The model's vocabulary is human gene symbols. Users bring Ensembl ids (often with version
suffixes), mouse symbols, or human symbols that HGNC has since renamed. The tables used here are
built by ``scripts/build_gene_tables.py`` and shipped in ``core_model/resources/``; they are read
on first use and cached.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal

logger = logging.getLogger(__name__)

IdType = Literal["ensembl", "symbol"]
Species = Literal["human", "mouse"]

_ENSEMBL = re.compile(r"^ENS([A-Z]{0,6})G\d{11}(?:\.\d+)?(?:_PAR_Y)?$")
ENSEMBL_ID = _ENSEMBL
_ENSEMBL_CORE = re.compile(r"^(ENS[A-Z]{0,6}G\d{11})")
# An Ensembl id and a symbol in one name, either way round, as tables exported from GEO and some
# pipelines write them: "ENSG00000075624|ACTB", "ENSG00000075624_ACTB", "ACTB__ENSG00000075624".
_ID_FIRST = re.compile(r"^(ENS[A-Z]{0,6}G\d{11}(?:\.\d+)?)(?:[|:_]+|\s+)(\S.*)$")
_ID_LAST = re.compile(r"^(\S.*?)(?:[|:_]+|\s+)(ENS[A-Z]{0,6}G\d{11}(?:\.\d+)?)$")
# Human symbols are upper case except for the open-reading-frame infix ("C1orf127").
_HUMAN_ORF = re.compile(r"^C\w*orf\d+")
_HUMAN_ORF_UPPER = re.compile(r"^(C\w*?)ORF(?=\d)")
_N_EXAMPLES = 10


@dataclass(frozen=True)
class GeneMappingInfo:
    """What :func:`to_human_symbols` did.

    Attributes
    ----------
    id_type, species
        Detected (or given) identifier type and species of the input.
    n_mapped, n_unmapped
        Names that did / did not get a human symbol.
    unmapped_examples
        Up to ten input names left without a symbol.
    n_renamed
        Names whose symbol differs from the input (Ensembl id, ortholog or alias mapping).
    notes
        Human-readable remarks on the mapping.
    """

    id_type: str
    species: str
    n_mapped: int
    n_unmapped: int
    unmapped_examples: tuple[str, ...]
    n_renamed: int = 0
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dictionary."""
        return {
            "id_type": self.id_type,
            "species": self.species,
            "n_mapped": self.n_mapped,
            "n_unmapped": self.n_unmapped,
            "unmapped_examples": list(self.unmapped_examples),
            "n_renamed": self.n_renamed,
            "notes": list(self.notes),
        }


def _read_table(name: str) -> dict[str, str]:
    """Read a two-column gzipped TSV from the package resources (header row skipped)."""
    path = resources.files(__package__).joinpath("resources", name)
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8", newline="") as text:
        reader = csv.reader(text, delimiter="\t")
        next(reader, None)
        return {row[0]: row[1] for row in reader if len(row) >= 2}


@lru_cache(maxsize=1)
def ensembl_to_symbol_table() -> dict[str, str]:
    """Human Ensembl gene id (no version) -> symbol."""
    return _read_table("ensembl_to_symbol.tsv.gz")


@lru_cache(maxsize=1)
def mouse_to_human_table() -> dict[str, str]:
    """Mouse symbol -> human ortholog symbol."""
    return _read_table("mouse_to_human.tsv.gz")


@lru_cache(maxsize=1)
def _mouse_to_human_upper() -> dict[str, str]:
    """The ortholog table keyed by upper-cased mouse symbol, for inputs with odd casing."""
    table: dict[str, str] = {}
    for mouse, human in sorted(mouse_to_human_table().items()):
        table.setdefault(mouse.upper(), human)
    return table


@lru_cache(maxsize=1)
def human_alias_table() -> dict[str, str]:
    """Unambiguous alias or previous human symbol -> approved symbol."""
    return _read_table("human_aliases.tsv.gz")


@lru_cache(maxsize=1)
def earlier_names_table() -> dict[str, str]:
    """Human Ensembl gene id -> the symbol an older annotation release gave it (from a shared
    dataset's own id and symbol columns), where GENCODE v44 / HGNC name it otherwise or not at all."""
    return _read_table("earlier_names.tsv.gz")


@lru_cache(maxsize=1)
def _earlier_name_by_symbol() -> dict[str, str]:
    """Current symbol -> the earlier symbol of the same Ensembl id."""
    ids = ensembl_to_symbol_table()
    return {ids[gene_id]: old for gene_id, old in earlier_names_table().items() if gene_id in ids}


def earlier_name(name: str, symbol: str | None) -> str | None:
    """The symbol an older annotation release gave the gene that `name` (an Ensembl id or a
    symbol; `symbol` is what :func:`to_human_symbols` made of it) identifies, if it had another:
    the name a model trained on older files may know it by ('SARS' for SARS1)."""
    core = strip_ensembl_version(name)
    if core.startswith("ENSG"):
        return earlier_names_table().get(core)
    return _earlier_name_by_symbol().get(symbol) if symbol is not None else None


@lru_cache(maxsize=1)
def _ids_by_symbol() -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """Symbol -> the Ensembl ids carrying it: in the current tables, and as an earlier name."""
    current: dict[str, set[str]] = {}
    for gene_id, symbol in ensembl_to_symbol_table().items():
        current.setdefault(symbol, set()).add(gene_id)
    earlier: dict[str, set[str]] = {}
    for gene_id, old in earlier_names_table().items():
        earlier.setdefault(old, set()).add(gene_id)
    return ({s: frozenset(i) for s, i in current.items()}, {s: frozenset(i) for s, i in earlier.items()})


def gene_annotation(symbols: Sequence[str]) -> tuple[list[str | None], list[str | None]]:
    """For vocabulary symbols: each one's Ensembl gene id and its GENCODE v44 / HGNC symbol, so
    cells written on the vocabulary (generated ones) can be joined with newer files by id or name.
    The current tables' id first, else the id an older release named so (the vocabulary took
    some names from older files); None where no id, or several, carry the symbol (431 of the
    shipped vocabulary's 11,117 names no id in these tables, 40 several), and no current symbol
    for an id GENCODE v44 no longer holds."""
    current, earlier = _ids_by_symbol()
    table = ensembl_to_symbol_table()
    ids = []
    for symbol in symbols:
        found = current.get(symbol) or earlier.get(symbol, frozenset())
        ids.append(next(iter(found)) if len(found) == 1 else None)
    return ids, [table.get(i) if i is not None else None for i in ids]  # a retired id has no current name


def _clean_names(names: Iterable[object]) -> list[str]:
    """Strings with surrounding blanks removed; NaN/None become ''."""
    cleaned = []
    for name in names:
        if name is None or (isinstance(name, float) and name != name):
            cleaned.append("")
        else:
            cleaned.append(str(name).strip())
    return cleaned


def split_compound_name(name: str) -> tuple[str, str] | None:
    """(Ensembl id, symbol) of a name that joins both ("ENSG00000075624|ACTB"), else None."""
    if _ENSEMBL.match(name):
        return None  # "ENSG00000002586_PAR_Y" is one id
    if match := _ID_FIRST.match(name):
        return match.group(1), match.group(2)
    if match := _ID_LAST.match(name):
        return match.group(2), match.group(1)
    return None


def split_compound_names(names: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """Ensembl ids and symbols of names most of which join both, each name that does not kept as
    both; None when fewer than half of the non-empty names are such pairs."""
    pairs = [split_compound_name(n) for n in _clean_names(names)]
    n_named = sum(1 for n in names if str(n).strip())
    if not n_named or 2 * sum(p is not None for p in pairs) <= n_named:
        return None
    kept = [p or (str(n).strip(), str(n).strip()) for p, n in zip(pairs, names)]
    return [i for i, _ in kept], [s for _, s in kept]


def strip_ensembl_version(name: str) -> str:
    """Return ``ENSG00000141510`` for ``ENSG00000141510.17`` (other names unchanged)."""
    match = _ENSEMBL_CORE.match(name)
    return match.group(1) if match else name


def detect_gene_id_type(names: Iterable[object]) -> IdType:
    """Tell whether gene names are Ensembl gene ids or symbols.

    Parameters
    ----------
    names
        Gene names, e.g. ``adata.var_names``.

    Returns
    -------
    {"ensembl", "symbol"}
        ``"ensembl"`` when more than half of the non-empty names are Ensembl gene ids.
    """
    cleaned = [n for n in _clean_names(names) if n]
    if not cleaned:
        return "symbol"
    n_ensembl = sum(1 for n in cleaned if _ENSEMBL.match(n))
    return "ensembl" if n_ensembl * 2 > len(cleaned) else "symbol"


def detect_species(names: Iterable[object]) -> Species:
    """Guess whether gene names are human or mouse.

    Ensembl ids decide by prefix (``ENSMUSG`` vs ``ENSG``). Symbols decide by case: mouse
    symbols are capitalised (``Actb``, ``mt-Nd1``, ``0610005C13Rik``), human ones upper case
    (``ACTB``). A mouse set whose symbols were upper-cased therefore reads as human, which is
    what matching it against human symbols needs anyway.

    Parameters
    ----------
    names
        Gene names.

    Returns
    -------
    {"human", "mouse"}
    """
    cleaned = [n for n in _clean_names(names) if n]
    n_mouse = n_human = 0
    for name in cleaned:
        core = strip_ensembl_version(name)
        if _ENSEMBL.match(name):
            if core.startswith("ENSMUSG"):
                n_mouse += 1
            elif core.startswith("ENSG"):
                n_human += 1
            continue
        if not any(c.isalpha() for c in name) or name.islower():
            continue  # all lower case ("cd19"): a pipeline's lower-casing, no sign of either convention
        if any(c.islower() for c in name) and not _HUMAN_ORF.match(name):
            n_mouse += 1
        else:
            n_human += 1
    return "mouse" if n_mouse > n_human else "human"


def _map_ensembl(cleaned: Sequence[str]) -> tuple[list[str | None], list[str]]:
    table = ensembl_to_symbol_table()
    out: list[str | None] = []
    for name in cleaned:
        core = strip_ensembl_version(name)
        # Only human ids can be mapped: the shipped table is human (GENCODE/HGNC).
        out.append(table.get(core) if core.startswith("ENSG") else None)
    notes = ["Ensembl gene ids mapped to symbols (GENCODE v44 / HGNC)"]
    unknown = sum(1 for n, s in zip(cleaned, out) if s is None and strip_ensembl_version(n).startswith("ENSG"))
    if unknown:  # e.g. Cell Ranger's GRCh38 (Ensembl 84) ids for CCL3, CCL4 and CCL5, since replaced
        notes.append(f"{unknown:,} human Ensembl ids are not in GENCODE v44 (retired, or from another "
                     "release); a var column of gene symbols names them: pass gene_key (CLI --gene-key)")
    if any(strip_ensembl_version(n).startswith("ENSMUSG") for n in cleaned):
        notes.append(
            "mouse Ensembl ids (ENSMUSG) cannot be mapped: pass gene_key naming a column of "
            "mouse symbols instead"
        )
    return out, notes


def _map_mouse(cleaned: Sequence[str]) -> tuple[list[str | None], list[str]]:
    table, upper = mouse_to_human_table(), _mouse_to_human_upper()
    out: list[str | None] = []
    for name in cleaned:
        human = table.get(name)
        if human is None and name:
            human = upper.get(name.upper())
        out.append(human)
    return out, ["mouse symbols mapped to human orthologs (Ensembl 105)"]


def _map_human(cleaned: Sequence[str]) -> tuple[list[str | None], list[str]]:
    aliases, ensembl = human_alias_table(), ensembl_to_symbol_table()
    present = set(cleaned)
    out: list[str | None] = []
    n_alias = n_lower = 0
    for name in cleaned:
        if not name:
            out.append(None)
            continue
        if _ENSEMBL.match(name):
            # Some pipelines name genes without a symbol by their Ensembl id inside a symbol
            # list; map those too when the table knows them.
            out.append(ensembl.get(strip_ensembl_version(name), name))
            continue
        if name.islower() and name not in aliases:
            # a lower-cased human symbol: restore the HGNC casing ("c1orf127" -> "C1orf127"); names
            # HGNC spells in lower case ("hsa-mir-150", an alias of MIR150) are known as they are
            name = _HUMAN_ORF_UPPER.sub(lambda m: m.group(1) + "orf", name.upper())
            n_lower += 1
        approved = aliases.get(name)
        # Renaming an alias whose approved symbol is also in the input would merge two columns
        # that the user kept apart; leave it as given then.
        if approved is not None and approved not in present:
            out.append(approved)
            n_alias += 1
        else:
            out.append(name)
    notes = []
    if n_lower:
        notes.append(f"{n_lower:,} lower-case symbols read as human symbols in HGNC casing")
    if n_alias:
        notes.append(f"{n_alias:,} outdated human symbols renamed to approved HGNC symbols")
    return out, notes


def to_human_symbols(
    names: Iterable[object],
    *,
    species: str | None = None,
    id_type: str | None = None,
) -> tuple[list[str | None], GeneMappingInfo]:
    """Map gene names to human gene symbols.

    Parameters
    ----------
    names
        Gene names: Ensembl ids (version suffixes allowed), mouse symbols or human symbols.
    species
        ``"human"`` or ``"mouse"``; detected with :func:`detect_species` when None.
    id_type
        ``"ensembl"`` or ``"symbol"``; detected with :func:`detect_gene_id_type` when None.

    Returns
    -------
    symbols : list of str or None
        One entry per input name: the human symbol, or None when there is none (unknown
        Ensembl id, mouse gene without human ortholog, empty name). Human symbols that are not
        known aliases are kept as given.
    info : GeneMappingInfo
        Counts and examples.

    Raises
    ------
    ValueError
        For an unknown ``species`` or ``id_type``.
    """
    cleaned = _clean_names(names)
    id_type = id_type or detect_gene_id_type(cleaned)
    species = species or detect_species(cleaned)
    if id_type not in ("ensembl", "symbol"):
        raise ValueError(f"id_type must be 'ensembl' or 'symbol', not {id_type!r}")
    if species not in ("human", "mouse"):
        raise ValueError(f"species must be 'human' or 'mouse', not {species!r}")

    if id_type == "ensembl":
        symbols, notes = _map_ensembl(cleaned)
    elif species == "mouse":
        symbols, notes = _map_mouse(cleaned)
    else:
        symbols, notes = _map_human(cleaned)

    unmapped = [name for name, sym in zip(cleaned, symbols) if sym is None]
    info = GeneMappingInfo(
        id_type=id_type,
        species=species,
        n_mapped=len(symbols) - len(unmapped),
        n_unmapped=len(unmapped),
        unmapped_examples=tuple(n for n in unmapped if n)[:_N_EXAMPLES],
        n_renamed=sum(1 for n, s in zip(cleaned, symbols) if s is not None and s != n),
        notes=tuple(notes),
    )
    logger.debug("gene mapping: %s", info)
    return symbols, info
