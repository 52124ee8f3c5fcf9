"""`instructcell` subcommands that fit or rewrite parts of an existing checkpoint, and describe one:
`train-readout`, `fit-reference`, `calibrate`, `store-weights`, `reorder-genes`, `info`.

Registered by `instructcell_agent.cli`; argparse only at import time, heavy imports when a
command runs, so `instructcell --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .core_model.precision import add_device_argument, add_precision_argument

COMMANDS = ("train-readout", "fit-reference", "calibrate", "info", "store-weights", "reorder-genes")


def add_commands(sub: Any) -> None:
    """Add this module's subcommands to a subparsers object."""
    c = sub.add_parser("train-readout", help="fit a checkpoint's linear gene read-out (the second expert beside the LM) "
                                             "and keep each label set's mean cell (explain's reference)")
    c.add_argument("--checkpoint", required=True, help="checkpoint directory; readout.* files are added to it")
    c.add_argument("--split", default="train", help="split(s) to fit on: train, or train+valid for a final refit")
    c.add_argument("--l2", type=float, default=1.0, help="L2 penalty (scikit-learn's 1/C)")
    c.add_argument("--weight", type=float, default=1.0,
                   help="weight of the read-out's log-probability beside the LM's in every answer (0: off); "
                        "refitting drops the weight curves the read-out had (benchmarks/readout_weight_curve.py "
                        "fits one by gene coverage, benchmarks/readout_depth_curve.py one by each cell's genes)")
    c.add_argument("--catalog", action="append", default=[],
                   help="JSON catalog of your own datasets (as for train), for label sets the shared catalog lacks")
    c.add_argument("--panel-copies", type=int, default=0,
                   help="also fit on this many copies of each cell seen through a random gene panel (default 0); "
                        "1 helps files holding few of the vocabulary's genes and cost zheng2017 on its full panel "
                        "(benchmarks/EXPERIMENTS.md, read-out variants)")
    c.add_argument("--hvg-copies", type=int, default=0,
                   help="also fit on N copies of every cell cut to its set's 500-3,000 most variable genes "
                        "(better on files cut to HVGs, not on whole files; benchmarks/EXPERIMENTS.md)")
    c.add_argument("--thin-copies", type=int, default=0,
                   help="also fit on N copies of every cell thinned to 3%%-100%% of its counts (better on shallow "
                        "cells on valid, a little worse on whole 2,000-gene files; benchmarks/EXPERIMENTS.md, "
                        "shallower cells)")
    c.add_argument("--seed", type=int, default=0, help="seed of the panel and thinning draws")
    c = sub.add_parser("fit-reference", help="keep training cells of each label, what a cell's typicality (how alike "
                                             "its label's training cells it is) is measured against")
    c.add_argument("--checkpoint", required=True, help="checkpoint directory; reference.* files are added to it")
    c.add_argument("--split", default="train", help="split(s) whose cells are kept (default train)")
    c.add_argument("--per-label", type=int, default=40, help="cells kept per label (default 40)")
    c.add_argument("--catalog", action="append", default=[],
                   help="JSON catalog of your own datasets (as for train), for label sets the shared catalog lacks")
    c.add_argument("--seed", type=int, default=0, help="seed of the draw of kept cells")
    c.add_argument("--informative-genes", type=int, default=2000,
                   help="genes the score reads: those whose mean differs most between the labels (default 2000; "
                        "0: all)")
    c = sub.add_parser("calibrate", help="fit the temperatures that make answer confidences match accuracy, on "
                                         "held-out cells (writes temperature.json; answers do not change)")
    c.add_argument("--checkpoint", required=True, help="checkpoint directory; temperature.json is added to it")
    c.add_argument("--split", default="valid", help="split the temperatures are fitted on (default valid)")
    c.add_argument("--readout-split", default="train",
                   help="split the read-out is refitted on for the fit, apart from --split (default train)")
    c.add_argument("--catalog", action="append", default=[], help="JSON catalog of your own datasets (as for train)")
    c.add_argument("--no-shared", action="store_true",
                   help="fit on the --catalog datasets only, not the shared sets as well")
    c.add_argument("--seed", type=int, default=0, help="seed of the phrasing draws")
    c.add_argument("--depths", type=float, nargs="+", default=[], metavar="F",
                   help="also read the cells thinned to these fractions of their counts (e.g. 0.5 0.2 0.1 0.05) and "
                        "fit how the temperature grows in cells with few detected genes (several times the time)")
    c.add_argument("--depth-modes", nargs="+", choices=("readout", "lm_alone"), default=["readout", "lm_alone"],
                   help="the temperatures --depths applies to (default both: with the read-out, and the language "
                        "model alone); the others are fitted on the cells as they are")
    add_precision_argument(c, "float32")
    add_device_argument(c)
    c = sub.add_parser("info", help="describe a checkpoint: its label sets, drugs and generation conditions; "
                                    "--json: how each part was made")
    c.add_argument("--checkpoint", help="checkpoint directory (default: the shipped one)")
    c.add_argument("--json", action="store_true",
                   help="the full record as JSON: every command and data hash behind each part")
    c = sub.add_parser("store-weights", help="rewrite a checkpoint's trained weights in a smaller float type")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    c = sub.add_parser("reorder-genes", help="put a checkpoint's genes in another checkpoint's order (same answers)")
    c.add_argument("--checkpoint", required=True, help="checkpoint to rewrite in place")
    c.add_argument("--like", required=True, help="checkpoint directory (or gene_vocab.json) whose order to take")


