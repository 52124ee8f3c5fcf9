"""Is a candidate checkpoint really better than another? Paired bootstrap on one split.

Choosing between training recipes on the valid splits went wrong twice here (benchmarks/
EXPERIMENTS.md): leads of 0.02 to 0.04 in mean macro-F1 on valid turned into losses on test. The
splits are small (18 to 389 cells) and macro-F1 weighs rare types fully, so this script puts an interval
on each difference before anyone reads it as a gain. Every checkpoint answers the same cells with
the same phrasing per cell (``evaluate(seed=...)`` draws phrasings from the seed alone), so the
comparison is paired; cells are resampled with replacement (2,000 times), independently per
dataset, and the per-set draws are averaged for the interval of the mean over sets.

    python benchmarks/compare_checkpoints.py --reference instructcell_agent/checkpoints/default \
        --candidates runs/frozen16 runs/skip16 --split valid --out-dir /tmp/compare

Writes ``compare_checkpoints.md`` and ``.json`` to ``--out-dir``. Model selection belongs on
``valid``; ``--split test`` is for reporting a choice already made.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from instructcell_agent import default_checkpoint_path
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.bootstrap import f1_difference_draws, summarize
from instructcell_agent.core_model.checkpoint import LoadedModel, load_checkpoint
from instructcell_agent.core_model.datasets import TASK_OF_CATALOG, load_catalog, shared_root
from instructcell_agent.core_model.errors import GeneOverlapError
from instructcell_agent.core_model.evaluation import evaluate
from instructcell_agent.core_model.io import read_h5ad
from instructcell_agent.core_model.scoring import SCORINGS
from instructcell_agent.core_model.vocab import read_vocab
from file_copies import with_hvg, with_panel
from report_io import run_meta, write_report

logger = logging.getLogger("compare_checkpoints")
TASK_CODE = {task: code for code, task in TASK_OF_CATALOG.items()}  # "annotation" -> "cta"
N_BOOT = 2000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, default=default_checkpoint_path())
    p.add_argument("--candidates", type=Path, nargs="+", required=True)
    p.add_argument("--split", default="valid", choices=["valid", "test"])
    p.add_argument("--datasets", help="comma-separated catalog names (default: every annotation and drug set)")
    p.add_argument("--seed", type=int, default=0, help="phrasing draw and bootstrap seed")
    p.add_argument("--scoring", default="auto", choices=SCORINGS,
                   help="candidate scoring (reports written before this option existed scored every token: full)")
    p.add_argument("--eval-hvg", type=int, default=None,
                   help="answer copies of the files holding only their N most variable genes (file_copies.py)")
    p.add_argument("--eval-panel", type=float, default=None,
                   help="answer copies of the files keeping a random share of their genes (file_copies.py); sets "
                        "left with too few vocabulary genes to answer are skipped")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"],
                   help="the language model's compute dtype, the same for every checkpoint")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def split_specs(datasets: str | None) -> list[Any]:
    """Catalog sets with canonical splits: those named (comma-separated), or all of them."""
    specs = [s for s in load_catalog() if s.split_path is not None]
    if not datasets:
        return specs
    wanted = [n.strip() for n in datasets.split(",") if n.strip()]
    unknown = sorted(set(wanted) - {s.name for s in specs})
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown}; catalog has {[s.name for s in specs]}")
    return [s for s in specs if s.name in wanted]


def answers(checkpoint: Path, specs: list[Any], split: str, seed: int, scoring: str = "auto",
            loaded: LoadedModel | None = None, precision: str = "float32") -> dict[str, dict[str, Any]]:
    """Each dataset's per-cell answers, macro-F1 and speed from one checkpoint (own valid phrasings)."""
    loaded = loaded or load_checkpoint(checkpoint, "cpu", precision=precision)
    out = {}
    for spec in specs:
        result = evaluate(loaded, spec.path, spec.split_path, TASK_CODE[spec.task], spec.label_key, seed=seed,
                          split=split, keep_predictions=True, scoring=scoring)
        out[spec.name] = {"macro_f1": result["macro_f1"], "labels": result["labels"],
                          "cells_per_second": result["cells_per_second"], "scoring": result["scoring"],
                          **result["cells"]}
        logger.info("%s %s: macro-F1 %.3f", checkpoint, spec.name, result["macro_f1"])
    return out


def answerable(spec: Any, checkpoint: Path) -> bool:
    """Whether the file holds enough of the checkpoint's genes to be answered at all."""
    try:
        align_to_vocab(read_h5ad(spec.path), read_vocab(checkpoint))
    except GeneOverlapError:
        return False
    return True


def readout_seen(checkpoint: Path, split: str) -> list[str]:
    """The sets whose `split` cells the checkpoint's read-out was fitted on (the shipped one is
    refit on train+valid): on those its answers are not a held-out measure."""
    meta = Path(checkpoint) / "readout.json"
    if not meta.is_file():
        return []
    data = json.loads(meta.read_text()).get("data", [])
    return [d["name"] for d in data if split in str(d.get("split", "")).split("+")]


