"""How the per-label gene rankings hold up when `explain` attributes at most N cells of each label.

On the held-out cells (test split by default; `--splits valid test` pools both) of the explain
benchmark's three sets, `explain` runs with the true labels over every cell, then with
`max_cells_per_label` N (several seeds), in one run and with the same settings (the LM in
float32, as `instructcell explain` runs it; candidates the set's learned labels). Reported per N:
the time against the full run's, the share of each label's top 10 genes also in the full run's
top 10 (mean over the labels holding more than N cells, the others being explained whole), and
the mean PanglaoDB precision at 10 beside the full run's.

    python benchmarks/explain_subsample.py [--caps 5 10 20] [--seeds 0 1 2] [--out-dir benchmarks/results]
    python benchmarks/explain_subsample.py --splits valid test --caps 20 50 100 --seeds 0 1 \
        --datasets zheng2017_pbmc_sorted --stem explain_subsample_valid_test   # more cells per label
    python benchmarks/explain_subsample.py --targets answers ...   # no labels: the full run explains each
        # cell's predicted label, the capped runs answer every cell first and draw from each answer
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

import instructcell_agent as ica
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.io import get_labels, read_h5ad
from instructcell_agent.interpret.api import explain
from report_io import run_meta, write_report

logger = logging.getLogger("explain_subsample")
DATASETS = ("zheng2017_pbmc_sorted", "xin2016_pancreas_subset", "bastidasponce2019_pancreas_e155")
K = 10


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--caps", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--splits", nargs="+", default=["test"], choices=["valid", "test"],
                   help="held-out splits whose cells are explained (pooled)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--stem", default="explain_subsample", help="results file name")
    p.add_argument("--targets", choices=["truth", "answers"], default="truth",
                   help="what is explained: the true labels, or (no labels given) the model's own answers")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def top_genes(result) -> dict[str, list[str]]:
    top = result.top_genes.sort_values(["label", "rank"])
    return {str(label): group["gene"].tolist()[:K] for label, group in top.groupby("label")}


def mean_precision(result) -> float | None:
    if result.marker_report is None:
        return None
    values = result.marker_report["precision_at_k"].astype(float)
    return float(np.nanmean(values)) if values.notna().any() else None


def run_set(model, spec, caps: Sequence[int], seeds: Sequence[int], splits: Sequence[str],
            targets: str = "truth") -> dict[str, Any]:
    split = read_split(spec.split_path)
    names = [name for which in splits for name in split[which]]
    test = subset_by_names(read_h5ad(spec.path), names, "+".join(splits)).copy()
    truth = get_labels(test, spec.label_key)
    cands = list(model.label_sets[spec.name]["labels"])
    species = spec.species if spec.species in ("human", "mouse") else None

    def run(cap: int | None, seed: int = 0):
        started = time.perf_counter()
        result = explain(test, model=model, labels=truth if targets == "truth" else None, candidates=cands,
                         compare_wilcoxon=False, species=species, max_cells_per_label=cap, seed=seed)
        return result, time.perf_counter() - started

    full, full_s = run(None)
    full_top = top_genes(full)
    groups = truth if targets == "truth" else np.asarray(full.groups, dtype=str)  # the answers, in the full run
    sizes = {str(l): int(n) for l, n in zip(*np.unique(groups, return_counts=True))}
    row: dict[str, Any] = {"name": spec.name, "n_test": int(test.n_obs), "labels": sizes, "full_seconds": full_s,
                           "full_precision": mean_precision(full), "caps": []}
    for cap in caps:
        cut = [label for label, n in sizes.items() if n > cap]
        runs = []
        for seed in seeds:
            result, seconds = run(cap, seed)
            top = top_genes(result)
            shared = [len(set(top.get(l, [])) & set(full_top.get(l, []))) / K for l in cut if full_top.get(l)]
            runs.append({"seed": seed, "seconds": seconds, "n_explained": len(result.obs_names),
                         "shared_top10": float(np.mean(shared)) if shared else None,
                         "precision": mean_precision(result)})
        row["caps"].append({"cap": cap, "labels_cut": cut, "runs": runs})
        logger.info("%s cap %d: %s", spec.name, cap, runs)
    return row


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model(precision="float32")
    specs = {s.name: s for s in load_catalog(tasks=("annotation",))}
    rows = [run_set(model, specs[name], args.caps, args.seeds, args.splits, args.targets) for name in args.datasets]
    report = {**meta, "seeds": args.seeds, "splits": args.splits, "targets": args.targets, "rows": rows}
    print(write_report(report, markdown(report), args.out_dir, args.stem))


def _mean(values: list[float | None]) -> str:
    kept = [v for v in values if v is not None]
    return f"{np.mean(kept):.2f}" if kept else "-"


_TARGETS = {"truth": "the true labels",
            "answers": "no labels (the full run explains each cell's predicted label; a capped run answers every "
                       "cell first, timed with it, and draws from each answer; labels sized by the full run's "
                       "answers)"}


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Explaining at most N cells of each label", "", f"- command: `{report['command']}`",
             f"- date: {report['date']}",
             f"- machine: {report['nproc']} CPU cores, load average at start {report['loadavg']}",
             f"- `explain` with {_TARGETS[report.get('targets', 'truth')]} on the "
             f"{' + '.join(report.get('splits', ['test']))} split, LM in float32, "
             "candidates the set's learned "
             f"labels; each cap over seeds {', '.join(map(str, report['seeds']))} (mean), beside the run over every "
             "cell", "- shared top 10: share of a label's top 10 genes also in the full run's top 10, over the "
             "labels with more cells than the cap", "",
             "| set | cells (labels) | full run: s / P@10 | cap | labels cut | cells explained | s (time ratio) | "
             "shared top 10 | P@10 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        head = (f"| {r['name']} | {r['n_test']} ({len(r['labels'])}) | {r['full_seconds']:.0f} / "
                f"{r['full_precision']:.2f} ")
        for c in r["caps"]:
            runs = c["runs"]
            seconds = float(np.mean([x["seconds"] for x in runs]))
            lines.append(f"{head}| {c['cap']} | {len(c['labels_cut'])} | {runs[0]['n_explained']} | {seconds:.0f} "
                         f"({r['full_seconds'] / seconds:.1f}x) | {_mean([x['shared_top10'] for x in runs])} | "
                         f"{_mean([x['precision'] for x in runs])} |")
            head = "| | | "
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
