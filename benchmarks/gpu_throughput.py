"""GPU throughput of the shipped checkpoint, beside the same machine's CPU measured in the same run.

On every shared annotation and drug-response test split it times, on a CUDA device:

* the Python API as a user calls it (`ica.annotate(test, candidates=labels)`, or
  `predict_drug_response`), end to end, in float32 and bfloat16, at a batch of 64 (the API's CPU
  default; it now takes 256 on a GPU, after gpu_batch_sweep.py) and at `--big-batch`;
* the evaluation protocol (`core_model.evaluation.evaluate`, own valid phrasings, seed 0: each
  cell its own phrasing and option order), whose accuracy must equal the CPU float32 accuracy in
  benchmarks/results/annotation.json (a check that the GPU answers are the same answers);
* the peer: the same API call on the first `--cpu-cells` test cells on this machine's CPU
  (float32, all cores), against the GPU on the very same cells, and the share of equal answers;
* conditional generation (`ica.generate_cells`) of `--gen-cells` cells, GPU against CPU;
* gene saliency (`ica.explain`, gradient x input) of `--explain-cells` zheng2017 test cells, GPU
  against CPU, with the overlap of each label's top 10 genes;
* where the time goes: one API call on 128 zheng2017 cells under the torch profiler, float32 and
  bfloat16 (the largest operators by GPU time, and the operator count).

`--prepare-subset DIR` writes, on a machine that has the shared data, a small copy of it for a GPU
machine that has not: each annotation/drug set's test cells plus one training cell of each label
the test split lacks (so every set's label set, and hence each evaluation, is unchanged).

Run::

    python benchmarks/gpu_throughput.py --prepare-subset /tmp/shared_test   # here
    INSTRUCTCELL_SHARED=/tmp/shared_test python benchmarks/gpu_throughput.py --out-dir benchmarks/results
    python benchmarks/gpu_throughput.py --device cpu --max-test-cells 8 --out-dir /tmp/smoke  # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # report_io.py sits beside this script

import numpy as np  # noqa: E402

from instructcell_agent.core_model.datasets import TASK_OF_CATALOG  # noqa: E402
from report_io import run_meta, write_report  # noqa: E402

logger = logging.getLogger("gpu_throughput")
REFERENCE = Path(__file__).resolve().parent / "results" / "annotation.json"
TASK_CODE = {task: code for code, task in TASK_OF_CATALOG.items()}  # "annotation" -> "cta"


def prepare_subset(out: Path) -> None:
    """A copy of the shared catalog whose .h5ad files hold only what the test splits need."""
    import shutil

    from instructcell_agent.core_model.datasets import load_catalog, read_split, shared_root
    from instructcell_agent.core_model.io import get_labels, read_h5ad

    root = shared_root()
    (out / "data" / "splits").mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "data" / "catalog.json", out / "data" / "catalog.json")
    for spec in load_catalog(root):
        adata = read_h5ad(spec.path)
        split = read_split(spec.split_path)
        labels = get_labels(adata, spec.label_key)
        keep = set(split["test"])
        in_test = set(labels[adata.obs_names.isin(list(keep))])
        for label in sorted(set(labels) - in_test):  # one train cell keeps the label in the set
            keep.add(str(adata.obs_names[np.flatnonzero(labels == label)[0]]))
        target = out / "data" / spec.path.relative_to(root / "data")
        target.parent.mkdir(parents=True, exist_ok=True)
        adata[adata.obs_names.isin(list(keep))].copy().write_h5ad(target, compression="gzip")
        shutil.copy(spec.split_path, out / "data" / "splits" / spec.split_path.name)
        logger.info("%s: %d of %d cells kept", spec.name, len(keep), adata.n_obs)


def timed_api(loaded, spec, adata, labels: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds for one end-to-end API call, and its answers."""
    import torch

    import instructcell_agent as ica

    fields = {"species": spec.species, "tissue": spec.tissue, "sequencing_method": spec.sequencing_method,
              "batch_size": batch_size}
    if loaded.model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    if spec.task == "drug_response":
        result = ica.predict_drug_response(adata, drug=spec.drug, model=loaded, candidates=labels, **fields)
    else:
        result = ica.annotate(adata, model=loaded, candidates=labels, **fields)
    return time.perf_counter() - start, np.asarray(result.labels, dtype=str)


