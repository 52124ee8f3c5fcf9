"""One read-out weight per label set, chosen on valid: does it carry to test?

The read-out joins the language model with one weight for every set (core_model/readout.py). On
valid, larger weights helped zheng2017, kang2018 and bastidasponce2019 and cost pbmc3k
(benchmarks/EXPERIMENTS.md, "Read-out variants"), so a single weight trades sets against each
other. This script chooses a weight per label set on valid and measures the choice:

1. valid, with a read-out fitted on train only: the language model's calls are recorded once per
   set, then replayed with each weight of the grid (readout_variants.py's Recorder), so every
   weight answers the same cells with the same phrasings;
2. the rule: per set, the weight of the grid with the highest valid macro-F1, ties going to the
   weight nearest the checkpoint's (in log scale);
3. an honest estimate of the rule on valid: cross-fitting, the rule applied to a random half of
   each set's valid cells and scored on the other half against the checkpoint's weight
   (`--splits` random halvings, both directions);
4. test, with the checkpoint's own read-out (fitted on train+valid): the chosen weights against the
   checkpoint's, paired bootstrap (compare_checkpoints.py).

    python benchmarks/readout_set_weights.py --out-dir /tmp/set_weights
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compare_checkpoints import TASK_CODE, compare, split_specs
from instructcell_agent import default_checkpoint_path
from instructcell_agent.core_model.bootstrap import macro_f1_weighted
from instructcell_agent.core_model.checkpoint import LoadedModel, load_checkpoint
from instructcell_agent.core_model.datasets import shared_root
from instructcell_agent.core_model.evaluation import evaluate
from instructcell_agent.core_model.readout import Readout
from readout_variants import Recorder, cells_of, fit_blocks, fit_variant
from report_io import run_meta, write_report

logger = logging.getLogger("readout_set_weights")
GRID = (0.5, 1.0, 2.0, 3.0, 4.0, 8.0, 16.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=default_checkpoint_path())
    p.add_argument("--weights", type=float, nargs="+", default=list(GRID))
    p.add_argument("--datasets", help="comma-separated catalog names (default: every annotation and drug set)")
    p.add_argument("--seed", type=int, default=0, help="phrasing draw, halvings and bootstrap seed")
    p.add_argument("--splits", type=int, default=50, help="random halvings of valid for the cross-fit estimate")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def answers_by_weight(loaded: LoadedModel, readout: Readout, specs: list[Any], split: str, weights: Sequence[float],
                      seed: int) -> dict[str, dict[float, dict[str, Any]]]:
    """Per set and weight, `evaluate`'s per-cell answers on `split`; the language model runs once per set."""
    out: dict[str, dict[float, dict[str, Any]]] = {}
    for spec in specs:
        recorder = Recorder(loaded.model)
        recorder.record()
        out[spec.name] = {}
        for i, w in enumerate(weights):
            loaded.readout = Readout(readout.labels, readout.weight, readout.bias, w, readout.info)
            if i:
                recorder.replay()
            out[spec.name][w] = cells_of(evaluate(loaded, spec.path, spec.split_path, TASK_CODE[spec.task],
                                                  spec.label_key, seed=seed, split=split, keep_predictions=True))
        recorder.restore()
        logger.info("%s %s: %s", split, spec.name,
                    ", ".join(f"w {w:g} {r['macro_f1']:.3f}" for w, r in out[spec.name].items()))
    loaded.readout = readout
    return out


def choose(by_weight: dict[float, dict[str, Any]], rows: np.ndarray, default: float) -> float:
    """The rule: the weight with the highest macro-F1 on cells `rows`, ties to the one nearest `default`."""
    def f1(w: float) -> float:
        r = by_weight[w]
        weights = np.zeros((1, len(r["truth"])))
        weights[0, rows] = 1
        return float(macro_f1_weighted(np.asarray(r["truth"], dtype=object), np.asarray(r["predicted"], dtype=object),
                                       r["labels"], weights)[0])

    return max(by_weight, key=lambda w: (round(f1(w), 9), -abs(math.log(w / default))))