def handles(args: argparse.Namespace) -> bool:
    return args.command in COMMANDS


def run(args: argparse.Namespace) -> int:
    return {"train-readout": _train_readout, "fit-reference": _fit_reference, "calibrate": _calibrate, "info": _info,
            "store-weights": _store_weights, "reorder-genes": _reorder_genes}[args.command](args)


def recorded_command() -> str | None:
    """The command line, as checkpoints record it, when this process is the `instructcell` CLI
    (None when a test or script calls `main()` in process: its argv is not the command)."""
    if Path(sys.argv[0]).name in ("instructcell", "cli.py", "__main__.py"):
        return "instructcell " + " ".join(sys.argv[1:])
    return None


def _catalog_specs(catalogs: list[str], no_shared: bool = False) -> list:
    """The shared catalog's sets (none with `no_shared`, or when there is no shared data but own
    catalogs are given) and those of the user's own catalog files."""
    from .core_model import datasets
    from .core_model.errors import InputFileError

    if no_shared and not catalogs:
        raise InputFileError("--no-shared needs at least one --catalog file of your own datasets")
    try:
        shared = [] if no_shared else datasets.load_catalog()
    except InputFileError:
        if not catalogs:
            raise
        shared = []  # a checkpoint of the user's own sets needs no shared data
    return shared + [spec for file in catalogs for spec in datasets.load_user_catalog(file)]


def _train_readout(args) -> int:
    from .core_model.readout_train import train_readout

    specs = _catalog_specs(args.catalog)
    command = recorded_command()
    readout = train_readout(args.checkpoint, specs, split=args.split, l2=args.l2, answer_weight=args.weight,
                            panel_copies=args.panel_copies, seed=args.seed, hvg_copies=args.hvg_copies,
                            thin_copies=args.thin_copies, command=command)
    print(json.dumps({"labels": len(readout.labels), **{k: readout.info[k] for k in ("n_cells", "train_accuracy")}}))
    return 0


def _fit_reference(args) -> int:
    from .core_model.reference_fit import fit_checkpoint_reference

    if args.per_label < 5:
        raise ValueError(f"--per-label must be at least 5 (the spread of fewer cells is no yardstick), "
                         f"got {args.per_label}")
    reference = fit_checkpoint_reference(args.checkpoint, _catalog_specs(args.catalog), split=args.split,
                                         per_label=args.per_label, seed=args.seed,
                                         n_informative=args.informative_genes, command=recorded_command())
    print(json.dumps({"labels": len(reference.keys), "cells_kept": int(reference.cells.shape[0])}))
    return 0