def dataset_rows(specs, device: str, precision: str, big_batch: int, max_cells: int | None,
                 checkpoint: Path) -> dict[str, Any]:
    """API (two batch sizes) and evaluate-protocol timings on `device` for every set."""
    from instructcell_agent.core_model.checkpoint import load_checkpoint
    from instructcell_agent.core_model.datasets import read_split, subset_by_names
    from instructcell_agent.core_model.evaluation import evaluate
    from instructcell_agent.core_model.io import get_labels, read_h5ad

    start = time.perf_counter()
    loaded = load_checkpoint(checkpoint, device, precision)
    load_seconds = time.perf_counter() - start
    rows: dict[str, Any] = {}
    for i, spec in enumerate(specs):
        full = read_h5ad(spec.path)
        labels = sorted(set(get_labels(full, spec.label_key)))
        names = read_split(spec.split_path)["test"][:max_cells]
        test = subset_by_names(full, names, "test").copy()
        truth = get_labels(test, spec.label_key)
        if i == 0:  # kernels, allocator and prompt memo warm once, outside every clock
            timed_api(loaded, spec, test[:16].copy(), labels, 16)
        seconds, answers = timed_api(loaded, spec, test, labels, 64)
        big_seconds, big_answers = timed_api(loaded, spec, test, labels, big_batch)
        split_path = spec.split_path
        if max_cells is not None:  # evaluate reads a split file, so a cut split is a file too
            split_path = Path(f"/tmp/gpu_throughput_{spec.name}_split.json")
            split_path.write_text(json.dumps({"test": names}))
        result = evaluate(loaded, spec.path, split_path, TASK_CODE[spec.task], spec.label_key, seed=0)
        rows[spec.name] = {
            "n_cells": int(test.n_obs), "api_seconds": seconds, "api_cells_per_second": test.n_obs / seconds,
            "api_accuracy": float(np.mean(answers == truth)), "answers": answers.tolist(),
            f"api_batch{big_batch}_cells_per_second": test.n_obs / big_seconds,
            f"api_batch{big_batch}_same_answers": float(np.mean(answers == big_answers)),
            "evaluate_cells_per_second": result["cells_per_second"], "evaluate_accuracy": result["accuracy"],
            "evaluate_macro_f1": result["macro_f1"], "evaluate_invalid_rate": result["invalid_rate"],
        }
        logger.info("%s %s %s: API %.1f cells/s, evaluate %.1f cells/s, accuracy %.4f", device, precision,
                    spec.name, rows[spec.name]["api_cells_per_second"], result["cells_per_second"],
                    result["accuracy"])
    del loaded
    return {"load_seconds": load_seconds, "sets": rows}


def cpu_peer(specs, device: str, n_cells: int, checkpoint: Path) -> dict[str, Any]:
    """The API on the first `n_cells` test cells of each set: CPU float32 against `device` float32."""
    from instructcell_agent.core_model.checkpoint import load_checkpoint
    from instructcell_agent.core_model.datasets import read_split, subset_by_names
    from instructcell_agent.core_model.io import get_labels, read_h5ad

    models = {where: load_checkpoint(checkpoint, where, "float32") for where in ("cpu", device)}
    rows = {}
    for i, spec in enumerate(specs):
        full = read_h5ad(spec.path)
        labels = sorted(set(get_labels(full, spec.label_key)))
        test = subset_by_names(full, read_split(spec.split_path)["test"][:n_cells], "test").copy()
        row: dict[str, Any] = {"n_cells": int(test.n_obs)}
        answers = {}
        for where, loaded in models.items():
            if i == 0:
                timed_api(loaded, spec, test[:16].copy(), labels, 16)
            seconds, answers[where] = timed_api(loaded, spec, test, labels, 64)
            row[f"{where}_cells_per_second"] = test.n_obs / seconds
        row["ratio"] = row[f"{device}_cells_per_second"] / row["cpu_cells_per_second"]
        row["same_answers"] = float(np.mean(answers["cpu"] == answers[device]))
        rows[spec.name] = row
        logger.info("peer %s: cpu %.1f, %s %.1f cells/s", spec.name, row["cpu_cells_per_second"], device,
                    row[f"{device}_cells_per_second"])
    return rows


