"""What the map of the answers costs beside the answers themselves, and whether cluster reports
read like the labels.

For each shared annotation set's test cells, in one process and in this order: `ica.annotate`
with the set's labels as candidates (the peer: the work the map is drawn for), then
`result.draw_map` (a UMAP computed from the file's genes unless the file has its own; the first
call pays numba's compilation, reported apart), then `result.composition` by the true labels,
whose per-label answer shares say how a cluster report would read on clusters that were exactly
the cell types. Larger files: zheng2017's cells stacked with resampled counts (`--stack`), map
only, since annotating them is the benchmark of `annotation_benchmark.py`.

    python benchmarks/map_cost.py [--out-dir benchmarks/results] [--stack 5 13]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import anndata as ad
import numpy as np
import scipy.sparse as sp

import instructcell_agent as ica
from instructcell_agent.cell_map import cell_map
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.io import get_labels, read_h5ad
from report_io import run_meta, write_report

STACKED = "zheng2017_pbmc_sorted"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--stem", default="map_cost")
    p.add_argument("--stack", type=int, nargs="*", default=[5, 13], help="copies of zheng2017 to time the map on")
    return p.parse_args(argv)


def measure_set(spec, model, folder: Path) -> dict[str, Any]:
    cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)["test"], "test").copy()
    truth = get_labels(cells, spec.label_key)
    labels = sorted(set(truth))
    started = time.perf_counter()
    result = ica.annotate(cells, model=model, candidates=labels)
    annotate_s = time.perf_counter() - started
    started = time.perf_counter()
    drawn = result.draw_map(cells, folder / f"{spec.name}.png")
    map_s = time.perf_counter() - started
    table = result.composition(truth, "truth").table
    return {"dataset": spec.name, "n_cells": cells.n_obs, "annotate_s": annotate_s, "map_s": map_s,
            "map_source": "file" if not drawn.computed else "computed",
            "groups": len(table), "min_share": float(table["share"].min()),
            "median_share": float(table["share"].median()),
            "groups_answered_as_themselves": int((table["answer"] == table.index).sum())}


def stacked(copies: int) -> ad.AnnData:
    """zheng2017's cells `copies` times over, counts resampled (Poisson), so no two are equal."""
    spec = next(s for s in load_catalog() if s.name == STACKED)
    base = read_h5ad(spec.path)
    X = sp.vstack([sp.csr_matrix(base.X)] * copies).tocsr().astype(np.float32)
    X.data = np.random.default_rng(copies).poisson(X.data).astype(np.float32)
    out = ad.AnnData(X)
    out.var_names = base.var_names
    out.obs_names = [f"cell{i}" for i in range(X.shape[0])]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    given = shlex.join(argv if argv is not None else sys.argv[1:])
    command = f"python benchmarks/map_cost.py {given}".strip()
    model = ica.load_model(precision="float32")
    specs = [s for s in load_catalog(tasks=("annotation",)) if s.name in model.label_sets and s.split_path]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cell_map(subset_by_names(read_h5ad(specs[0].path), read_split(specs[0].split_path)["test"], "test").copy())
        first_use_s = time.perf_counter() - started  # numba compiles UMAP's functions once per process
        rows = [measure_set(spec, model, Path(tmp)) for spec in specs]
    big = []
    for copies in args.stack:
        cells = stacked(copies)
        started = time.perf_counter()
        cell_map(cells)
        big.append({"copies": copies, "n_cells": cells.n_obs, "map_s": time.perf_counter() - started})
    report = {"meta": run_meta(command), "first_use_s": first_use_s, "sets": rows, "stacked": big}
    lines = ["# The map's cost beside the answers\n", f"- command: `{command}`",
             f"- date: {report['meta']['date']}, {report['meta']['nproc']} CPU cores, load average at start "
             f"{report['meta']['loadavg']}, torch threads {report['meta']['torch_threads']}",
             "- ours: `ica.annotate(test cells, candidates=the set's labels)`, LM in float32; then "
             "`result.draw_map` (UMAP from the file's genes unless the file has its own); the first map of the "
             f"process, which compiles numba's functions, took {first_use_s:.1f} s and is not in the table",
             "- composition: `result.composition(true labels)`: each true label's most frequent answer and its "
             "share, i.e. how a cluster report reads on clusters that are exactly the cell types\n",
             "| dataset | cells | annotate (s) | map (s) | map / annotate | map drawn on | labels | labels answered "
             "as themselves | median share | lowest share |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['n_cells']} | {r['annotate_s']:.1f} | {r['map_s']:.2f} | "
                     f"{r['map_s'] / r['annotate_s']:.3f} | {r['map_source']} | {r['groups']} | "
                     f"{r['groups_answered_as_themselves']} | {r['median_share']:.2f} | {r['min_share']:.2f} |")
    lines += ["", "Larger files (zheng2017 stacked, counts resampled; map only):", "",
              "| cells | map (s) |", "|---|---|"]
    lines += [f"| {b['n_cells']:,} | {b['map_s']:.1f} |" for b in big]
    path = write_report(report, "\n".join(lines) + "\n", args.out_dir, args.stem)
    print(path.read_text())


if __name__ == "__main__":
    main()
