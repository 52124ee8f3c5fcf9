"""Build the small gene tables that ``instructcell_agent.core_model.genes`` ships.

Reads three reference files from the shared folder (never copied into the project) and writes
gzipped, tab-separated, sorted tables into ``core_model/resources/``:

* ``ensembl_to_symbol.tsv.gz``: human Ensembl gene id (no version) -> symbol
  (GENCODE v44, completed with HGNC for ids GENCODE leaves unnamed or lacks);
* ``mouse_to_human.tsv.gz``: mouse symbol -> human ortholog symbol (Ensembl 105);
* ``human_aliases.tsv.gz``: unambiguous alias / previous symbol -> approved HGNC symbol;
* ``earlier_names.tsv.gz``: human Ensembl gene id -> the symbol an older annotation release gave
  it, where a shared dataset names the id (a var column of ids beside its symbols) unlike the
  table above or names an id it lacks. A model trained on such a file learned the older name
  ('SARS' for what GENCODE v44 calls SARS1, 'RP11-206L10.9' for LINC01409); the alignment finds
  it from a newer file's symbol or id through this table. The id pins the pair down, where the
  HGNC alias lists are ambiguous ('SARS' is also an alias of SARS2).

Usage::

    python scripts/build_gene_tables.py [--shared PATH] [--out PATH]

(The datasets are read from ``<shared>/data/{cta,dsp,cpcg}``; only their gene annotation is used.)

The output is byte-for-byte deterministic (sorted rows, gzip mtime 0), so re-running it on the
same inputs leaves ``git status`` clean.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import re
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import anndata as ad
import pandas as pd

logger = logging.getLogger("build_gene_tables")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "core_model" / "resources"
GENCODE_FILE = "GENCODEv44_Gene_id2name.csv"
ORTHOLOG_FILE = "Ensembl105_Human2Mouse_Genes.csv"
HGNC_FILE = "HGNC_symbol_reference.csv.gz"
_ENSG = re.compile(r"^(ENSG\d{11})(?:\.\d+)?(?:_PAR_Y)?$")
DATASET_FOLDERS = ("cta", "dsp", "cpcg")


def default_shared() -> Path:
    """Return the shared folder: ``$INSTRUCTCELL_SHARED`` or ``<repo>/../shared``."""
    env = os.environ.get("INSTRUCTCELL_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def _clean(value: object) -> str:
    """Return a stripped string, or '' for NaN/None."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


def build_ensembl_to_symbol(gencode: pd.DataFrame, hgnc: pd.DataFrame) -> dict[str, str]:
    """Map Ensembl gene ids to symbols: GENCODE first, HGNC fills the gaps.

    Parameters
    ----------
    gencode
        Two columns: Ensembl id, gene name.
    hgnc
        The HGNC table (columns ``Status``, ``Approved symbol``, ``Ensembl gene ID``).

    Returns
    -------
    dict
        Version-less Ensembl id -> symbol.
    """
    table: dict[str, str] = {}
    for raw_id, raw_name in zip(gencode.iloc[:, 0], gencode.iloc[:, 1]):
        match = _ENSG.match(_clean(raw_id))
        name = _clean(raw_name)
        # GENCODE names unnamed genes by their own id; that is no symbol, so HGNC may fill it.
        if match is None or not name or name.startswith("ENSG"):
            continue
        table.setdefault(match.group(1), name)
    approved = hgnc[hgnc["Status"] == "Approved"]
    for raw_id, symbol in zip(approved["Ensembl gene ID"], approved["Approved symbol"]):
        match = _ENSG.match(_clean(raw_id))
        if match is not None and _clean(symbol):
            table.setdefault(match.group(1), _clean(symbol))
    return table


def build_mouse_to_human(orthologs: pd.DataFrame) -> dict[str, str]:
    """Map each mouse symbol to one human symbol.

    When a mouse gene has several human orthologs, keep the one whose upper-cased symbol equals
    the mouse symbol upper-cased (the conventional 1:1 naming), else the first in file order.
    """
    candidates: dict[str, list[str]] = defaultdict(list)
    for human, mouse in zip(orthologs.iloc[:, 0], orthologs.iloc[:, 1]):
        human_s, mouse_s = _clean(human), _clean(mouse)
        if human_s and mouse_s and human_s not in candidates[mouse_s]:
            candidates[mouse_s].append(human_s)
    table: dict[str, str] = {}
    for mouse_s, humans in candidates.items():
        same = [h for h in humans if h.upper() == mouse_s.upper()]
        table[mouse_s] = same[0] if same else humans[0]
    return table