def generation_peer(device: str, n: int, checkpoint: Path) -> dict[str, Any]:
    """`ica.generate_cells` of n cells for one learned condition, CPU against `device`."""
    import instructcell_agent as ica
    from instructcell_agent.core_model.checkpoint import load_checkpoint

    out = {"n_cells": n, "condition": {"cell_type": "CD19+ B", "species": "human", "tissue": "peripheral blood"}}
    for where in ("cpu", device):
        loaded = load_checkpoint(checkpoint, where, "float32")
        ica.generate_cells(loaded, n=16, seed=1, **out["condition"])  # warm
        start = time.perf_counter()
        cells = ica.generate_cells(loaded, n=n, seed=0, **out["condition"])
        out[f"{where}_cells_per_second"] = n / (time.perf_counter() - start)
        out[f"{where}_mean_total_counts"] = float(np.asarray(cells.X.sum(axis=1)).mean())
    out["ratio"] = out[f"{device}_cells_per_second"] / out["cpu_cells_per_second"]
    return out


def explain_peer(spec, device: str, n_cells: int, checkpoint: Path) -> dict[str, Any]:
    """Gradient x input saliency of the first `n_cells` test cells, CPU against `device` (float32)."""
    import instructcell_agent as ica
    from instructcell_agent.core_model.checkpoint import load_checkpoint
    from instructcell_agent.core_model.datasets import read_split, subset_by_names
    from instructcell_agent.core_model.io import read_h5ad

    test = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)["test"][:n_cells], "test").copy()
    out: dict[str, Any] = {"dataset": spec.name, "n_cells": int(test.n_obs)}
    tops = {}
    for where in ("cpu", device):
        loaded = load_checkpoint(checkpoint, where, "float32")
        kwargs = {"labels": spec.label_key, "dataset": spec.name, "compare_wilcoxon": False}
        ica.explain(test[:4].copy(), loaded, **kwargs)  # warm
        start = time.perf_counter()
        result = ica.explain(test, loaded, **kwargs)
        out[f"{where}_cells_per_second"] = test.n_obs / (time.perf_counter() - start)
        tops[where] = {label: set(result.means.loc[label].nlargest(10).index) for label in result.labels}
    out["ratio"] = out[f"{device}_cells_per_second"] / out["cpu_cells_per_second"]
    out["top10_overlap"] = float(np.mean([len(tops["cpu"][l] & tops[device][l]) / 10 for l in tops["cpu"]]))
    return out


