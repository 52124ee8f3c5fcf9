"""The command line's cells: --data and its options, and the commands that only read cells
(`make-split`, `convert`, `marker-check`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

COMMANDS = ("make-split", "convert", "marker-check")
# What core_model/readers.py reads, written out here so that --help imports no data stack.
DATA_HELP = ("the cells: an AnnData .h5ad file or .zarr store, Cell Ranger's filtered_feature_bc_matrix "
             "(.h5 file, or matrix.mtx.gz or its folder; GEO's GSM..._matrix.mtx.gz too), or a count table, "
             "genes x cells or cells x genes (.csv, .tsv or .txt, optionally .gz), or a .loom or .h5Seurat file")


def add_data_arguments(p: argparse.ArgumentParser, several: bool = False) -> None:
    """--data (with `several`, one or more samples, and a metadata table to join), and --genome
    for a matrix counted against several species' genomes."""
    if several:
        p.add_argument("--data", required=True, nargs="+", metavar="DATA",
                       help=DATA_HELP + "; several samples are read as one, obs['sample'] naming each cell's "
                                        "(from its folder or file name), over the genes they share")
        p.add_argument("--obs-table", default=None, metavar="TABLE",
                       help="per-cell metadata to join onto the cells by name (.csv, .tsv or .txt, optionally .gz; "
                            "first column the cell names), e.g. GEO's metadata or Cell Ranger's clusters.csv; its "
                            "columns can then be named by --groupby and --compare-key")
    else:
        p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--genome", default=None,
                   help="for a matrix counted against several genomes (barnyard, xenograft): the one to read, e.g. "
                        "GRCh38; its genes, and the cells with most of their counts on them")


CANDIDATES_HELP = ("candidate labels, separated by commas, or by semicolons where names hold commas (Cell Ontology "
                   "names such as 'CD4-positive, alpha-beta T cell'), or a text file of one name per line")


def parse_candidates(text: str | None) -> list[str] | None:
    """`--candidates` as given: a file of one name per line (blank lines and '#' comments skipped),
    else names separated by ';' when the text holds one (Cell Ontology names hold commas), else by ','."""
    if not text:
        return None
    path = Path(text)
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not names:
            raise ValueError(f"--candidates {text} names a file with no candidate in it (one name per line)")
        return names
    return [name.strip() for name in text.split(";" if ";" in text else ",") if name.strip()]


def with_tissue_types(candidates: list[str] | None, tissue: str | None) -> list[str] | None:
    """`--candidates` with `--tissue-types`' known types of the tissue added (printed, so the
    user sees what was asked and can edit it into --candidates)."""
    if not tissue:
        return candidates
    from .interpret.tissue_types import tissue_cell_types

    types = tissue_cell_types(tissue, besides=candidates or ())
    print(f"candidates of {tissue!r} ({len(types)} known types): {', '.join(types)}")
    return [*(candidates or []), *types]


def add_matrix_arguments(p: argparse.ArgumentParser) -> None:
    """Which matrix and gene names of --data to read (the API's use_raw, layer and gene_key)."""
    p.add_argument("--use-raw", action="store_true", help="read adata.raw instead of adata.X")
    p.add_argument("--layer", default=None, help="read this layer instead of adata.X (e.g. counts)")
    p.add_argument("--gene-key", default=None,
                   help="var column holding the gene names (default: var_names; beside Ensembl ids a symbol "
                        "column such as gene_symbols or feature_name is found by itself)")


def inputs(args: argparse.Namespace) -> list[str]:
    """The --data paths, one or several."""
    return list(args.data) if isinstance(args.data, list) else [args.data]


def read_data(args: argparse.Namespace):
    """The cells of --data: one file, or several samples read as one (core_model/samples.py),
    with the columns of --obs-table where given."""
    from .core_model.readers import read_cells
    from .core_model.samples import read_samples

    paths = inputs(args)
    cells = read_cells(paths[0], genome=args.genome) if len(paths) == 1 else read_samples(paths, genome=args.genome)
    if getattr(args, "obs_table", None):
        from .core_model.obs_table import join_note, join_obs_table

        cells = join_obs_table(cells, args.obs_table)
        print(join_note(cells))
    return cells