def build_human_aliases(hgnc: pd.DataFrame, other_names: Iterable[str]) -> dict[str, str]:
    """Map alias and previous symbols to approved symbols where that is unambiguous.

    An alias is dropped when it points to more than one approved symbol, when it is itself an
    approved symbol, or when it is the name of another gene in ``other_names`` (GENCODE), since
    renaming it would then merge two different genes.
    """
    approved = hgnc[hgnc["Status"] == "Approved"]
    approved_symbols = {_clean(s) for s in approved["Approved symbol"]} - {""}
    targets: dict[str, set[str]] = defaultdict(set)
    for column in ("Alias symbol", "Previous symbol"):
        for alias, symbol in zip(approved[column], approved["Approved symbol"]):
            alias_s, symbol_s = _clean(alias), _clean(symbol)
            if alias_s and symbol_s and alias_s != symbol_s:
                targets[alias_s].add(symbol_s)
    blocked = approved_symbols | {_clean(n) for n in other_names}
    return {
        alias: next(iter(symbols))
        for alias, symbols in targets.items()
        if len(symbols) == 1 and alias not in blocked
    }


def dataset_gene_names(paths: Iterable[Path]) -> list[tuple[str, str]]:
    """(Ensembl id, symbol) pairs of the datasets whose var holds a column of human Ensembl ids
    (more than half of its values) beside symbol var_names; only the annotation is read."""
    pairs: list[tuple[str, str]] = []
    for path in sorted(paths):
        adata = ad.read_h5ad(path, backed="r")
        try:
            var, names = adata.var, [str(n) for n in adata.var_names]
        finally:
            adata.file.close()
        if sum(_ENSG.match(n) is not None for n in names) * 2 > len(names):
            continue  # var_names are ids themselves: no symbols to learn from
        for column in var.columns:
            ids = [_ENSG.match(_clean(v)) for v in var[column].astype(object)]
            n_ids = sum(m is not None for m in ids)
            if n_ids * 2 <= len(ids):
                continue
            pairs += [(m.group(1), n) for m, n in zip(ids, names) if m is not None and n and not _ENSG.match(n)]
            logger.info("%s: var[%r] names %d Ensembl ids", path.name, column, n_ids)
    return pairs


def build_earlier_names(pairs: Iterable[tuple[str, str]], ensembl: dict[str, str]) -> dict[str, str]:
    """Ensembl id -> the dataset's symbol, where ``ensembl`` (the id table) names the id otherwise
    or lacks it. An id named two ways by the datasets, or a symbol given to two ids, is left out:
    the pair must name one gene."""
    names: dict[str, set[str]] = defaultdict(set)
    ids_of: dict[str, set[str]] = defaultdict(set)
    for gene_id, symbol in pairs:
        if ensembl.get(gene_id) != symbol:
            names[gene_id].add(symbol)
            ids_of[symbol].add(gene_id)
    return {gene_id: next(iter(symbols)) for gene_id, symbols in names.items()
            if len(symbols) == 1 and len(ids_of[next(iter(symbols))]) == 1}


def write_table(path: Path, header: Sequence[str], table: dict[str, str]) -> int:
    """Write a sorted two-column gzipped TSV atomically and deterministically; returns its size in bytes."""
    return write_rows(path, header, sorted(table.items()))


def write_rows(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> int:
    """Write `rows` (already in their final order) under `header` as a gzipped TSV, atomically and
    deterministically.

    Returns
    -------
    int
        The size of the written file in bytes.
    """
    lines = ["\t".join(header)] + ["\t".join(row) for row in rows]
    payload = ("\n".join(lines) + "\n").encode("utf-8")
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            # filename="" and mtime=0 keep the gzip header identical between runs.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
                gz.write(payload)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path.stat().st_size


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=default_shared(), help="the shared folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    genes_dir = args.shared / "data" / "genes"
    missing = [f for f in (GENCODE_FILE, ORTHOLOG_FILE, HGNC_FILE) if not (genes_dir / f).is_file()]
    if missing:
        logger.error("missing %s under %s; pass --shared PATH", ", ".join(missing), genes_dir)
        return 2
    gencode = pd.read_csv(genes_dir / GENCODE_FILE, header=None, dtype=str, keep_default_na=False)
    orthologs = pd.read_csv(
        genes_dir / ORTHOLOG_FILE, header=None, dtype=str, keep_default_na=False
    )
    hgnc = pd.read_csv(genes_dir / HGNC_FILE, dtype=str, keep_default_na=False, index_col=0)

    ensembl = build_ensembl_to_symbol(gencode, hgnc)
    datasets = [p for folder in DATASET_FOLDERS for p in (args.shared / "data" / folder).glob("*.h5ad")]

    args.out.mkdir(parents=True, exist_ok=True)
    tables = {
        "ensembl_to_symbol.tsv.gz": (("ensembl_id", "symbol"), ensembl),
        "earlier_names.tsv.gz": (
            ("ensembl_id", "earlier_symbol"),
            build_earlier_names(dataset_gene_names(datasets), ensembl),
        ),
        "mouse_to_human.tsv.gz": (
            ("mouse_symbol", "human_symbol"),
            build_mouse_to_human(orthologs),
        ),
        "human_aliases.tsv.gz": (
            ("alias", "approved_symbol"),
            build_human_aliases(hgnc, gencode.iloc[:, 1]),
        ),
    }
    for name, (header, table) in tables.items():
        size = write_table(args.out / name, header, table)
        logger.info("%s: %d rows, %d bytes", name, len(table), size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
