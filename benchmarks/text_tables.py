"""Reading count tables as GEO ships them: our reader against the recipes users reach for.

zheng2017's cells (all of them, stacked `--copies` times under new names for the larger sizes)
are written as the two common layouts: genes x cells, comma-separated and gzip-compressed, the
header without its corner cell (R's `write.csv`), and cells x genes, tab-separated, with a corner
cell (pandas' `to_csv`). Each file is then read, in a fresh process each, by:

- ours: `ica.read_cells(path)` (core_model/text_matrix.py: orientation found from the names,
  parsed in blocks into a sparse float32 matrix);
- pandas: `pd.read_csv(path, sep=..., index_col=0)`, transposed when genes are rows, into
  `AnnData(scipy.sparse.csr_matrix(frame.to_numpy(np.float32)))`, the usual hand-written recipe;
- scanpy: `sc.read_csv` / `sc.read_text` (anndata's text reader), transposed when genes are rows,
  as scanpy's documentation suggests; skipped above `--scanpy-max-values` values (it parses in
  Python, minutes per size).

Reported: wall seconds and peak resident memory (the child's ru_maxrss) of each, their ratios to
ours, and whether each gave the same cells x genes matrix and names as ours (checked on a digest:
shape, names, non-zeros and the sum of values).

    python benchmarks/text_tables.py [--out-dir benchmarks/results] [--copies 1 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from instructcell_agent.core_model.datasets import load_catalog
from instructcell_agent.core_model.io import read_h5ad
from report_io import run_meta, write_report

SOURCE = "zheng2017_pbmc_sorted"
LAYOUTS = {"genes_x_cells.csv.gz": (True, ","), "cells_x_genes.tsv": (False, "\t")}

# Each reader runs as `python -c CHILD path genes_in_rows sep reader` and prints one JSON line.
CHILD = r"""
import hashlib, json, resource, sys, time
import numpy as np, scipy.sparse as sp
path, genes_in_rows, sep, reader = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]
started = time.perf_counter()
if reader == "ours":
    import instructcell_agent as ica
    adata = ica.read_cells(path)
elif reader == "pandas":
    import anndata as ad, pandas as pd
    frame = pd.read_csv(path, sep=sep, index_col=0)
    frame = frame.T if genes_in_rows else frame
    adata = ad.AnnData(sp.csr_matrix(frame.to_numpy(np.float32)), obs=pd.DataFrame(index=frame.index.astype(str)),
                       var=pd.DataFrame(index=frame.columns.astype(str)))
else:
    import scanpy as sc
    adata = sc.read_csv(path, delimiter=sep) if sep == "," else sc.read_text(path, delimiter=sep)
    adata = adata.T if genes_in_rows else adata
seconds = time.perf_counter() - started
X = sp.csr_matrix(adata.X)
names = hashlib.sha256("\n".join(list(adata.obs_names) + ["|"] + list(adata.var_names)).encode()).hexdigest()
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "digest": [list(X.shape), int(X.nnz), float(X.sum(dtype=np.float64)), names]}))
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--stem", default="text_tables")
    p.add_argument("--copies", type=int, nargs="+", default=[1, 3], help="stacked copies of zheng2017's cells")
    p.add_argument("--scanpy-max-values", type=float, default=7e7)
    return p.parse_args(argv)


def write_table(dense: np.ndarray, cells: list[str], genes: list[str], path: Path, genes_in_rows: bool,
                sep: str) -> None:
    """The layout as R or pandas writes it (integer counts printed as integers)."""
    rows, columns, values = (genes, cells, dense.T) if genes_in_rows else (cells, genes, dense)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", compresslevel=1) if path.suffix == ".gz" else opener(path, "w") as fh:
        fh.write(sep.join(([] if genes_in_rows else ["cell"]) + columns) + "\n")
        for name, row in zip(rows, values):
            fh.write(name + sep + sep.join(map(str, row.astype(np.int64).tolist())) + "\n")


def read_in_child(path: Path, genes_in_rows: bool, sep: str, reader: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), "1" if genes_in_rows else "0", sep, reader],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = next(s for s in load_catalog() if s.name == SOURCE)
    source = read_h5ad(spec.path)
    base = sp.csr_matrix(source.X).toarray()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for copies in args.copies:
            dense = np.vstack([base] * copies)
            cells = [f"{c}_{k}" for k in range(copies) for c in source.obs_names]
            genes = list(source.var_names)
            for name, (genes_in_rows, sep) in LAYOUTS.items():
                path = Path(tmp) / f"x{copies}_{name}"
                write_table(dense, cells, genes, path, genes_in_rows, sep)
                row = {"layout": name, "n_cells": len(cells), "n_genes": len(genes),
                       "file_mb": path.stat().st_size / 2**20}
                readers = ["ours", "pandas"] + (["scanpy"] if dense.size <= args.scanpy_max_values else [])
                for reader in readers:
                    row[reader] = read_in_child(path, genes_in_rows, sep, reader)
                    print(name, len(cells), reader, row[reader]["seconds"], row[reader]["peak_mb"], flush=True)
                path.unlink()
                rows.append(row)
    report = {**run_meta(shlex.join(["python", "benchmarks/text_tables.py", *map(str, argv or sys.argv[1:])])),
              "source": SOURCE, "rows": rows}
    out = write_report(report, render(report), args.out_dir, args.stem)
    print(f"wrote {out}")
    return 0


def render(report: dict[str, Any]) -> str:
    lines = ["# Reading count tables", "", f"- command: `{report['command']}`", f"- date: {report['date']}",
             f"- machine: {report['nproc']} CPU cores, load average at start {report['loadavg']}",
             f"- cells: {report['source']}'s (all splits; stacked copies under new names for the larger sizes)",
             "- each reader in a fresh process; peak memory is the process's maximum resident set",
             "", "| layout | cells x genes | file MB | ours s / peak MB | pandas s / peak MB (x ours) | "
             "scanpy s / peak MB (x ours) | same matrix as ours |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["rows"]:
        ours = row["ours"]

        def peer(name: str) -> str:
            if name not in row:
                return "-"
            got = row[name]
            return (f"{got['seconds']:.1f} / {got['peak_mb']:,.0f} ({got['seconds'] / ours['seconds']:.2f}x / "
                    f"{got['peak_mb'] / ours['peak_mb']:.2f}x)")

        same = ", ".join(f"{n} {'yes' if row[n]['digest'] == ours['digest'] else 'NO'}" for n in ("pandas", "scanpy")
                         if n in row)
        lines.append(f"| {row['layout']} | {row['n_cells']:,} x {row['n_genes']:,} | {row['file_mb']:.0f} | "
                     f"{ours['seconds']:.1f} / {ours['peak_mb']:,.0f} | {peer('pandas')} | {peer('scanpy')} | {same} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
