"""Marker validation: are a label's top genes known markers of its cell type?

The marker databases (PanglaoDB, CellMarker 2.0) name cell types their own way; our small table
``marker_map.json`` maps the label strings of the shared datasets onto those names, and
``known_markers.tsv.gz`` ships those cell types' genes (``scripts/build_marker_table.py``), so
the check works wherever the package is installed. Gene symbols are compared upper-case: the
model's vocabulary is human symbols and PanglaoDB writes mouse genes human-style, so mouse
datasets aligned to human symbols compare directly.

A label our table does not map gets a report line saying so instead of a failure.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from instructcell_agent.core_model.labels import ontology_id

log = logging.getLogger(__name__)

# the releases the shipped table was built from (scripts/build_marker_table.py): CellMarker 2.0's
# human table (aggregated) and its mouse one (full)
DATABASES = {"panglaodb": ("PanglaoDB_markers_27_Mar_2020.tsv",),
             "cellmarker2": ("CellMarker2_Human_Aug.csv", "Cell_marker_Mouse.csv.gz")}
TABLE = "known_markers.tsv.gz"
DEFAULT_DB = "panglaodb"
PRECISION_K = 10


def fold_cell_type(name: str) -> str:
    """A cell-type name folded for lookup: case, punctuation, plurals and a trailing 'cell' set
    aside ('Kupffer cells' and 'kupffer cell' are 'kupffer'; 'Hepatocytes' is 'hepatocyte')."""
    words = re.sub(r"[^0-9a-z]+", " ", str(name).casefold()).split()
    words = [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words]
    if len(words) > 1 and words[-1] == "cell":
        words = words[:-1]
    return " ".join(words)


@dataclass(frozen=True)
class MarkerDB:
    """One marker database: cell type -> species -> upper-case gene symbols.

    Attributes
    ----------
    name
        Database key (``"panglaodb"``, ``"cellmarker2"``, or anything for a constructed one).
    genes
        ``{cell_type: {species: set_of_symbols}}``; species ``"human"``, ``"mouse"`` or ``"any"``.
    label_map
        ``{label: [cell_type, ...]}``: our mapping of dataset labels onto this database's names.
    source
        Where it was read from (for reports).
    """

    name: str
    genes: Mapping[str, Mapping[str, frozenset[str]]]
    label_map: Mapping[str, Sequence[str]] = field(default_factory=dict)
    source: str = ""

    def cell_types_for(self, label: str) -> list[str] | None:
        """Database cell types `label` stands for, or None: our table's mapping first (exact, then
        case-insensitive, then a mapped label with the same Cell Ontology term: 'pancreatic A
        cell' as 'Alpha'), then the database's own names folded alike ('Kupffer cell' as
        'Kupffer cells'). Every reader of the database (marker annotation, marker check, explain's
        marker report) goes through here, so a name one of them finds, all of them find."""
        if label in self.label_map:
            return list(self.label_map[label])
        folded = {k.casefold(): v for k, v in self.label_map.items()}
        hit = folded.get(str(label).casefold())
        if hit is None and (term := ontology_id(str(label))):
            hit = next((v for k, v in self.label_map.items() if ontology_id(k) == term), None)
        if hit is not None:
            return list(hit)
        wanted = fold_cell_type(label)
        return sorted(t for t in self.genes if fold_cell_type(t) == wanted) or None

    def markers_for(self, label: str, species: str | None = None) -> set[str] | None:
        """Known marker symbols of `label` (union over its mapped cell types), or None if unmapped.

        `species` ``"human"``/``"mouse"`` keeps the entries the database gives for it; anything
        else keeps every entry.
        """
        types = self.cell_types_for(label)
        if types is None:
            return None
        out: set[str] = set()
        for cell_type in types:
            by_species = self.genes.get(cell_type, {})
            keys = [species, "any"] if species in ("human", "mouse") else list(by_species)
            for key in keys:
                out |= set(by_species.get(key, ()))
        return out


def marker_map() -> dict[str, dict[str, list[str]]]:
    """Our label -> database cell type table, one section per database."""
    text = resources.files(__package__).joinpath("marker_map.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


@lru_cache(maxsize=1)
def _shipped_table() -> dict[str, dict[str, dict[str, frozenset[str]]]]:
    """``{database: {cell_type: {species: symbols}}}`` from ``known_markers.tsv.gz``."""
    raw: dict[str, dict[str, dict[str, set[str]]]] = {}
    with resources.files(__package__).joinpath(TABLE).open("rb") as fh:
        text = io.TextIOWrapper(gzip.GzipFile(fileobj=fh), encoding="utf-8", newline="")
        for row in csv.DictReader(text, delimiter="\t"):
            by_type = raw.setdefault(row["database"], {}).setdefault(row["cell_type"], {})
            by_type.setdefault(row["species"], set()).add(row["symbol"])
    return {db: {ct: {sp_: frozenset(g) for sp_, g in by.items()} for ct, by in types.items()}
            for db, types in raw.items()}


def load_marker_db(name: str = DEFAULT_DB) -> MarkerDB:
    """One marker database, as the package ships it, with our label mapping.

    The table holds every gene the database lists for the cell types ``marker_map.json`` maps
    labels onto (``scripts/build_marker_table.py`` builds it from the shared folder's copies), so
    marker validation needs no shared data.

    Parameters
    ----------
    name
        ``"panglaodb"`` (the reference for precision numbers) or ``"cellmarker2"``.

    Raises
    ------
    ValueError
        For an unknown database name.
    """
    if name not in DATABASES:
        raise ValueError(f"unknown marker database {name!r}; choose one of {sorted(DATABASES)}")
    return MarkerDB(name, _shipped_table()[name], marker_map().get(name, {}), f"{TABLE} ({', '.join(DATABASES[name])})")


def contrast_markers(db: MarkerDB, label: str, versus: str, species: str | None = None) -> set[str] | None:
    """Known markers of `label` that the database does not list for `versus`: the genes that should
    tell the two apart (empty where both map to the same database types, e.g. two monocyte
    subsets under PanglaoDB's 'Monocytes'). None where either label is unmapped."""
    mine, theirs = db.markers_for(label, species), db.markers_for(versus, species)
    return None if mine is None or theirs is None else mine - theirs


def _known(db: MarkerDB, label: str, species: str | None, pair: tuple[str, str] | None) -> set[str] | None:
    return db.markers_for(label, species) if pair is None else contrast_markers(db, *pair, species)


def precision_at_k(ranked: Sequence[str], known: set[str], k: int = PRECISION_K) -> float:
    """Known markers among the first `k` ranked genes, divided by `k`.

    A ranking shorter than `k` counts its missing places as misses (a method that names fewer
    genes does not score higher for it). Symbols compare upper-case.
    """
    top = [str(g).upper() for g in list(ranked)[:k]]
    return sum(g in known for g in top) / k


def marker_report(rankings: Mapping[str, Sequence[str]], db: MarkerDB | None, species: str | None = None,
                  k: int = PRECISION_K, vocab: Sequence[str] | None = None,
                  pairs: Mapping[str, tuple[str, str]] | None = None) -> pd.DataFrame:
    """Per label: mapped cell types, known markers among the top `k` genes, precision at `k`.

    Parameters
    ----------
    rankings
        ``{label: genes ranked best first}`` (at least `k` each for a full precision).
    db
        The database (None: every row gets a note and NaN precision).
    species
        ``"human"`` / ``"mouse"`` to use that species' entries; None for all.
    k
        Cut-off for the precision.
    vocab
        Genes the model can rank at all: reported as how many known markers it could have found.
    pairs
        ``{row label: (label, versus)}`` for contrasts ('A vs B'): their known markers are A's
        that the database does not list for B (:func:`contrast_markers`).

    Returns
    -------
    pandas.DataFrame
        Columns label, cell_types, n_known, n_known_in_vocab, known_in_top, precision_at_k, note.
    """
    universe = {str(g).upper() for g in vocab} if vocab is not None else None
    rows = []
    pairs = pairs or {}
    for label, ranked in rankings.items():
        pair = pairs.get(label)
        known = _known(db, label, species, pair) if db is not None else None
        row = {"label": label, "cell_types": "", "n_known": 0, "n_known_in_vocab": np.nan,
               "known_in_top": "", "precision_at_k": np.nan, "note": ""}
        if db is None:
            row["note"] = "no marker database"
        elif known is None:
            row["note"] = f"label not in our {db.name} mapping (interpret/marker_map.json)"
        elif pair is not None and not known:
            row.update(cell_types=_types(db, pair), n_known_in_vocab=0,
                       note=f"{db.name} lists no marker of {pair[0]!r} that it does not list for {pair[1]!r}")
        else:
            top = [str(g) for g in list(ranked)[:k]]
            row.update(cell_types=_types(db, pair or (label,)), n_known=len(known),
                       known_in_top=",".join(g for g in top if g.upper() in known),
                       precision_at_k=precision_at_k(ranked, known, k))
            if universe is not None:
                row["n_known_in_vocab"] = len(known & universe)
        rows.append(row)
    return pd.DataFrame(rows, columns=["label", "cell_types", "n_known", "n_known_in_vocab", "known_in_top",
                                       "precision_at_k", "note"])


def _types(db: MarkerDB, labels: Sequence[str]) -> str:
    """'T cytotoxic cells; T cells' for a label, 'NK cells (not T cells)' for a contrast."""
    names = ["; ".join(db.cell_types_for(label) or []) for label in labels]
    return names[0] if len(names) == 1 else f"{names[0]} (not {names[1]})"


def is_known(db: MarkerDB | None, label: str, genes: Sequence[str], species: str | None = None,
             pair: tuple[str, str] | None = None) -> list[bool | None]:
    """Per gene: a known marker of `label` (of `pair`'s first label and not its second)? None where
    that cannot be said (no db, unmapped label)."""
    known = _known(db, label, species, pair) if db is not None else None
    if known is None:
        return [None] * len(genes)
    return [str(g).upper() in known for g in genes]


def wilcoxon_rankings(log_expr: sp.spmatrix | np.ndarray, genes: Sequence[str], groups: Sequence[str],
                      n_genes: int = 100) -> dict[str, list[str]]:
    """Top genes per group by scanpy's ``rank_genes_groups(method="wilcoxon")``, one group vs rest.

    `log_expr` is log1p(CP10k) (cells x genes). Groups with fewer than two cells are left out
    (scanpy cannot test them); fewer than two testable groups give an empty result.
    """
    import scanpy as sc

    labels = pd.Series(np.asarray(groups, dtype=str))
    counts = labels.value_counts()
    keep_groups = sorted(counts.index[counts >= 2])
    if len(keep_groups) < 2:
        log.warning("wilcoxon comparison skipped: fewer than two groups with at least two cells")
        return {}
    mask = labels.isin(keep_groups).to_numpy()
    X = log_expr[mask] if sp.issparse(log_expr) else np.asarray(log_expr)[mask]
    adata = ad.AnnData(sp.csr_matrix(X, dtype=np.float32))
    adata.var_names = pd.Index([str(g) for g in genes])
    adata.obs["group"] = pd.Categorical(labels[mask].to_numpy(), categories=keep_groups)
    sc.tl.rank_genes_groups(adata, "group", method="wilcoxon", n_genes=min(n_genes, adata.n_vars))
    names = adata.uns["rank_genes_groups"]["names"]
    return {g: [str(x) for x in names[g]] for g in keep_groups}


def wilcoxon_pair_rankings(log_expr: sp.spmatrix | np.ndarray, genes: Sequence[str], labels: Sequence[str],
                           pairs: Mapping[str, tuple[str, str]], n_genes: int = 100) -> dict[str, list[str]]:
    """Top genes of each contrast ``{name: (A, B)}`` by scanpy's wilcoxon test of the cells labelled A
    against those labelled B (``reference=B``): the usual way to ask what tells two types apart.
    A contrast with fewer than two cells on either side is left out."""
    import scanpy as sc

    labels = np.asarray(labels, dtype=str)
    out = {}
    for name, (a, b) in pairs.items():
        mask = (labels == a) | (labels == b)
        if (labels == a).sum() < 2 or (labels == b).sum() < 2:
            continue
        X = log_expr[mask] if sp.issparse(log_expr) else np.asarray(log_expr)[mask]
        adata = ad.AnnData(sp.csr_matrix(X, dtype=np.float32))
        adata.var_names = pd.Index([str(g) for g in genes])
        adata.obs["group"] = pd.Categorical(labels[mask], categories=[a, b])
        sc.tl.rank_genes_groups(adata, "group", groups=[a], reference=b, method="wilcoxon",
                                n_genes=min(n_genes, adata.n_vars))
        out[name] = [str(x) for x in adata.uns["rank_genes_groups"]["names"][a]]
    return out
