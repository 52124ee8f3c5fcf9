"""Shallower cells: how answers and their confidence hold up as each test cell loses counts.

A user's cells are often sequenced less deeply than the training sets' (a cheaper run, a
lower-quality sample, another protocol). Here every test cell of a set is thinned binomially
(each count kept with probability f: the same cells sequenced f as deeply, as far as sampling
goes) and answered again, with the set's labels as candidates in one order, as a user calls
`ica.annotate` (`predict_drug_response` for the drug set); CellTypist, logistic regression on
2,000 HVGs and 15-NN on 50 PCs, trained on the full-depth train+valid cells as in the annotation
benchmark, predict the same thinned cells in the same run. Per depth: counts and genes per cell,
accuracy and macro-F1 of each, ours against the best baseline (paired bootstrap), and whether our
confidence falls with our accuracy (mean confidence, expected calibration error, share below
0.5) and what typicality says (share below -3).

Counts come from the file: raw counts as they are, normalised (and logged) UMI counts divided
back by the value one count became in each cell (core_model/thinning.py `umi_counts`); a set
whose values give no counts back is skipped, and the report says why.

`--versus CHECKPOINT` answers the same thinned cells with a second checkpoint too (another read-out
setting, say), and a second table sets the two side by side: macro-F1 with a paired bootstrap of
the difference, and confidence against accuracy.

    python benchmarks/sequencing_depth.py [--fractions 1 0.5 0.2 0.1 0.05] [--sets a,b] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import anndata as ad
import numpy as np
import scipy.sparse as sp

import instructcell_agent as ica
from baselines import log_cp10k, prepared_adata, run_baselines, score
from file_copies import thinned
from instructcell_agent.core_model.bootstrap import paired_f1_bootstrap
from instructcell_agent.core_model.checkpoint import load_checkpoint
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.io import get_labels, read_h5ad
from instructcell_agent.core_model.temperature import calibration_error
from instructcell_agent.core_model.thinning import umi_counts
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("sequencing_depth")
ATYPICAL = -3.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.2, 0.1, 0.05])
    p.add_argument("--sets", default="", help="comma-separated set names (default: every annotation and drug set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path, default=ica.default_checkpoint_path())
    p.add_argument("--versus", type=Path, help="a second checkpoint answering the same cells, compared with ours")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--stem", default="sequencing_depth")
    args = p.parse_args(argv)
    if any(not 0 < f <= 1 for f in args.fractions):
        p.error("--fractions must lie in (0, 1]")
    return args


def thinned_copies(adata: ad.AnnData, test_names: list[str], fractions: Sequence[float],
                   seed: int) -> dict[float, ad.AnnData]:
    """The test cells as integer counts, thinned to each fraction (one generator per fraction)."""
    test = subset_by_names(adata, test_names, "test")
    counts = umi_counts(test.X)
    return {f: ad.AnnData(X=thinned(counts, f, np.random.default_rng([seed, i])).astype(np.float32),
                          obs=test.obs.copy(), var=test.var.copy())
            for i, f in enumerate(fractions)}


def ours(cells: ad.AnnData, model, spec, labels: list[str]) -> tuple[Any, float, list[str]]:
    """(result, seconds, the warnings' categories) of the API as a user calls it."""
    fields = {"species": spec.species, "tissue": spec.tissue, "sequencing_method": spec.sequencing_method}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if spec.task == "drug_response":
            result = ica.predict_drug_response(cells, drug=spec.drug, model=model, candidates=labels, **fields)
        else:
            result = ica.annotate(cells, model=model, candidates=labels, **fields)
    return result, time.perf_counter() - start, sorted({w.category.__name__ for w in caught})


def answered(result) -> np.ndarray:
    return np.asarray([str(a) if isinstance(a, str) else "" for a in result.labels])


def answer_stats(result, truth: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and how the confidence matches the accuracy, of one checkpoint's answers."""
    answers = answered(result)
    conf = np.nan_to_num(np.asarray(result.confidence, dtype=float), nan=0.0)
    acc, f1 = score(truth, answers, labels)
    return {"accuracy": acc, "macro_f1": f1, "mean_confidence": float(conf.mean()),
            "ece": calibration_error(conf, answers == truth), "below_0.5": float((conf < 0.5).mean()),
            "n_unlabelled": int((answers == "").sum())}


def depth_row(cells: ad.AnnData, truth: np.ndarray, result, seconds: float, warned: list[str],
              base: dict[str, np.ndarray], labels: list[str], full_answers: np.ndarray | None) -> dict[str, Any]:
    """Everything measured at one depth."""
    X = sp.csr_matrix(cells.X)
    answers = answered(result)
    row: dict[str, Any] = {
        "median_counts": float(np.median(np.asarray(X.sum(1)).ravel())),
        "median_genes": float(np.median(np.diff(X.indptr))),
        "ours": {**answer_stats(result, truth, labels), "seconds": seconds, "warnings": warned},
        "baselines": {},
    }
    if result.typicality is not None:
        row["ours"]["atypical"] = float(np.mean(np.asarray(result.typicality, dtype=float) < ATYPICAL))
    if full_answers is not None:
        row["ours"]["same_as_full_depth"] = float(np.mean(answers == full_answers))
    for name, predicted in base.items():
        b_acc, b_f1 = score(truth, predicted, labels)
        row["baselines"][name] = {"accuracy": b_acc, "macro_f1": b_f1}
    best = max(row["baselines"], key=lambda n: row["baselines"][n]["macro_f1"])
    gap = paired_f1_bootstrap(truth, answers, base[best], labels)
    row["best"] = {"name": best, "difference": gap.delta, "low": gap.low, "high": gap.high}
    return row


def versus_row(result, other, truth: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """The second checkpoint's answers on the same cells, and ours - its macro-F1 (paired bootstrap)."""
    gap = paired_f1_bootstrap(truth, answered(result), answered(other), labels)
    return {**answer_stats(other, truth, labels), "difference": gap.delta, "low": gap.low, "high": gap.high}


def run_set(spec, model, fractions: Sequence[float], seed: int, versus=None) -> dict[str, Any]:
    adata = read_h5ad(spec.path)
    split = read_split(spec.split_path)
    labels = sorted(set(get_labels(adata, spec.label_key)))
    try:
        copies = thinned_copies(adata, split["test"], fractions, seed)
    except ValueError as exc:
        logger.info("%s skipped: %s", spec.name, exc)
        return {"name": spec.name, "skipped": str(exc)}
    truth = np.asarray(get_labels(copies[fractions[0]], spec.label_key), str)
    # Baselines: fitted once on full-depth train+valid, predicting every depth's cells at once.
    prepared = prepared_adata(adata)
    train = subset_by_names(prepared, split["train"] + split["valid"], "train+valid").copy()
    stacked = ad.AnnData(X=sp.vstack([log_cp10k(c.X) for c in copies.values()]).tocsr(),
                         obs={spec.label_key: np.tile(truth, len(copies))}, var=prepared.var[[]].copy())
    fitted = run_baselines(train, stacked, spec.label_key, labels)
    n = len(truth)
    rows, full_answers = [], None
    for i, (fraction, cells) in enumerate(copies.items()):
        result, seconds, warned = ours(cells, model, spec, labels)
        base = {name: r.predicted[i * n:(i + 1) * n] for name, r in fitted.items()}
        row = depth_row(cells, truth, result, seconds, warned, base, labels, full_answers)
        if versus is not None:
            row["versus"] = versus_row(result, ours(cells, versus, spec, labels)[0], truth, labels)
        if fraction == 1.0:
            full_answers = answered(result)
        rows.append({"fraction": fraction, **row})
        logger.info("%s f=%.2f: median %d counts, ours %.3f / %.3f, best %s %.3f", spec.name, fraction,
                    row["median_counts"], row["ours"]["accuracy"], row["ours"]["macro_f1"], row["best"]["name"],
                    row["baselines"][row["best"]["name"]]["macro_f1"])
    return {"name": spec.name, "protocol": spec.sequencing_method, "n_test": n, "labels": labels, "depths": rows}


def render(report: dict[str, Any]) -> str:
    lines = ["# Shallower cells: answers as each test cell loses counts", ""] + meta_lines(report["meta"]) + [
        f"- checkpoint: `{report['checkpoint']}`; fractions {report['fractions']} (binomial thinning, seed "
        f"{report['seed']}); ours: `ica.annotate(cells, candidates=labels)` (`predict_drug_response` for the "
        "drug set) with the set's species, tissue and method; baselines fitted on full-depth train+valid",
        "- F1 gap: ours - best baseline at that depth [95% paired bootstrap interval]; ECE: expected "
        "calibration error of our confidence; atypical: typicality below -3; same: share of answers as at "
        "full depth", ""]
    head = ("| set | f | median counts / genes | ours acc / F1 | CellTypist F1 | logreg F1 | kNN F1 | F1 gap to best "
            "| mean conf / ECE / below 0.5 | atypical | same | s |")
    lines += [head, "|" + " --- |" * (head.count("|") - 1)]
    for s in report["sets"]:
        if "skipped" in s:
            lines.append(f"| {s['name']} | skipped: {s['skipped']} |" + " |" * 10)
            continue
        for r in s["depths"]:
            o, b = r["ours"], r["baselines"]
            gap = r["best"]
            lines.append(
                f"| {s['name']} | {r['fraction']:g} | {r['median_counts']:,.0f} / {r['median_genes']:,.0f} | "
                f"{o['accuracy']:.3f} / {o['macro_f1']:.3f} | {b['celltypist']['macro_f1']:.3f} | "
                f"{b['logreg']['macro_f1']:.3f} | {b['knn']['macro_f1']:.3f} | {gap['difference']:+.3f} "
                f"[{gap['low']:+.3f}, {gap['high']:+.3f}] ({gap['name']}) | {o['mean_confidence']:.3f} / "
                f"{o['ece']:.3f} / {o['below_0.5']:.3f} | {o.get('atypical', float('nan')):.3f} | "
                f"{_share(o.get('same_as_full_depth'))} | {o['seconds']:.1f} |")
    if report.get("versus"):
        lines += versus_lines(report)
    lines += ["", "Warnings issued by `annotate` per set and depth:", ""]
    for s in report["sets"]:
        for r in s.get("depths", []):
            if r["ours"]["warnings"]:
                lines.append(f"- {s['name']} f={r['fraction']:g}: {', '.join(r['ours']['warnings'])}")
    return "\n".join(lines) + "\n"


def versus_lines(report: dict[str, Any]) -> list[str]:
    head = ("| set | f | ours acc / F1 | versus acc / F1 | F1 ours - versus | ours mean conf / ECE / below 0.5 "
            "| versus mean conf / ECE / below 0.5 |")
    lines = ["", f"## Against `{report['versus']}` on the same cells", "",
             "F1 difference with its 95% paired bootstrap interval.", "", head, "|" + " --- |" * (head.count("|") - 1)]
    for s in report["sets"]:
        for r in s.get("depths", []):
            o, v = r["ours"], r["versus"]
            lines.append(f"| {s['name']} | {r['fraction']:g} | {o['accuracy']:.3f} / {o['macro_f1']:.3f} | "
                         f"{v['accuracy']:.3f} / {v['macro_f1']:.3f} | {v['difference']:+.3f} [{v['low']:+.3f}, "
                         f"{v['high']:+.3f}] | {o['mean_confidence']:.3f} / {o['ece']:.3f} / {o['below_0.5']:.3f} | "
                         f"{v['mean_confidence']:.3f} / {v['ece']:.3f} / {v['below_0.5']:.3f} |")
    return lines


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    given = shlex.join(argv if argv is not None else sys.argv[1:])
    meta = run_meta(f"python benchmarks/sequencing_depth.py {given}".strip())
    wanted = [s for s in args.sets.split(",") if s]
    specs = [s for s in load_catalog() if s.task in ("annotation", "drug_response") and (not wanted or s.name in wanted)]
    model = load_checkpoint(args.checkpoint)
    versus = load_checkpoint(args.versus) if args.versus else None
    fractions = sorted(set(args.fractions), reverse=True)
    sets = [run_set(spec, model, fractions, args.seed, versus) for spec in specs]
    report = {"meta": meta, "checkpoint": str(args.checkpoint), "fractions": fractions, "seed": args.seed,
              "versus": str(args.versus) if args.versus else None, "sets": sets}
    print(write_report(report, render(report), args.out_dir, args.stem))
    return 0


if __name__ == "__main__":
    sys.exit(main())