def profile_api(spec, device: str, n_cells: int, checkpoint: Path) -> dict[str, Any]:
    """One API call under the torch profiler per precision: the top operators by device time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from instructcell_agent.core_model.checkpoint import load_checkpoint
    from instructcell_agent.core_model.datasets import read_split, subset_by_names
    from instructcell_agent.core_model.io import get_labels, read_h5ad

    full = read_h5ad(spec.path)
    labels = sorted(set(get_labels(full, spec.label_key)))
    test = subset_by_names(full, read_split(spec.split_path)["test"][:n_cells], "test").copy()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    out = {}
    for precision in ("float32", "bfloat16"):
        loaded = load_checkpoint(checkpoint, device, precision)
        timed_api(loaded, spec, test, labels, 64)  # warm, so the profile shows steady state
        with profile(activities=activities) as prof:
            seconds, _ = timed_api(loaded, spec, test, labels, 64)
        events = prof.key_averages()
        key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
        top = sorted(events, key=lambda e: getattr(e, key, 0), reverse=True)[:8]
        out[precision] = {
            "seconds": seconds, "n_operator_calls": int(sum(e.count for e in events)),
            # GPU busy time: kernels only. An operator's self device time is its kernels' time
            # again, so summing every event counts each kernel twice (the 2026-12-04 report did).
            "device_ms": float(sum(getattr(e, key, 0) for e in events if e.device_type == DeviceType.CUDA)) / 1e3,
            "top": [{"op": e.key, "calls": int(e.count), "device_ms": getattr(e, key, 0) / 1e3,
                     "cpu_ms": e.self_cpu_time_total / 1e3} for e in top],
        }
    return out


def reference_accuracy() -> dict[str, float]:
    """CPU float32 own-phrasing accuracy per set from the annotation benchmark's last full run."""
    if not REFERENCE.is_file():
        return {}
    report = json.loads(REFERENCE.read_text())
    return {row["name"]: row["ours"]["own"]["accuracy"] for row in report["datasets"] if "ours" in row}


