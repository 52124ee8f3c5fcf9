"""Batch size and attention backend on a GPU, for the sets with the most test cells.

* `ica.annotate(test, candidates=labels, batch_size=B)` in float32 for B = 64 ... 1024: cells per
  second and peak GPU memory (what a GPU default batch size should be);
* `evaluate` (own phrasings: each cell its own prompt, so many input shapes) in float32, and in
  bfloat16 with PyTorch's cuDNN attention backend off, then on. Only bfloat16 runs through cuDNN
  attention, which builds a plan for every new input shape: the suspected reason bfloat16 ran
  slower than float32 in gpu_throughput.md while its profiled device time was half.

Run (on a GPU machine; shared data as for gpu_throughput.py)::

    python benchmarks/gpu_batch_sweep.py --out-dir benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_throughput import TASK_CODE, timed_api  # noqa: E402
from report_io import run_meta, write_report  # noqa: E402

SETS = ("zheng2017_pbmc_sorted", "pbmc3k_seurat", "kang2018_pbmc_ifnb")
BATCHES = (64, 128, 256, 512, 1024)


def sweep(spec, checkpoint: Path, device: str, max_cells: int | None) -> dict[str, Any]:
    import torch

    from instructcell_agent.core_model.checkpoint import load_checkpoint
    from instructcell_agent.core_model.datasets import read_split, subset_by_names
    from instructcell_agent.core_model.evaluation import evaluate
    from instructcell_agent.core_model.io import get_labels, read_h5ad

    full = read_h5ad(spec.path)
    labels = sorted(set(get_labels(full, spec.label_key)))
    names = read_split(spec.split_path)["test"][:max_cells]
    test = subset_by_names(full, names, "test").copy()
    split_path = spec.split_path
    if max_cells is not None:  # smoke runs: evaluate reads the cut split from a file
        split_path = Path(f"/tmp/gpu_batch_sweep_{spec.name}_split.json")
        split_path.write_text(json.dumps({"test": names}))
    cuda = device.startswith("cuda")
    loaded = load_checkpoint(checkpoint, device, "float32")
    timed_api(loaded, spec, test[:16].copy(), labels, 16)  # warm
    row: dict[str, Any] = {"n_cells": int(test.n_obs), "api": {}}
    for batch in BATCHES:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds, _ = timed_api(loaded, spec, test, labels, batch)
        row["api"][batch] = {"cells_per_second": test.n_obs / seconds,
                             "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")}

    def run_evaluate(model) -> float:
        return evaluate(model, spec.path, split_path, TASK_CODE[spec.task], spec.label_key,
                        seed=0)["cells_per_second"]

    row["evaluate_float32"] = run_evaluate(loaded)
    half = load_checkpoint(checkpoint, device, "bfloat16")
    torch.backends.cuda.enable_cudnn_sdp(False)
    row["evaluate_bfloat16_cudnn_off"] = run_evaluate(half)
    torch.backends.cuda.enable_cudnn_sdp(True)
    row["evaluate_bfloat16_cudnn_on"] = run_evaluate(half)
    return row


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = ["# GPU batch size and attention backend", "",
             f"`{meta['command']}` on {meta['date']}: {report['device']} (torch {meta['torch']}). Cells per second "
             "through `ica.annotate(test, candidates=labels, batch_size=B)` in float32 (peak GPU memory in "
             "GiB), and through `evaluate` (own phrasings, a prompt per cell).", "",
             "| set | cells | " + " | ".join(f"API B={b}" for b in BATCHES)
             + " | evaluate fp32 | evaluate bf16, cuDNN attention off | evaluate bf16, cuDNN attention on |",
             "|---|---|" + "---|" * (len(BATCHES) + 3)]
    for name, row in report["sets"].items():
        api = " | ".join(f"{row['api'][b]['cells_per_second']:.0f} ({row['api'][b]['peak_gib']:.1f})" for b in BATCHES)
        lines.append(f"| {name} | {row['n_cells']} | {api} | {row['evaluate_float32']:.0f} | "
                     f"{row['evaluate_bfloat16_cudnn_off']:.0f} | {row['evaluate_bfloat16_cudnn_on']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the shipped checkpoint")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-test-cells", type=int, default=None, help="smoke runs only")
    args = parser.parse_args(argv)
    import torch

    import instructcell_agent as ica
    from instructcell_agent.core_model.datasets import load_catalog

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; this benchmark needs a GPU (or --device cpu for a smoke run)")
    checkpoint = Path(args.checkpoint) if args.checkpoint else ica.default_checkpoint_path()
    specs = {spec.name: spec for spec in load_catalog()}
    report: dict[str, Any] = {
        "meta": {**run_meta(shlex.join(["python", "benchmarks/gpu_batch_sweep.py", *sys.argv[1:]])),
                 "torch": torch.__version__},
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU",
        "sets": {name: sweep(specs[name], checkpoint, args.device, args.max_test_cells) for name in SETS},
    }
    print(write_report(report, markdown(report), Path(args.out_dir), "gpu_batch_sweep").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