def compare(reference: dict[str, dict[str, Any]], candidate: dict[str, dict[str, Any]], seed: int) -> dict[str, Any]:
    rows, draws = {}, []
    for name, ref in reference.items():
        cand = candidate[name]
        if cand["obs_names"] != ref["obs_names"] or cand["truth"] != ref["truth"]:
            raise RuntimeError(f"{name}: the two checkpoints were scored on different cells")
        delta, d = f1_difference_draws(ref["truth"], cand["predicted"], ref["predicted"], ref["labels"], N_BOOT, seed)
        same = float(np.mean(np.asarray(cand["predicted"]) == np.asarray(ref["predicted"])))
        rows[name] = {"reference_f1": ref["macro_f1"], "candidate_f1": cand["macro_f1"], "same_answer": same,
                      **summarize(delta, d, len(ref["truth"])).to_dict()}
        draws.append(d)
    mean = summarize(float(np.mean([r["delta"] for r in rows.values()])), np.mean(draws, axis=0),
                     sum(r["n_cells"] for r in rows.values()))
    return {"datasets": rows, "mean_over_sets": mean.to_dict()}


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = ["# Checkpoint comparison: paired bootstrap of macro-F1", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- split: `{meta['split']}`, own valid phrasings, phrasing seed {meta['seed']}, scoring "
             f"{meta.get('scoring', 'full')}, language model in {meta.get('precision', 'float32')}; "
             f"shared data: {meta['shared']}",
             *([f"- files: copies holding each file's {meta['eval_hvg']:,} most variable genes (file_copies.py)"]
               if meta.get("eval_hvg") else []),
             *([f"- files: copies keeping a random {100 * meta['eval_panel']:g}% of each file's genes (file_copies.py); "
                f"skipped, too few vocabulary genes left: {', '.join(meta['skipped']) or 'none'}"]
               if meta.get("eval_panel") else []),
             f"- reference: `{meta['reference']}`",
             *[f"- **caution**: `{name}`'s read-out was fitted on these `{meta['split']}` cells ({len(sets)} sets): "
               "its numbers there are not held out" for name, sets in meta.get("readout_seen", {}).items() if sets],
             f"- interval: 2.5th-97.5th percentile of candidate - reference over {N_BOOT} resamples of the cells "
             "(per set; the mean row averages the sets' draws)", ""]
    for cand, result in report["candidates"].items():
        lines += [f"## `{cand}`", "",
                  "| dataset | n | reference F1 | candidate F1 | difference [95% interval] | share of draws ahead | same answer |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in result["datasets"].items():
            lines.append(f"| {name} | {r['n_cells']} | {r['reference_f1']:.3f} | {r['candidate_f1']:.3f} | "
                         f"{r['delta']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | {r['share_a_ahead']:.2f} | "
                         f"{r['same_answer']:.2f} |")
        m = result["mean_over_sets"]
        lines += [f"| mean over sets | {m['n_cells']} | | | {m['delta']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}] | "
                  f"{m['share_a_ahead']:.2f} | |", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    specs = split_specs(args.datasets)
    cmd = [sys.executable.rsplit("/", 1)[-1], *sys.argv] if argv is None else ["compare_checkpoints.py", *argv]
    report: dict[str, Any] = {"meta": {**run_meta(shlex.join(cmd)), "split": args.split, "seed": args.seed,
                                       "shared": str(shared_root()), "reference": str(args.reference),
                                       "scoring": args.scoring, "precision": args.precision,
                                       "eval_hvg": args.eval_hvg, "eval_panel": args.eval_panel,
                                       "readout_seen": {str(c): readout_seen(c, args.split)
                                                        for c in [args.reference, *args.candidates]}},
                              "candidates": {}}
    with tempfile.TemporaryDirectory(prefix="compare_hvg_") as copies:
        if args.eval_hvg is not None:
            specs = [with_hvg(spec, args.eval_hvg, Path(copies)) for spec in specs]
        if args.eval_panel is not None:
            specs = [with_panel(spec, args.eval_panel, args.seed, Path(copies)) for spec in specs]
            report["meta"]["skipped"] = [s.name for s in specs if not answerable(s, args.reference)]
            specs = [s for s in specs if s.name not in report["meta"]["skipped"]]
        reference = answers(args.reference, specs, args.split, args.seed, args.scoring, precision=args.precision)
        for candidate in args.candidates:
            report["candidates"][str(candidate)] = compare(
                reference, answers(candidate, specs, args.split, args.seed, args.scoring, precision=args.precision),
                args.seed)
            path = write_report(report, render_markdown(report), args.out_dir, "compare_checkpoints")
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
