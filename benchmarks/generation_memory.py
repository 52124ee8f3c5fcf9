"""Memory and time of generating many cells: batches made sparse as drawn, against one dense matrix.

`generate_cells` draws its cells in batches of 512 and makes each sparse as it is drawn
(`sample_counts(..., sparse=True)`); the peer is the path it replaced: every batch's int64 counts
stacked into one dense matrix, converted to float32 CSR at the end (`sample_counts(...)` then
`to_anndata`). Each variant runs in its own process (the shipped checkpoint, one kang2018
condition, seed 0), so each peak resident memory is its own; reported is the peak over the
process's peak after loading the model and drawing one cell. The two must give the same counts.

    python benchmarks/generation_memory.py [--n 5000 20000] [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from report_io import run_meta, write_report

REQUEST = {"cell_type": "CD14+Mono", "condition": "IFN-beta stimulated", "species": "human",
           "tissue": "peripheral blood"}

CHILD = r"""
import json, resource, sys, time, tracemalloc, warnings
import instructcell_agent as ica
from instructcell_agent.core_model.generation.conditions import compose_instruction
from instructcell_agent.core_model.generation.generator import load_generator
from instructcell_agent.core_model.generation.sampling import (default_template, resolve_request, sample_counts,
                                                               to_anndata)

variant, n, request = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
warnings.simplefilter("ignore")
model = ica.load_model()
ica.generate_cells(model=model, n=1, seed=0, **request)
loaded_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
tracemalloc.start()  # numpy's allocations are traced, torch's are not (the decoder's are per batch)
started = time.perf_counter()
if variant == "sparse":
    X = ica.generate_cells(model=model, n=n, seed=0, **request).X
else:  # the replaced path: one dense int64 matrix, made sparse at the end
    gen = load_generator(model)
    res = resolve_request(gen, request["cell_type"], request["species"], request["tissue"], request["condition"],
                          None, False)
    text = compose_instruction(default_template(res.condition), res.condition)
    counts, _ = sample_counts(model, gen, [text] * n, 0)
    X = to_anndata(counts, model.vocab, [res.condition] * n, [text] * n, False, {}).X
seconds = time.perf_counter() - started
traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "traced_peak_mb": traced_peak, "peak_over_loaded_mb": peak - loaded_peak,
                  "loaded_peak_mb": loaded_peak,
                  "nnz": int(X.nnz), "sum": float(X.sum()), "checksum": float(X.multiply(X).sum())}))
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[5000, 20000])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def run_variant(variant: str, n: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CHILD, variant, str(n), json.dumps(REQUEST)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    meta = run_meta(shlex.join(["python", *sys.argv]))
    rows = []
    for n in args.n:
        dense, sparse = run_variant("dense", n), run_variant("sparse", n)
        rows.append({"n": n, "dense": dense, "sparse": sparse,
                     "same_counts": all(dense[k] == sparse[k] for k in ("nnz", "sum", "checksum"))})
        print(rows[-1], flush=True)
    report = {**meta, "request": REQUEST, "rows": rows}
    lines = ["# Generating many cells: memory and time", "", f"- command: `{meta['command']}`",
             f"- date: {meta['date']}", f"- machine: {meta['nproc']} CPU cores, load average at start {meta['loadavg']}",
             f"- request: {REQUEST}, seed 0, the shipped checkpoint; each variant in its own process; peak resident "
             "memory over the process's peak after loading the model and drawing one cell (0: the call never went above what "
             "loading took), and the peak of the memory Python and numpy allocated during the call (tracemalloc)", "",
             "| cells | dense then sparse: s / traced peak (MB) / resident peak over loaded (MB) | sparse as drawn "
             "(generate_cells): s / traced peak / resident peak over loaded | traced peak ratio | time ratio | "
             "same counts |", "|---|---|---|---|---|---|"]
    for r in rows:
        d, s = r["dense"], r["sparse"]
        lines.append(f"| {r['n']:,} | {d['seconds']:.1f} / {d['traced_peak_mb']:,.0f} / {d['peak_over_loaded_mb']:,.0f} | "
                     f"{s['seconds']:.1f} / {s['traced_peak_mb']:,.0f} / {s['peak_over_loaded_mb']:,.0f} | "
                     f"{d['traced_peak_mb'] / s['traced_peak_mb']:.1f}x | {d['seconds'] / s['seconds']:.2f}x | "
                     f"{'yes' if r['same_counts'] else 'NO'} |")
    print(write_report(report, "\n".join(lines) + "\n", args.out_dir, "generation_memory"))


if __name__ == "__main__":
    main()