def markdown(report: dict[str, Any]) -> str:
    meta, device = report["meta"], report["device"]
    big = report["big_batch"]
    lines = [
        "# GPU throughput of the shipped checkpoint", "",
        f"`{meta['command']}` on {meta['date']}: {device} (torch {meta['torch']}), peer: the same machine's CPU "
        f"({meta['nproc']} cores, {meta['torch_threads']} torch threads). Cells per second, end to end; "
        "`evaluate` = the evaluation protocol (own phrasings, each cell its own prompt and option order); "
        "'same as CPU' = `evaluate` accuracy equal to the CPU float32 accuracy in annotation.json.", "",
        f"| set | cells | API fp32 | API fp32 batch {big} | API bf16 | API bf16 batch {big} | evaluate fp32 | "
        "evaluate bf16 | accuracy fp32 (same as CPU) | accuracy bf16 | bf16 same answers (API) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fp32, bf16, ref = report["float32"]["sets"], report["bfloat16"]["sets"], report["cpu_reference_accuracy"]
    for name, a in fp32.items():
        b = bf16[name]
        same = "n/a" if name not in ref else ("yes" if abs(ref[name] - a["evaluate_accuracy"]) < 1e-9
                                              else f"no (CPU {ref[name]:.4f})")
        agree = float(np.mean(np.asarray(a["answers"]) == np.asarray(b["answers"])))
        lines.append(
            f"| {name} | {a['n_cells']} | {a['api_cells_per_second']:.0f} "
            f"| {a[f'api_batch{big}_cells_per_second']:.0f} "
            f"| {b['api_cells_per_second']:.0f} | {b[f'api_batch{big}_cells_per_second']:.0f} "
            f"| {a['evaluate_cells_per_second']:.0f} | {b['evaluate_cells_per_second']:.0f} "
            f"| {a['evaluate_accuracy']:.4f} ({same}) | {b['evaluate_accuracy']:.4f} | {agree:.3f} |")
    lines += ["", f"## Peer: the API on the first {report['cpu_cells']} test cells, CPU float32 against {device} "
              "float32 (batch 64)", "", "| set | cells | CPU | GPU | GPU / CPU | same answers |",
              "|---|---|---|---|---|---|"]
    dev = report["device_key"]
    for name, row in report["peer"].items():
        lines.append(f"| {name} | {row['n_cells']} | {row['cpu_cells_per_second']:.1f} | "
                     f"{row[f'{dev}_cells_per_second']:.1f} | {row['ratio']:.1f}x | {row['same_answers']:.3f} |")
    gen = report["generation"]
    lines += ["", "## Generation", "",
              f"`ica.generate_cells(n={gen['n_cells']}, cell_type='CD19+ B', species='human', tissue='peripheral "
              f"blood')`: CPU {gen['cpu_cells_per_second']:.0f} cells/s, GPU {gen[f'{dev}_cells_per_second']:.0f} "
              f"cells/s ({gen['ratio']:.1f}x); mean counts per cell {gen['cpu_mean_total_counts']:.0f} (CPU), "
              f"{gen[f'{dev}_mean_total_counts']:.0f} (GPU).", "",
              f"`precision=\"auto\"` on this device resolves to {report['auto_precision']}.", "",
              f"Checkpoint loads: float32 {report['float32']['load_seconds']:.1f} s, bfloat16 "
              f"{report['bfloat16']['load_seconds']:.1f} s (after the one-time backbone conversion).", ""]
    exp = report["explain"]
    lines += ["## Gene saliency", "",
              f"`ica.explain` (gradient x input, float32) of {exp['n_cells']} {exp['dataset']} test cells: CPU "
              f"{exp['cpu_cells_per_second']:.1f} cells/s, GPU {exp[f'{dev}_cells_per_second']:.1f} cells/s "
              f"({exp['ratio']:.1f}x); each label's top 10 genes overlap {exp['top10_overlap']:.2f} between them.", "",
              f"## Where the time goes: one API call on {report['profile_cells']} cells under the torch profiler", ""]
    for precision, prof in report["profile"].items():
        lines += [f"{precision}: {prof['seconds']:.2f} s wall, {prof['device_ms']:.0f} ms of GPU kernel time, "
                  f"{prof['n_operator_calls']} operator calls.", "", "| operator | calls | device ms | CPU ms (self) |",
                  "|---|---|---|---|"]
        lines += [f"| `{t['op'][:60]}` | {t['calls']} | {t['device_ms']:.1f} | {t['cpu_ms']:.1f} |"
                  for t in prof["top"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the shipped checkpoint")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--big-batch", type=int, default=512)
    parser.add_argument("--cpu-cells", type=int, default=128)
    parser.add_argument("--gen-cells", type=int, default=5000)
    parser.add_argument("--explain-cells", type=int, default=64)
    parser.add_argument("--profile-cells", type=int, default=128)
    parser.add_argument("--max-test-cells", type=int, default=None, help="smoke runs only")
    parser.add_argument("--prepare-subset", default=None, metavar="DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.prepare_subset:
        prepare_subset(Path(args.prepare_subset))
        return 0
    import torch

    import instructcell_agent as ica
    from instructcell_agent.core_model.datasets import load_catalog
    from instructcell_agent.core_model.precision import resolve_precision

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; this benchmark needs a GPU (or --device cpu for a smoke run)")
    checkpoint = Path(args.checkpoint) if args.checkpoint else ica.default_checkpoint_path()
    specs = load_catalog()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    report: dict[str, Any] = {
        "meta": {**run_meta(shlex.join(["python", "benchmarks/gpu_throughput.py", *sys.argv[1:]])),
                 "torch": torch.__version__},
        "device": device_name, "device_key": args.device, "big_batch": args.big_batch, "cpu_cells": args.cpu_cells,
        "cpu_reference_accuracy": {} if args.max_test_cells else reference_accuracy(),
        "auto_precision": str(resolve_precision("auto", args.device)).removeprefix("torch."),
    }
    for precision in ("float32", "bfloat16"):
        report[precision] = dataset_rows(specs, args.device, precision, args.big_batch, args.max_test_cells, checkpoint)
    report["peer"] = cpu_peer(specs, args.device, args.cpu_cells, checkpoint)
    report["generation"] = generation_peer(args.device, args.gen_cells, checkpoint)
    zheng = next(spec for spec in specs if spec.name == "zheng2017_pbmc_sorted")
    report["explain"] = explain_peer(zheng, args.device, args.explain_cells, checkpoint)
    report["profile_cells"] = args.profile_cells
    report["profile"] = profile_api(zheng, args.device, args.profile_cells, checkpoint)
    path = write_report(report, markdown(report), Path(args.out_dir), "gpu_throughput")
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