def cross_fit(by_weight: dict[float, dict[str, Any]], default: float, n_splits: int, seed: int) -> dict[str, float]:
    """The rule's gain over `default` on held-out halves of valid, averaged over random halvings."""
    any_r = next(iter(by_weight.values()))
    n = len(any_r["truth"])
    rng = np.random.default_rng(seed)
    gains, chosen = [], []
    for _ in range(n_splits):
        order = rng.permutation(n)
        halves = (order[: n // 2], order[n // 2:])
        for fit, held in (halves, halves[::-1]):
            w = choose(by_weight, fit, default)
            chosen.append(w)
            weights = np.zeros((1, n))
            weights[0, held] = 1
            truth = np.asarray(any_r["truth"], dtype=object)
            score = [float(macro_f1_weighted(truth, np.asarray(by_weight[v]["predicted"], dtype=object),
                                             any_r["labels"], weights)[0]) for v in (w, default)]
            gains.append(score[0] - score[1])
    return {"mean_gain": float(np.mean(gains)), "share_positive": float(np.mean(np.asarray(gains) > 0)),
            "share_negative": float(np.mean(np.asarray(gains) < 0)),
            "weights_chosen": {f"{w:g}": int(c) for w, c in zip(*np.unique(chosen, return_counts=True))}}


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = ["# One read-out weight per label set, chosen on valid", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- checkpoint: `{meta['checkpoint']}` (weight {meta['default_weight']:g}); valid answered with a "
             "read-out fitted on train, test with the checkpoint's own read-out; own valid phrasings, "
             f"seed {meta['seed']}; shared data: {meta['shared']}",
             f"- grid: {', '.join(f'{w:g}' for w in meta['weights'])}; rule: highest valid macro-F1, ties to the "
             "weight nearest the checkpoint's",
             f"- cross-fit: the rule on a random half of valid, scored on the other half, {meta['splits']} halvings "
             "x 2 directions", "",
             "## Macro-F1 by weight", "",
             "| dataset | split | " + " | ".join(f"w {w:g}" for w in meta["weights"]) + " |",
             "| --- | --- |" + " --- |" * len(meta["weights"])]
    for name in report["chosen"]:
        for split in ("valid", "test"):
            f1s = report["f1"][split][name]
            lines.append(f"| {name} | {split} | " + " | ".join(f"{f1s[f'{w:g}']:.3f}" for w in meta["weights"]) + " |")
    lines += ["", "## The rule: chosen weight, cross-fit on valid, and test", "",
              "| dataset | chosen | valid cross-fit gain (share of halves ahead / behind) | weights the halves chose "
              "| test F1, checkpoint weight | test F1, chosen | difference [95% interval] |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    test = report["test"]["datasets"]
    for name, w in report["chosen"].items():
        c, t = report["cross_fit"][name], test[name]
        picks = ", ".join(f"{k}: {v}" for k, v in c["weights_chosen"].items())
        lines.append(f"| {name} | {w:g} | {c['mean_gain']:+.3f} ({c['share_positive']:.2f} / {c['share_negative']:.2f}) "
                     f"| {picks} | {t['reference_f1']:.3f} | {t['candidate_f1']:.3f} | "
                     f"{t['delta']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}] |")
    m = report["test"]["mean_over_sets"]
    cf = np.mean([c["mean_gain"] for c in report["cross_fit"].values()])
    lines.append(f"| mean over sets | | {cf:+.3f} | | | | {m['delta']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}] |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    cmd = [sys.executable.rsplit("/", 1)[-1], *sys.argv] if argv is None else ["readout_set_weights.py", *argv]
    loaded = load_checkpoint(args.checkpoint, "cpu", precision="float32")
    if loaded.readout is None:
        raise SystemExit(f"{args.checkpoint} has no read-out to weigh")
    shipped = loaded.readout
    default = shipped.answer_weight
    weights = sorted(set(args.weights) | {default})
    order = list(loaded.label_sets)
    specs = sorted((s for s in split_specs(args.datasets) if s.name in loaded.label_sets),
                   key=lambda s: order.index(s.name))
    held_out = fit_variant(fit_blocks(loaded, specs, "train"), len(loaded.vocab), "raw",
                           float(shipped.info.get("l2", 1.0)), 0.0, default)
    valid = answers_by_weight(loaded, held_out, specs, "valid", weights, args.seed)
    test = answers_by_weight(loaded, shipped, specs, "test", weights, args.seed)
    chosen = {name: choose(by_w, np.arange(len(by_w[default]["truth"])), default) for name, by_w in valid.items()}
    report = {
        "meta": {**run_meta(shlex.join(cmd)), "checkpoint": str(args.checkpoint), "seed": args.seed,
                 "weights": weights, "default_weight": default, "splits": args.splits, "shared": str(shared_root())},
        "f1": {split: {name: {f"{w:g}": r["macro_f1"] for w, r in by_w.items()} for name, by_w in answers.items()}
               for split, answers in (("valid", valid), ("test", test))},
        "chosen": chosen,
        "cross_fit": {name: cross_fit(by_w, default, args.splits, args.seed) for name, by_w in valid.items()},
        "test": compare({n: test[n][default] for n in test}, {n: test[n][chosen[n]] for n in test}, args.seed),
    }
    path = write_report(report, render_markdown(report), args.out_dir, "readout_set_weights")
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
