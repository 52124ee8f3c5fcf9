"""CLI subcommands for generation: `generate`, `train-generator`, and `evaluate --task cpcg`.

Registered by `instructcell_agent.cli`; argparse only at import time (heavy imports happen
when a command runs), so `instructcell --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..precision import add_device_argument, add_precision_argument

COMMANDS = ("generate", "train-generator")


def add_generation_commands(sub: Any) -> None:
    """Add the generation subcommands, and the cpcg options of `evaluate`, to a subparsers object."""
    p = sub.add_parser("generate", help="generate pseudo-cells for a condition; writes a new .h5ad")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory with a generator (default: the shipped one)")
    p.add_argument("--cell-type", required=True)
    p.add_argument("--species", default=None)
    p.add_argument("--tissue", default=None)
    p.add_argument("--condition", default=None, help='free text, e.g. "IFN-beta stimulated" (or stim / ctrl)')
    p.add_argument("--sequencing-method", default=None)
    p.add_argument("--instruction", default=None, help="phrasing with {cell_type}, {condition}, ... placeholders")
    p.add_argument("--n", type=int, required=True, help="number of cells")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help=".h5ad to write (never an existing input)")
    p.add_argument("--allow-unseen", action="store_true", help="generate even for a condition not seen in training")
    add_precision_argument(p, "auto")
    add_device_argument(p)

    t = sub.add_parser("train-generator", help="train the pseudo-cell generator of an existing checkpoint")
    t.add_argument("--checkpoint", required=True, help="checkpoint directory; generator files are added to it")
    t.add_argument("--datasets", default="", help="comma-separated catalog names (default: every annotation set)")
    t.add_argument("--epochs", type=int, default=60, help="passes over the training cells (count VAE; default 60)")
    t.add_argument("--signal-prompts", type=int, default=4608, help="instruction prompts that fit the signal read-out")
    t.add_argument("--signal-tune-prompts", type=int, default=1152,
                   help="instruction prompts that tune the signal token's embedding (gradients through the LM)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--lm-adapters", choices=["off", "on"], default="off",
                   help="read instructions through the cell model's LoRA adapters (default off: the backbone as "
                        "shipped, so the generator stays valid when the cell model is retrained)")

    evaluate = sub.choices.get("evaluate")
    if evaluate is not None:  # extra options of `evaluate --task cpcg`
        evaluate.add_argument("--condition-key", default="condition",
                              help="cpcg: obs column with the condition, used when present")
        evaluate.add_argument("--max-cells", type=int, default=None, help="cpcg: subsample the real cells")


def handles(args: argparse.Namespace) -> bool:
    """Whether a parsed command line is one of ours."""
    return args.command in COMMANDS or (args.command == "evaluate" and getattr(args, "task", None) == "cpcg")


def run(args: argparse.Namespace) -> int:
    """Run a generation command; returns the exit status."""
    if args.command == "generate":
        return _generate(args)
    if args.command == "train-generator":
        return _train(args)
    return _evaluate(args)


def _generate(args: argparse.Namespace) -> int:
    from ...api import load_model
    from ..io import write_h5ad_atomic
    from .sampling import generate_cells

    loaded = load_model(args.checkpoint, device=args.device, precision=args.precision)
    protect = [p for p in (loaded.path,) if p is not None]
    adata = generate_cells(loaded, args.cell_type, args.n, species=args.species, tissue=args.tissue,
                           condition=args.condition, sequencing_method=args.sequencing_method,
                           instruction=args.instruction, seed=args.seed, allow_unseen=args.allow_unseen)
    adata.uns["instructcell_generation"]["command"] = "instructcell " + " ".join(sys.argv[1:])
    write_h5ad_atomic(adata, args.out, protect=[*protect, *_checkpoint_files(loaded.path)])
    first = adata.obs.iloc[0]
    provenance = adata.uns["instructcell_generation"]
    print(json.dumps({"out": str(args.out), "n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars),
                      "cell_type": first["cell_type"], "species": first["species"], "tissue": first["tissue"],
                      "condition": first["condition"], "learned_from": provenance.get("learned_from"),
                      "unseen_condition": bool(first["unseen_condition"])}))
    return 0


def _checkpoint_files(path: Any) -> list[Any]:
    from pathlib import Path

    return sorted(Path(path).iterdir()) if path is not None and Path(path).is_dir() else []


def _train(args: argparse.Namespace) -> int:
    from .train import GeneratorTrainConfig, train_generator

    cfg = GeneratorTrainConfig(datasets=tuple(d for d in args.datasets.split(",") if d), epochs=args.epochs,
                               signal_prompts=args.signal_prompts, signal_tune_prompts=args.signal_tune_prompts,
                               seed=args.seed,
                               lm_adapters=args.lm_adapters == "on")
    path = train_generator(args.checkpoint, cfg, command="instructcell " + " ".join(sys.argv[1:]))
    print(path)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ...api import load_model
    from ..errors import InputFileError
    from ..instructions import load_instruction_file
    from ..io import write_json_atomic
    from .evaluate import evaluate_generation

    if args.genome:  # real cells are read from one .h5ad of a single species here
        raise InputFileError("--genome is for --task cta and dsp; for cpcg, save one species' cells as an .h5ad "
                             "(instructcell_agent.read_cells(path, genome=...).write_h5ad(...))")
    loaded = load_model(args.checkpoint, device=args.device, precision=args.precision)
    instructions = load_instruction_file(args.instructions) if args.instructions else None
    result = evaluate_generation(loaded, args.data, args.split, args.label_key, instructions=instructions,
                                 seed=args.seed, split=args.split_name, condition_key=args.condition_key,
                                 max_cells=args.max_cells)
    write_json_atomic(result, args.out)
    keys = ("mmd", "delta_sknn@10", "pknn@10", "classifier_auc", "nonzero_fraction_corr", "mean_expression_corr",
            "understood_rate", "n_real")
    print(json.dumps({k: result[k] for k in keys}))
    return 0