def add_commands(sub: Any) -> None:
    p = sub.add_parser("make-split", help="stratified train/valid/test split of a labelled .h5ad, for training on "
                                          "your own set (train --catalog)")
    add_data_arguments(p)
    p.add_argument("--label-key", required=True, help="obs column of labels to stratify by")
    p.add_argument("--out", required=True, help="split JSON to write ({train, valid, test}: lists of obs_names)")
    p.add_argument("--valid", type=float, default=0.1, help="share of each label's cells for valid (default 0.1)")
    p.add_argument("--test", type=float, default=0.1, help="share of each label's cells for test (default 0.1)")
    p.add_argument("--seed", type=int, default=42, help="seed of the draw (default 42, as the shared splits)")

    p = sub.add_parser("convert", help="write cells as the commands read them (any --data format, several samples, "
                                       "--obs-table) to one .h5ad: for scanpy, make-split and train --catalog")
    add_data_arguments(p, several=True)
    p.add_argument("--out", required=True, help="the .h5ad to write (a new file)")

    p = sub.add_parser("marker-check", help="how well each label's known markers single out the cells given it "
                                            "(asks no model): annotate's answers, or any labels a file has")
    add_data_arguments(p, several=True)
    p.add_argument("--label-key", default="instructcell_label",
                   help="obs column of labels to check (default: annotate's instructcell_label)")
    p.add_argument("--marker-db", default="panglaodb", choices=["panglaodb", "cellmarker2"])
    p.add_argument("--checkpoint", default=None, help="whose gene list to read the file on (default: the shipped one)")
    add_matrix_arguments(p)
    p.add_argument("--out", default=None, help="also write the cells (a new .h5ad) with each one's score for its "
                                               "label in obs 'instructcell_marker_score' and the table in uns")
    p.add_argument("--table", default=None, help="also write the per-label table (.csv or .tsv)")


def handles(args: argparse.Namespace) -> bool:
    return args.command in COMMANDS


def run(args: argparse.Namespace) -> int:
    return {"make-split": _make_split, "convert": _convert, "marker-check": _marker_check}[args.command](args)


def table_separator(args: argparse.Namespace) -> str:
    """The column separator of --table, from its suffix; a table that would replace the input or
    --out is refused."""
    seps = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
    suffix = check_new_file(args.table, tuple(seps), "--table", args)
    return seps[suffix]


def check_new_file(name: str, suffixes: str | tuple[str, ...], option: str,
                   args: argparse.Namespace) -> str:
    """Refuse an output file of another type, or one that would replace the input or another
    output; returns its suffix."""
    from .core_model.errors import InputFileError

    path = Path(name).expanduser()
    suffixes = (suffixes,) if isinstance(suffixes, str) else suffixes
    if path.suffix.lower() not in suffixes:
        raise InputFileError(f"{option} {name}: name a {' or '.join(s for s in suffixes if s != '.txt')} file")
    others = (*((data, "the input") for data in inputs(args)), (args.out, "--out"), (args.table, "--table"),
              (getattr(args, "plot", None), "--plot"))
    for other, what in others:
        if other and what != option and path.resolve() == Path(other).expanduser().resolve():
            raise InputFileError(f"{option} {name} is {what}; name a new file")
    return path.suffix.lower()


def _check_out(args: argparse.Namespace, suffix: str, required: bool) -> None:
    """--out is a new `suffix` file (`required`: refused under another suffix), never an input."""
    from .core_model.errors import InputFileError

    out = Path(args.out).expanduser()
    if required and out.suffix.lower() != suffix:
        raise InputFileError(f"--out {args.out}: name a {suffix} file")
    if any(out.resolve() == Path(p).expanduser().resolve() for p in inputs(args)):
        raise InputFileError(f"--out {args.out} is the input file; name a new {suffix} file")


def _make_split(args: argparse.Namespace) -> int:
    from .agreement import known_labels
    from .core_model.io import write_json_atomic
    from .core_model.splits import stratified_split

    _check_out(args, ".json", required=False)
    adata = read_data(args)
    split, report = stratified_split(adata.obs_names, known_labels(adata, args.label_key, "to split by"),
                                     valid=args.valid, test=args.test, seed=args.seed)
    write_json_atomic(split, args.out)
    print(json.dumps({"out": str(args.out), **report}))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .core_model.io import write_h5ad_atomic

    _check_out(args, ".h5ad", required=True)
    adata = read_data(args)
    write_h5ad_atomic(adata, args.out, protect=inputs(args))
    columns = ", ".join(map(str, adata.obs.columns[:12])) or "none"
    print(f"wrote {args.out}: {adata.n_obs:,} cells x {adata.n_vars:,} genes; obs columns: {columns}")
    return 0


def _marker_check(args: argparse.Namespace) -> int:
    from .core_model.io import write_h5ad_atomic, write_text_atomic
    from .interpret.marker_check import marker_check

    if args.out:  # both refused before any reading
        check_new_file(args.out, ".h5ad", "--out", args)
    sep = table_separator(args) if args.table else None
    adata = read_data(args)
    check = marker_check(adata, args.label_key, model=args.checkpoint, marker_db=args.marker_db, layer=args.layer,
                         use_raw=args.use_raw, gene_key=args.gene_key)
    if args.out:
        write_h5ad_atomic(check.to_adata(adata), args.out, protect=inputs(args))
    if sep is not None:
        write_text_atomic(check.table.to_csv(sep=sep, index=False), args.table)
    print(check.summary())
    written = [p for p in (args.out, args.table) if p]
    if written:
        print("wrote " + ", ".join(written))
    return 0
