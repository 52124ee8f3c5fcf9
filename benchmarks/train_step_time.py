"""Seconds per training step, per stage and batch size, on one device: sizes a run before it starts.

A GPU lent for minutes has to be planned for: the script loads the shared train splits (all of
them by default, since a step's prompt length depends on the set it draws from), builds the model
as `instructcell train` does (real backbone by default), and times both stages. After one untimed
warm-up (CUDA start-up), each stage is timed twice, for a few steps and for more, and the
difference is divided by the extra steps, so the checkpoint write at the end cancels out.

With ``--budget-s`` it also says how many stage-2 steps fit in that many seconds at the largest
batch timed, after stage 1 (``--encoder-epochs``) and a fixed allowance for loading and the
end-of-run check (``--overhead-s``), with ``--margin`` to spare: the first full-size run on an
H200 took 0.42 s per step where this script, timing one set, had said 0.36, and overran its call.

    python benchmarks/train_step_time.py --device cuda --batch-sizes 16,64 --budget-s 300 --out step_time.json
    python benchmarks/train_step_time.py --backbone tiny --batch-sizes 4 --steps 2   # smoke test, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from instructcell_agent import default_checkpoint_path
from instructcell_agent.core_model.config import BackboneConfig
from instructcell_agent.core_model.corpus import load_split
from instructcell_agent.core_model.io import write_json_atomic
from instructcell_agent.core_model.precision import resolve_device
from instructcell_agent.core_model.training import (TrainConfig, new_model, select_specs, train_encoder,
                                                     train_language_stage)
from instructcell_agent.core_model.training_data import AuxHead, TrainingData
from instructcell_agent.core_model.vocab import read_vocab
from report_io import run_meta

WARM_STEPS = 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--datasets", default="", help="comma-separated catalog names the steps draw from (default: "
                   "every annotation and drug set, as a run does)")
    p.add_argument("--batch-sizes", default="16,64", help="stage-2 batch sizes to time, comma-separated")
    p.add_argument("--steps", type=int, default=12, help="timed steps per stage and batch size, after the warm-up")
    p.add_argument("--backbone", choices=["smollm2", "tiny"], default="smollm2")
    p.add_argument("--vocab-from", default=str(default_checkpoint_path()))
    p.add_argument("--budget-s", type=float, default=None, help="seconds a whole run may take (plan the LM steps)")
    p.add_argument("--encoder-epochs", type=float, default=12, help="stage-1 epochs of the planned run")
    p.add_argument("--overhead-s", type=float, default=60, help="planned run's loading and end-of-run check")
    p.add_argument("--margin", type=float, default=0.15, help="share of the budget left unplanned")
    p.add_argument("--max-lm-steps", type=int, default=4000)
    p.add_argument("--out", type=Path, default=None, help="JSON report (default: print only)")
    return p.parse_args(argv)


def _seconds(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def per_step(run, steps: int) -> float:
    """Seconds per step: (time of WARM + steps) - (time of WARM), over steps, after a warm-up."""
    run(WARM_STEPS)
    short = _seconds(lambda: run(WARM_STEPS))
    long = _seconds(lambda: run(WARM_STEPS + steps))
    return max(long - short, 0.0) / steps


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    cfg = TrainConfig(datasets=tuple(d for d in args.datasets.split(",") if d), seed=0, save_every=10**9,
                      backbone=BackboneConfig(kind=args.backbone), vocab_from=args.vocab_from)
    vocab = read_vocab(args.vocab_from)
    data = TrainingData.build([load_split(spec, vocab, "train") for spec in select_specs(cfg)])
    model = new_model(cfg, data).to(device)
    aux = AuxHead(model.cfg.encoder.dim, data.n_labels).to(device)
    n_cells = sum(s.n_cells for s in data.splits)

    def stage1(steps: int) -> None:
        epochs = (steps + 0.5) * cfg.encoder_batch / n_cells  # train_encoder counts steps in epochs
        train_encoder(model.encoder, aux, data, dataclasses.replace(cfg, encoder_epochs=epochs), model.cfg.target_sum)

    stage2 = {}
    with tempfile.TemporaryDirectory() as tmp:
        s1 = per_step(stage1, args.steps)
        for b in batches:
            def run(steps: int, b: int = b) -> None:
                train_language_stage(model, aux, data, dataclasses.replace(cfg, batch_size=b, lm_steps=steps),
                                     Path(tmp), None, False)
            stage2[b] = per_step(run, args.steps)
    report = {**run_meta("python benchmarks/train_step_time.py " + shlex.join(sys.argv[1:] if argv is None else argv)),
              "device": device, "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
              "torch": torch.__version__, "backbone": args.backbone, "datasets": [s.spec.name for s in data.splits],
              "stage1_batch": cfg.encoder_batch, "stage1_s_per_step": s1,
              "stage2_s_per_step": {str(b): t for b, t in stage2.items()}}
    if args.budget_s is not None:
        batch = max(batches)
        s1_steps = int(args.encoder_epochs * n_cells / cfg.encoder_batch)
        left = args.budget_s * (1 - args.margin) - args.overhead_s - s1_steps * s1
        report["plan"] = {"budget_s": args.budget_s, "margin": args.margin, "batch_size": batch,
                          "stage1_steps": s1_steps,
                          "lm_steps": int(max(0, min(args.max_lm_steps, left / stage2[batch])))}
    print(json.dumps(report, indent=1))
    if args.out:
        write_json_atomic(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