def _calibrate(args) -> int:
    from .core_model.temperature_fit import calibrate_checkpoint

    command = recorded_command()
    record = calibrate_checkpoint(args.checkpoint, _catalog_specs(args.catalog, args.no_shared), split=args.split,
                                  readout_split=args.readout_split, seed=args.seed, precision=args.precision,
                                  device=args.device, command=command, depths=args.depths,
                                  depth_modes=args.depth_modes)
    fits = record["fit_report"].items()
    print(json.dumps({"temperature": record["temperature"], "depth_term": record["depth"],
                      "calibration_error_unscaled_then_fitted": {
                          mode: [r["pooled"][k]["calibration_error"] for k in ("unscaled", "fitted")]
                          for mode, r in fits if "pooled" in r},
                      "skipped": {mode: r["skipped"] for mode, r in fits if "skipped" in r}}))
    return 0


def _store_weights(args) -> int:
    from .core_model.checkpoint import store_weights_as
    from .core_model.generation.generator import rebind_model_weights
    from .core_model.temperature import rebind_temperatures

    command = recorded_command()
    record = store_weights_as(args.checkpoint, args.dtype, command=command)
    record["generator_rebound"] = rebind_model_weights(args.checkpoint, record["sha256_before"])
    record["temperature_rebound"] = rebind_temperatures(args.checkpoint, record["sha256_before"])
    print(json.dumps(record))
    return 0


def _reorder_genes(args) -> int:
    from .core_model.checkpoint import reorder_genes
    from .core_model.vocab import read_vocab

    vocab = read_vocab(args.like)
    command = recorded_command()
    print(json.dumps(reorder_genes(args.checkpoint, vocab, command=command)))
    return 0


def _info(args) -> int:
    from .api import default_checkpoint_path
    from .core_model.errors import CheckpointError

    path = Path(args.checkpoint) if args.checkpoint else default_checkpoint_path()
    if not (path / "config.json").is_file() or not (path / "labels.json").is_file():
        raise CheckpointError(f"{path} is not a checkpoint directory (config.json and labels.json expected)")
    config = json.loads((path / "config.json").read_text())
    # started_from / resumed_from chain back to the run from scratch (absent on such a run itself).
    keys = ("package_version", "created", "command", "started_from", "resumed_from", "weights_storage", "data", "valid")
    out = {k: config[k] for k in keys if k in config}
    # The label sets tell a user which candidate names are scored as learned (core_model/candidate_route.py).
    fields = ("task", "species", "tissue", "labels")
    out["label_sets"] = {name: {f: entry.get(f) for f in fields}
                         for name, entry in json.loads((path / "labels.json").read_text()).items()}
    if (path / "readout.json").is_file():  # the linear gene read-out beside the LM (core_model/readout.py)
        meta = json.loads((path / "readout.json").read_text())
        out["readout"] = {"labels": len(meta.get("labels", [])), "answer_weight": meta.get("answer_weight"),
                          "weight_curve": meta.get("weight_curve", []),
                          "weight_curve_command": meta.get("weight_curve_command"),
                          "depth_curve": meta.get("depth_curve", []),
                          "set_depth_curves": meta.get("set_depth_curves", {}),
                          "depth_curve_command": meta.get("depth_curve_command"), "l2": meta.get("l2"),
                          "adapt_to_genes": bool(meta.get("adapt_to_genes", False)),
                          "panel_copies": meta.get("panel_copies", 0), "hvg_copies": meta.get("hvg_copies", 0),
                          "thin_copies": meta.get("thin_copies", 0),
                          "mean_cell_sets": meta.get("mean_cell_sets", []),
                          "command": meta.get("command"), "data": meta.get("data")}
    if (path / "reference.json").is_file():  # training cells typicality is measured against (core_model/reference.py)
        meta = json.loads((path / "reference.json").read_text())
        out["reference"] = {"labels": len(meta.get("keys", [])), **{k: meta.get(k) for k in (
            "per_label", "informative_genes", "seed", "command", "data")}}
    if (path / "generator.json").is_file():  # what `generate` can draw (core_model/generation/conditions.py)
        from .core_model.generation.conditions import ConditionTable

        meta = json.loads((path / "generator.json").read_text())
        out["generator"] = {"command": meta.get("command"),
                            "conditions": ConditionTable.from_list(meta.get("conditions", [])).grouped()}
    if (path / "temperature.json").is_file():  # confidence temperatures (core_model/temperature.py)
        meta = json.loads((path / "temperature.json").read_text())
        out["confidence_temperature"] = {k: meta.get(k)
                                         for k in ("temperature", "depth", "fitted_on", "command", "created")}
    labels = json.loads((path / "labels.json").read_text())
    print(json.dumps(out, indent=1) if args.json else _info_summary(path, config, labels, out))
    return 0


