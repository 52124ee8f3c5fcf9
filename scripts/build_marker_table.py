"""Build the marker table that ``instructcell_agent.interpret.markers`` ships.

`explain` checks each label's top genes against known markers. The marker databases live in the
shared folder, which a pip-installed package does not have; so the genes of the cell types our
table ``interpret/marker_map.json`` maps labels onto are kept in a small table the package ships:
``interpret/known_markers.tsv.gz``, columns database, cell_type, species, symbol (upper-case),
one row per gene. Species is ``human``, ``mouse`` or ``any`` (a PanglaoDB row tagged neither).
PanglaoDB's genes are kept for all its 178 cell types (across organs), since
``interpret/marker_annotation.py`` answers with any of them; CellMarker 2.0's 1,880 types, many
of them long noisy lists, for the mapped types only.

Sources (read from ``<shared>/data/markers``; only cell type, species and gene symbol are kept):

* PanglaoDB, 27 Mar 2020 release (``PanglaoDB_markers_27_Mar_2020.tsv``), rows tagged ``Hs``
  and/or ``Mm``;
* CellMarker 2.0, human table (``CellMarker2_Human_Aug.csv``, aggregated per tissue and cell type)
  and mouse table (``Cell_marker_Mouse.csv.gz``, one row per marker and study; rows of normal
  cells only, not cancer cells). Both name cell types alike ('B cell', 'Alpha cell (α cell)').

Beside it, ``interpret/marker_organs.json``: the organ PanglaoDB files each of its cell types
under ('Kupffer cells': 'Liver'), which ``interpret/tissue_types.py`` reads to offer a tissue's
known types as candidates.

Usage::

    python scripts/build_marker_table.py [--shared PATH] [--out FILE] [--organs-out FILE]

Run it again after adding a database cell type to ``marker_map.json``. The output is
byte-for-byte deterministic (sorted rows, gzip mtime 0); a test rebuilds it from the shared
folder, where there is one, and compares.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_gene_tables import REPO_ROOT, default_shared, write_rows  # noqa: E402

from instructcell_agent.interpret.markers import DATABASES  # noqa: E402  (the releases it is built from)

logger = logging.getLogger("build_marker_table")

MARKER_MAP = REPO_ROOT / "interpret" / "marker_map.json"
DEFAULT_OUT = REPO_ROOT / "interpret" / "known_markers.tsv.gz"
DEFAULT_ORGANS_OUT = REPO_ROOT / "interpret" / "marker_organs.json"
HEADER = ("database", "cell_type", "species", "symbol")
Rows = set[tuple[str, str, str]]  # (cell_type, species, symbol)
WHOLE = ("panglaodb",)  # databases shipped with every cell type, not just the mapped ones


def panglaodb_rows(path: Path) -> Rows:
    """(cell type, species, symbol) of every PanglaoDB row; a row tagged "Mm Hs" holds for both."""
    rows: Rows = set()
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            symbol = (row.get("official gene symbol") or "").strip().upper()
            cell_type = (row.get("cell type") or "").strip()
            if not symbol or not cell_type:
                continue
            tags = (row.get("species") or "").split()
            # rows tagged with neither species ("None") are kept for any species
            for species in [{"Hs": "human", "Mm": "mouse"}[t] for t in tags if t in ("Hs", "Mm")] or ["any"]:
                rows.add((cell_type, species, symbol))
    return rows


def panglaodb_organs(path: Path) -> dict[str, str]:
    """PanglaoDB's organ of each cell type, sorted by cell type (a type filed under no organ,
    'NA', is left out)."""
    organs: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            cell_type, organ = (row.get("cell type") or "").strip(), (row.get("organ") or "").strip()
            if cell_type and organ and organ != "NA":
                organs.setdefault(cell_type, organ)
    return dict(sorted(organs.items()))


def write_organs(path: Path, organs: dict[str, str]) -> int:
    """Write the organ table as JSON (deterministic: sorted keys, one entry per line); returns its size."""
    text = json.dumps({"panglaodb": organs}, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")
    return len(text.encode("utf-8"))


def cellmarker2_rows(path: Path) -> Rows:
    """(cell type, "human", symbol) of every row of CellMarker 2.0's aggregated human table; its
    Gene field lists several symbols, comma-separated."""
    rows: Rows = set()
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            cell_type = (row.get("CT") or "").strip()
            for gene in (row.get("Gene") or "").split(","):
                if cell_type and gene.strip():
                    rows.add((cell_type, "human", gene.strip().upper()))
    return rows


def cellmarker2_mouse_rows(path: Path) -> Rows:
    """(cell type, "mouse", symbol) of CellMarker 2.0's full mouse table, normal cells only (a
    cancer study's markers of its tumour cells are not those of the cell type); the official
    symbol where the row has one, else the marker as the study wrote it."""
    rows: Rows = set()
    with gzip.open(path, "rt", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if (row.get("cell_type") or "").strip() != "Normal cell":
                continue
            cell_type = (row.get("cell_name") or "").strip()
            symbol = ((row.get("Symbol") or "").strip() or (row.get("marker") or "").strip()).upper()
            if cell_type and symbol:
                rows.add((cell_type, "mouse", symbol))
    return rows


# one reader per source file (DATABASES names a database's files)
READERS = {"PanglaoDB_markers_27_Mar_2020.tsv": panglaodb_rows, "CellMarker2_Human_Aug.csv": cellmarker2_rows,
           "Cell_marker_Mouse.csv.gz": cellmarker2_mouse_rows}


def mapped_types(marker_map: dict) -> dict[str, set[str]]:
    """Per database, the cell types our label table names."""
    return {db: {t for types in section.values() for t in types}
            for db, section in marker_map.items() if not db.startswith("_")}


def table_rows(sources: dict[str, Rows], wanted: dict[str, set[str]]) -> list[tuple[str, str, str, str]]:
    """The shipped rows, sorted: every gene of the wanted cell types of each database.

    Raises
    ------
    ValueError
        When a wanted cell type is not in its database (a typo in marker_map.json).
    """
    out = []
    for db in sorted(wanted):
        missing = sorted(wanted[db] - {ct for ct, _, _ in sources[db]})
        if missing:
            raise ValueError(f"marker_map.json names cell types {missing} that {db} does not have")
        out += [(db, ct, sp, g) for ct, sp, g in sources[db] if ct in wanted[db]]
    return sorted(out)


def read_sources(markers_dir: Path, names: Iterable[str]) -> dict[str, Rows]:
    """Per database, the rows of all its files."""
    return {name: set().union(*(READERS[f](markers_dir / f) for f in DATABASES[name])) for name in names}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=default_shared(), help="the shared folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output file")
    parser.add_argument("--organs-out", type=Path, default=DEFAULT_ORGANS_OUT, help="the organ table's output file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    markers_dir = args.shared / "data" / "markers"
    missing = [f for files in DATABASES.values() for f in files if not (markers_dir / f).is_file()]
    if missing:
        logger.error("missing %s under %s; pass --shared PATH", ", ".join(missing), markers_dir)
        return 2
    wanted = mapped_types(json.loads(MARKER_MAP.read_text(encoding="utf-8")))
    sources = read_sources(markers_dir, wanted)
    for db in WHOLE:
        wanted[db] |= {cell_type for cell_type, _, _ in sources[db]}
    rows = table_rows(sources, wanted)
    size = write_rows(args.out, HEADER, rows)
    logger.info("%s: %d rows (%s), %d bytes", args.out.name, len(rows),
                ", ".join(f"{db} {len(types)} cell types" for db, types in sorted(wanted.items())), size)
    organs = panglaodb_organs(markers_dir / DATABASES["panglaodb"][0])
    size = write_organs(args.organs_out, organs)
    logger.info("%s: %d cell types in %d organs, %d bytes", args.organs_out.name, len(organs),
                len(set(organs.values())), size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
