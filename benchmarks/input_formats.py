"""The same cells in every format `read_cells` takes: does each give the .h5ad's answers?

zheng2017's test cells (the canonical split) are written, in a temporary folder, as each input
format users bring: AnnData (.h5ad, the reference; .zarr), Cell Ranger's .h5 and matrix folder,
GEO's per-sample Matrix Market files (accession prefix, a two-column genes file), kallisto|
bustools' cells_x_genes.mtx, count tables (genes x cells .csv.gz as R writes them; cells x genes
.tsv as pandas writes them), a loom file, an h5Seurat file (written to SeuratDisk's specification
by the test suite's writer), an .h5ad whose gene names join Ensembl id and symbol,
and two Cell Ranger .h5 samples read together. Each is read with `ica.read_cells` (the samples
with `ica.read_samples`), timed, and annotated with the shipped model and zheng2017's labels as
candidates; the answers are compared cell by cell with the .h5ad's.

    python benchmarks/input_formats.py [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import gzip
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

import instructcell_agent as ica
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.io import get_labels, read_h5ad
from report_io import run_meta, write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import write_cellranger, write_h5seurat, write_loom  # noqa: E402 - the test suite's writers

SOURCE = "zheng2017_pbmc_sorted"


def _write_lines(path: Path, lines) -> None:
    with gzip.open(path, "wt") if path.suffix == ".gz" else path.open("w") as fh:
        fh.writelines(f"{line}\n" for line in lines)


def _geo_mtx(cells: ad.AnnData, folder: Path) -> Path:
    """GSM-prefixed Matrix Market files with the authors' own two-column genes file."""
    folder.mkdir()
    with gzip.open(folder / "GSM0_pbmc_matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.coo_matrix(cells.X.T).astype(np.int64))
    _write_lines(folder / "GSM0_pbmc_genes.tsv.gz", (f"{i}\t{s}" for i, s in zip(cells.var["gene_ids"],
                                                                                  cells.var_names)))
    _write_lines(folder / "GSM0_pbmc_barcodes.tsv.gz", cells.obs_names)
    return folder / "GSM0_pbmc_matrix.mtx.gz"


def _kallisto(cells: ad.AnnData, folder: Path) -> Path:
    folder.mkdir()
    scipy.io.mmwrite(folder / "cells_x_genes.mtx", sp.coo_matrix(cells.X).astype(np.int64))
    _write_lines(folder / "cells_x_genes.genes.txt", cells.var["gene_ids"])
    _write_lines(folder / "cells_x_genes.genes.names.txt", cells.var_names)
    _write_lines(folder / "cells_x_genes.barcodes.txt", cells.obs_names)
    return folder


def _table(cells: ad.AnnData, path: Path, genes_in_rows: bool) -> Path:
    frame = pd.DataFrame(cells.X.toarray().astype(np.int64), index=cells.obs_names, columns=cells.var_names)
    if genes_in_rows:
        frame.T.to_csv(path, index_label=False)  # R's write.csv: no corner cell
    else:
        frame.to_csv(path, sep="\t", index_label="cell")
    return path


def _joined_names(cells: ad.AnnData, path: Path) -> Path:
    joined = cells.copy()
    joined.var_names = [f"{i}_{s}" for i, s in zip(cells.var["gene_ids"], cells.var_names)]
    joined.var = joined.var.drop(columns=["gene_ids"])
    joined.write_h5ad(path)
    return path


def _samples(cells: ad.AnnData, folder: Path) -> list[Path]:
    paths = []
    for name, part in (("donorA", cells[:200]), ("donorB", cells[200:])):
        (folder / name / "outs").mkdir(parents=True)
        paths.append(folder / name / "outs" / "filtered_feature_bc_matrix.h5")
        write_cellranger(part, paths[-1], "h5")
    return paths


def formats(cells: ad.AnnData, tmp: Path) -> dict[str, Callable[[], Any]]:
    """Format name -> a function writing the cells and returning what `read_cells` is given."""
    def zarr() -> Path:
        cells.write_zarr(tmp / "cells.zarr")
        return tmp / "cells.zarr"

    def cellranger(layout: str, name: str) -> Callable[[], Path]:
        def write() -> Path:
            write_cellranger(cells, tmp / name, layout)
            return tmp / name
        return write

    return {
        "h5ad": lambda: (cells.write_h5ad(tmp / "cells.h5ad"), tmp / "cells.h5ad")[1],
        "zarr": zarr,
        "Cell Ranger .h5": cellranger("h5", "filtered_feature_bc_matrix.h5"),
        "Cell Ranger matrix folder": cellranger("mtx", "filtered_feature_bc_matrix"),
        "GEO Matrix Market (GSM prefix, 2-column genes)": lambda: _geo_mtx(cells, tmp / "geo"),
        "kallisto|bustools cells_x_genes.mtx": lambda: _kallisto(cells, tmp / "kb"),
        "genes x cells .csv.gz (R)": lambda: _table(cells, tmp / "counts.csv.gz", True),
        "cells x genes .tsv (pandas)": lambda: _table(cells, tmp / "counts.tsv", False),
        "loom": lambda: (write_loom(cells, tmp / "cells.loom"), tmp / "cells.loom")[1],
        "h5Seurat (to SeuratDisk's specification)": lambda: (write_h5seurat(cells, tmp / "cells.h5Seurat"),
                                                             tmp / "cells.h5Seurat")[1],
        "h5ad, names 'ENSG..._SYMBOL'": lambda: _joined_names(cells, tmp / "joined.h5ad"),
        "two Cell Ranger .h5 samples": lambda: _samples(cells, tmp / "samples"),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--stem", default="input_formats")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = next(s for s in load_catalog() if s.name == SOURCE)
    cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)["test"], "test").copy()
    cells.X = sp.csr_matrix(cells.X, dtype=np.float32)
    cells.var["gene_ids"] = cells.var["ensembl"].astype(str)
    cells.var = cells.var[["gene_ids"]]
    cells.obs = cells.obs[[spec.label_key]].rename(columns={spec.label_key: "cell_type"})  # loom writes it
    labels = sorted(set(get_labels(cells, "cell_type")))
    model = ica.load_model()
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for name, write in formats(cells, Path(tmp)).items():
            target = write()
            started = time.perf_counter()
            read = ica.read_samples(target) if isinstance(target, list) else ica.read_cells(target)
            read_s = time.perf_counter() - started
            result = ica.annotate(read, model=model, candidates=labels)
            answers = pd.Series(np.asarray(result.labels), index=[_barcode(n, read) for n in read.obs_names])
            reference = answers if reference is None else reference
            same = int((answers.reindex(reference.index) == reference).sum())
            alignment = result.provenance["alignment"]
            rows.append({"format": name, "n_cells": int(read.n_obs), "genes_matched": int(alignment["n_matched"]),
                         "read_s": read_s, "same_answers": same, "of": int(len(reference))})
            print(rows[-1], flush=True)
    report = {**run_meta(shlex.join(["python", "benchmarks/input_formats.py", *map(str, argv or sys.argv[1:])])),
              "source": SOURCE, "rows": rows}
    out = write_report(report, render(report), args.out_dir, args.stem)
    print(f"wrote {out}")
    return 0


def _barcode(name: str, read: ad.AnnData) -> str:
    """A cell's own name, without the '-<sample>' that reading several samples adds."""
    if "samples" not in read.uns:
        return name
    sample = str(read.obs.loc[name, read.uns["samples"]["key"]])
    return name.removesuffix(f"-{sample}")


def render(report: dict[str, Any]) -> str:
    lines = ["# The same cells in every input format", "", f"- command: `{report['command']}`",
             f"- date: {report['date']}", f"- machine: {report['nproc']} CPU cores, load average at start "
             f"{report['loadavg']}", f"- cells: {report['source']}'s test split; answers: `ica.annotate` with the "
             "shipped checkpoint and the set's labels as candidates, compared cell by cell with the .h5ad's", "",
             "| format | cells | genes matched | read s | same answers as the .h5ad |",
             "| --- | --- | --- | --- | --- |"]
    for row in report["rows"]:
        name = row["format"].replace("|", "\\|")  # a pipe inside a cell would end it
        lines.append(f"| {name} | {row['n_cells']:,} | {row['genes_matched']:,} | {row['read_s']:.2f} | "
                     f"{row['same_answers']:,} of {row['of']:,} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