def _info_summary(path: Path, config: dict, labels: dict, out: dict) -> str:
    """What a user asks `info` first: the label sets (what to pass as candidates), the drugs, what
    `generate` can draw; the commands and hashes are left to --json."""
    backbone = (config.get("model") or {}).get("backbone", {}).get("name", "?")
    lines = [f"checkpoint {path}", f"  instructcell-agent {out.get('package_version', '?')}, created "
             f"{out.get('created', '?')}; language model {backbone}",
             f"  trained on the train splits of {len(out.get('data', []))} sets",
             "label sets (candidates from one set are scored as learned; other names go through the Cell Ontology):"]
    for name, entry in labels.items():
        task = (f"drug response to {entry['drug']}" if entry.get("drug") else entry.get("task", "?").replace("_", " "))
        lines.append(f"  {name} ({task}; {entry.get('species', '?')}, {entry.get('tissue', '?')}; "
                     f"{len(entry['labels'])} labels): {', '.join(entry['labels'])}")
    generator = out.get("generator")
    if generator:
        by_set: dict[tuple[str, str, str], list[dict]] = {}
        for group in generator["conditions"]:
            by_set.setdefault((group["dataset"], group["species"], group["tissue"]), []).append(group)
        lines.append(f"generate can draw {len(generator['conditions'])} cell types of a species, tissue and set:")
        for (name, species, tissue), groups in by_set.items():
            conditions = sorted({c for g in groups for c in g["conditions"]})
            lines.append(f"  {name} ({species}, {tissue}{'; conditions ' + ', '.join(conditions) if conditions else ''}"
                         f"): {', '.join(sorted(g['cell_type'] for g in groups))}")
    extras = []
    if "readout" in out:
        curves = out["readout"]["depth_curve"] or out["readout"]["set_depth_curves"]
        shallow = ", weighed less in cells with few genes" if curves else ""
        if out["readout"]["adapt_to_genes"]:
            shallow += ", re-centred for a file lacking genes"
        extras.append(f"a linear gene read-out over {out['readout']['labels']} labels{shallow}")
    if "reference" in out:
        extras.append(f"typicality against {out['reference']['per_label']} training cells of each of "
                      f"{out['reference']['labels']} labels")
    if "confidence_temperature" in out:
        temps = out["confidence_temperature"].get("temperature") or {}
        names = {"readout": "with the read-out", "lm_alone": "for the language model alone"}
        extras.append("confidence temperatures " + ", ".join(f"{v:.2f} {names.get(k, k)}" for k, v in temps.items()))
    if extras:
        lines.append("also: " + "; ".join(extras))
    lines.append("how each part was made (commands, data hashes): instructcell info --json")
    return "\n".join(lines)
