"""MCP server latency: `annotate_cells` over stdio and streamable HTTP, 1 and 4 concurrent clients,
against calling the Python API directly in the same run.

For each size (default 100 and 2,000 cells, the first cells of --data) it measures:

* direct: `read_h5ad` + `ica.annotate` in this process (what a Python user would run), and
  direct+write: the same plus writing the annotated .h5ad and the labels CSV (what the server
  also does for every call);
* the server, started as a subprocess (`python -m instructcell_agent.server.cli`), over each
  transport with C concurrent clients (each its own MCP session) calling `annotate_cells` on the
  same file; latency is per call, as seen by the client.

The overhead ratio is server p50 (1 client) / direct p50. With several clients the single model
worker serves calls one at a time, so latency grows with the queue; throughput is reported too.

    python benchmarks/server_benchmark.py                       # shipped checkpoint, shared PBMC set
    python benchmarks/server_benchmark.py --checkpoint DIR --data FILE.h5ad --repeats 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import anyio
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = "data/cta/zheng2017_pbmc_sorted.h5ad"
TOKEN = "benchmark-token"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped checkpoint")
    p.add_argument("--data", type=Path, default=None,
                   help=f"an .h5ad (default: ${{INSTRUCTCELL_SHARED:-../shared}}/{SHARED_DATA})")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 2000])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("--transports", nargs="+", choices=("stdio", "http"), default=["stdio", "http"])
    p.add_argument("--repeats", type=int, default=5, help="rounds per setting (each client calls once a round)")
    p.add_argument("--candidates", nargs="*", default=None,
                   help="candidate labels (default: the model's free answer, as ica.annotate does)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/server", help="writes OUT.md and OUT.json")
    p.add_argument("--note", default="", help="a sentence recorded with the results (e.g. why a tiny checkpoint)")
    return p.parse_args(argv)


def default_data() -> Path:
    path = Path(os.environ.get("INSTRUCTCELL_SHARED", ROOT.parent / "shared")) / SHARED_DATA
    if not path.exists():
        raise SystemExit(f"{path} not found; pass --data FILE.h5ad")
    return path


def prepare(data: Path, sizes: list[int], root: Path) -> dict[int, Path]:
    """The first `size` cells of `data` as their own files in the data root."""
    backed = ad.read_h5ad(data, backed="r")
    files = {}
    for size in sizes:
        if size > backed.n_obs:
            raise SystemExit(f"--data has {backed.n_obs} cells, fewer than size {size}")
        path = root / f"cells_{size}.h5ad"
        backed[:size].to_memory().write_h5ad(path)
        files[size] = path
    backed.file.close()
    return files


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {"n": len(values), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "mean": float(arr.mean())}


# ------------------------------------------------------------------ direct API


def measure_direct(model, files: dict[int, Path], repeats: int, candidates, out: Path) -> dict:
    import instructcell_agent as ica
    from instructcell_agent.core_model.io import read_h5ad, write_h5ad_atomic

    results = {}
    for size, path in files.items():
        plain, written = [], []
        ica.annotate(read_h5ad(path), model=model, candidates=candidates)  # warm-up (caches, first-call costs)
        for _ in range(repeats):
            t0 = time.perf_counter()
            adata = read_h5ad(path)
            result = ica.annotate(adata, model=model, candidates=candidates)
            t1 = time.perf_counter()
            write_h5ad_atomic(result.to_adata(adata), out / f"direct_{size}.h5ad")
            result.to_frame().to_csv(out / f"direct_{size}.csv")
            t2 = time.perf_counter()
            plain.append(t1 - t0)
            written.append(t2 - t0)
        results[size] = {"direct": percentiles(plain), "direct+write": percentiles(written)}
        print(f"direct {size}: p50 {results[size]['direct']['p50']:.3f} s", file=sys.stderr, flush=True)
    return results


# ------------------------------------------------------------------ server


def server_command(args, root: Path, out: Path, transport: str, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "instructcell_agent.server.cli", "--transport", transport, "--data-root", str(root),
           "--output-dir", str(out), "--device", args.device, "--log-level", "WARNING",
           "--async-threshold", str(10 ** 9), "--max-cells", str(10 ** 7)]
    cmd += ["--checkpoint", str(args.checkpoint)] if args.checkpoint else []
    return cmd + (["--port", str(port)] if transport == "http" else [])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(transport: str, cmd: list[str], env: dict, port: int):
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from instructcell_agent.mcp_langchain import http_transport

    if transport == "stdio":
        params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=env)
        return Client(stdio_client(params, errlog=open(os.devnull, "w")))
    return Client(http_transport(f"http://127.0.0.1:{port}/mcp", TOKEN))


async def call_once(client, path: Path, candidates) -> float:
    # plot=False: the map (a UMAP of the file) is work the direct peer does not do
    arguments = {"h5ad_path": str(path), "plot": False, **({"candidates": candidates} if candidates else {})}
    t0 = time.perf_counter()
    result = await client.call_tool("annotate_cells", arguments, read_timeout_seconds=3600)
    elapsed = time.perf_counter() - t0
    if result.is_error or result.structured_content["status"] != "completed":
        raise RuntimeError(f"annotate_cells did not complete: {result.content[0].text[:500]}")
    return elapsed


async def measure_transport(transport: str, args, files, root: Path, out: Path) -> dict:
    """One server process per transport; each client holds its own session for the whole run.

    For stdio every client is its own server process (stdio has one client per process), so
    for stdio with C clients, C servers compete for the CPU; for HTTP, C sessions share one server.
    """
    port = free_port()
    cmd = server_command(args, root, out, transport, port)
    env = {**os.environ, "INSTRUCTCELL_MCP_TOKEN": TOKEN}
    proc = None
    if transport == "http":
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(port, proc)
    results: dict = {}
    try:
        for n_clients in args.clients:
            clients = [connect(transport, cmd, env, port) for _ in range(n_clients)]
            async with _entered(clients):
                for size, path in files.items():
                    for client in clients:  # warm-up: loads the model in each server, first-call costs
                        await call_once(client, path, args.candidates)
                    latencies, started = [], time.perf_counter()
                    for _ in range(args.repeats):
                        async def one(client):
                            latencies.append(await call_once(client, path, args.candidates))

                        async with anyio.create_task_group() as tg:
                            for client in clients:
                                tg.start_soon(one, client)
                    wall = time.perf_counter() - started
                    stats = percentiles(latencies)
                    stats["calls_per_s"] = len(latencies) / wall
                    results.setdefault(size, {})[n_clients] = stats
                    print(f"{transport} {size} cells x{n_clients}: p50 {stats['p50']:.3f} s p95 {stats['p95']:.3f} s",
                          file=sys.stderr, flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    return results


class _entered:
    """Enter several MCP clients together (an AsyncExitStack over a list)."""

    def __init__(self, clients):
        self.clients = clients

    async def __aenter__(self):
        from contextlib import AsyncExitStack

        self.stack = AsyncExitStack()
        for c in self.clients:
            await self.stack.enter_async_context(c)
        return self.clients

    async def __aexit__(self, *exc):
        return await self.stack.__aexit__(*exc)


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError("HTTP server did not start")


# ------------------------------------------------------------------ report


def write_report(args, argv, direct, served, files, started) -> None:
    import torch

    import instructcell_agent as ica

    ckpt = args.checkpoint or ica.default_checkpoint_path()
    rows, ratios = [], {}
    for size in files:
        d, dw = direct[size]["direct"], direct[size]["direct+write"]
        rows.append(f"| direct API (read + annotate) | - | {size:,} | 1 | {d['p50']:.3f} | {d['p95']:.3f} | - | 1.00 |")
        rows.append(f"| direct API + write h5ad/CSV | - | {size:,} | 1 | {dw['p50']:.3f} | {dw['p95']:.3f} | - | "
                    f"{dw['p50'] / d['p50']:.2f} |")
        for transport, by_size in served.items():
            for n_clients, s in by_size[size].items():
                ratio = s["p50"] / d["p50"]
                if n_clients == 1:
                    ratios[f"{transport}@{size}"] = ratio
                rows.append(f"| MCP annotate_cells | {transport} | {size:,} | {n_clients} | {s['p50']:.3f} | "
                            f"{s['p95']:.3f} | {s['calls_per_s']:.2f} | {ratio:.2f} |")
    big = max(files)
    verdict = ", ".join(f"{k}: {v:.2f}x" for k, v in ratios.items() if k.endswith(f"@{big}"))
    md = [
        "# MCP server benchmark: annotate_cells latency", "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['python', 'benchmarks/server_benchmark.py', *argv])}`", "",
        f"Run {started:%Y-%m-%d %H:%M} UTC on {platform.machine()} with {os.cpu_count()} CPUs "
        f"(torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}); device {args.device}.", "",
        f"Checkpoint: `{ckpt}`. Data: first cells of `{args.data}`. Candidates: "
        f"{args.candidates or 'none (free answers)'}. {args.repeats} rounds per setting after one warm-up call.", "",
        *( [f"Note: {args.note}", ""] if args.note else []),
        "| what | transport | cells | clients | p50 s | p95 s | calls/s | p50 / direct p50 |",
        "|---|---|---:|---:|---:|---:|---:|---:|", *rows, "",
        f"Server overhead at {big:,} cells, 1 client (target under 1.2x): {verdict}.", "",
        "Reading the table: the server also writes the annotated .h5ad and a CSV for every call and runs the "
        "model in chunks of 256 cells; 'direct API + write' shows what the writing alone costs. The machine is "
        "shared with other jobs: a ratio below 1.0 means the difference is within the run-to-run variation."
        + (" With several clients the calls queue for the single model worker (HTTP: one server, several "
           "sessions) or compete for the CPU (stdio: one server process per client), so per-call latency grows "
           "while calls/s shows the throughput." if max(args.clients) > 1 else ""),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text("\n".join(md) + "\n")
    payload = {"command": ["python", "benchmarks/server_benchmark.py", *argv], "started_utc": started.isoformat(),
               "checkpoint": str(ckpt), "data": str(args.data), "sizes": list(files), "repeats": args.repeats,
               "candidates": args.candidates, "device": args.device, "note": args.note,
               "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "direct": {str(k): v for k, v in direct.items()},
               "server": {t: {str(s): {str(c): v for c, v in by_c.items()} for s, by_c in by_s.items()}
                          for t, by_s in served.items()},
               "ratio_p50_1client": ratios}
    Path(f"{args.out}.json").write_text(json.dumps(payload, indent=1))
    print("\n".join(md))


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    args.data = args.data or default_data()
    import instructcell_agent as ica

    with tempfile.TemporaryDirectory(prefix="server-bench-") as tmp:
        root, out = Path(tmp) / "data", Path(tmp) / "out"
        root.mkdir()
        out.mkdir()
        files = prepare(args.data, sorted(args.sizes), root)
        model = ica.load_model(args.checkpoint, device=args.device)
        direct = measure_direct(model, files, args.repeats, args.candidates, out)
        served = {t: anyio.run(measure_transport, t, args, files, root, out) for t in args.transports}
    write_report(args, argv, direct, served, files, started)


if __name__ == "__main__":
    main()
