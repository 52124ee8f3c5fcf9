"""Candidate scoring speed: the prefix-sharing trie and the bfloat16 LM against their peers.

Every test cell of each set is answered with one fixed instruction listing the set's labels
(the throughput setting of `annotation_benchmark.py`), in four configurations timed in turn on
the same cells in the same run:

- float32, each candidate's tokens on their own (the packed layout before the trie; the peer)
- float32, candidates as a token trie (shared starts run once)
- bfloat16, each candidate on its own
- bfloat16, trie (what `--precision auto` runs on a CPU with bfloat16 units)

Reported: cells per second, the ratio to the float32 / no-sharing peer, the LM tokens run per cell
for the candidates, and the share of cells whose top answer equals the peer's. Each
configuration is timed `--repeats` times and the fastest pass is kept (timings on a shared
machine vary run to run; the best pass is the least disturbed).

    python benchmarks/scoring_speed.py [--datasets zheng2017_pbmc_sorted,kang2018_pbmc_ifnb] [--repeats 2]
    python benchmarks/scoring_speed.py --device cuda      # GPU throughput, when a GPU is lent

Writes ``scoring_speed.md`` and ``scoring_speed.json`` to ``--out-dir`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from instructcell_agent import default_checkpoint_path
from instructcell_agent.core_model.checkpoint import LoadedModel, load_checkpoint
from instructcell_agent.core_model.corpus import dense_rows, load_split
from instructcell_agent.core_model.datasets import load_catalog
from instructcell_agent.core_model.instructions import has_choices, load_bank, render
from report_io import run_meta, write_report

logger = logging.getLogger("scoring_speed")
DEFAULT_SETS = "zheng2017_pbmc_sorted,bastidasponce2019_pancreas_e155,kang2018_pbmc_ifnb,aissa2021_pc9_erlotinib"
BANK = {"annotation": "annotation", "drug_response": "drug_response"}
CONFIGS = (("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True))
BATCH = 32


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=default_checkpoint_path())
    p.add_argument("--datasets", default=DEFAULT_SETS)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (GPU throughput when one is there)")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    return p.parse_args(argv)


def answer_all(loaded: LoadedModel, X, prompt: str, labels: list[str], share: bool) -> tuple[np.ndarray, float]:
    """Top candidate index per cell, and the seconds it took."""
    model = loaded.model
    best = []
    start = time.perf_counter()
    with torch.no_grad():
        for b in range(0, X.shape[0], BATCH):
            rows = np.arange(b, min(b + BATCH, X.shape[0]))
            ctx = model.start([prompt], torch.zeros(len(rows), dtype=torch.long))
            expr = model.normalize(torch.from_numpy(dense_rows(X, rows)).to(model.device))
            # .cpu() waits for the device, so the clock also covers GPU work
            best.append(model.score_candidates(ctx, expr, labels, share_prefixes=share).argmax(1).cpu().numpy())
    return np.concatenate(best), time.perf_counter() - start


def run_dataset(loaded: LoadedModel, spec: Any, repeats: int) -> dict[str, Any]:
    data = load_split(spec, loaded.vocab, "test")
    labels = loaded.label_set(spec.name)["labels"]
    template = next(t for t in load_bank(BANK[spec.task]).valid if has_choices(t))
    values = {**data.fields[0], "cell_type": "", "condition": "", "choices": ", ".join(labels)}
    prompt = loaded.model.prefix_text(render(template, values))
    out: dict[str, Any] = {"n_cells": data.n_cells, "labels": labels, "configs": {}}
    answers = {}
    for precision, share in CONFIGS:
        seconds = []
        with loaded.model.lm_dtype_as(getattr(torch, precision)):  # float32 weights restored exactly after
            for _ in range(repeats):
                picked, s = answer_all(loaded, data.X, prompt, labels, share)
                seconds.append(s)
        name = f"{precision}, {'trie' if share else 'no sharing'}"
        answers[name] = picked
        tokens = int(loaded.model._candidate_trie(tuple(labels), share).tokens.numel())
        out["configs"][name] = {"seconds": min(seconds), "cells_per_second": data.n_cells / min(seconds),
                                "candidate_tokens_per_cell": tokens,
                                "accuracy": float(np.mean(np.asarray(labels)[picked] == data.labels))}
        logger.info("%s %s: %.1f cells/s", spec.name, name, data.n_cells / min(seconds))
    peer = next(iter(out["configs"]))
    for name, row in out["configs"].items():
        row["speedup_vs_peer"] = row["cells_per_second"] / out["configs"][peer]["cells_per_second"]
        row["same_answer_as_peer"] = float(np.mean(answers[name] == answers[peer]))
    return out


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = ["# Candidate scoring speed", "", f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {meta['nproc']} CPU cores, torch threads {meta['torch_threads']}, load average at "
             f"start {meta['loadavg']}, bfloat16 CPU units: {meta['fast_bf16_cpu']}, device: {meta.get('device', 'cpu')}",
             f"- checkpoint: `{meta['checkpoint']}`; test splits, one fixed instruction listing the labels; "
             f"best of {meta['repeats']} passes per configuration; peer = float32, no sharing", "",
             "| dataset | cells | configuration | candidate tokens / cell | cells/s | x peer | same answer as peer | accuracy |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in report["datasets"].items():
        for cfg, r in row["configs"].items():
            lines.append(f"| {name} | {row['n_cells']} | {cfg} | {r['candidate_tokens_per_cell']} | "
                         f"{r['cells_per_second']:.1f} | {r['speedup_vs_peer']:.2f}x | {r['same_answer_as_peer']:.3f} | "
                         f"{r['accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from instructcell_agent.core_model.precision import cpu_has_fast_bf16

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    wanted = [d for d in args.datasets.split(",") if d]
    specs = {s.name: s for s in load_catalog()}
    unknown = sorted(set(wanted) - set(specs))
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    loaded = load_checkpoint(args.checkpoint, device)
    cmd = [sys.executable.rsplit("/", 1)[-1], *sys.argv] if argv is None else ["scoring_speed.py", *argv]
    meta = {**run_meta(shlex.join(cmd)), "fast_bf16_cpu": cpu_has_fast_bf16(), "checkpoint": str(args.checkpoint),
            "repeats": args.repeats, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    report = {"meta": meta, "datasets": {name: run_dataset(loaded, specs[name], args.repeats) for name in wanted}}
    logger.info("wrote %s", write_report(report, render_markdown(report), args.out_dir, "scoring_speed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
