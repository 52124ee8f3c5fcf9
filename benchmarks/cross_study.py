"""Cells of one study asked with the labels another study taught: does a read-out option hold up?

Every other benchmark asks a set's test cells with that set's own labels, so the read-out reads
cells from the study, chemistry and normalisation its labels were fitted on. A user's file comes
from another study. Here each query's cells are asked (`ica.annotate`, candidates in one order,
species and tissue named) with the labels of each other shared set, and an answer counts as right
when it is the cell's known type, a broader or a finer one in the Cell Ontology
(`hierarchy.consistent`: kang2018's 'CD4T' cells answered 'CD4+/CD45RO+ Memory' are right). Only
cells whose known type some candidate is consistent with are scored, and a pair needs at least
`--min-cells` of them over two or more known types.

Queries: the test split of each cell-type set, scanpy's bundled pbmc68k_reduced (its log-normalised
adata.raw, as `make demo` reads it) and the 20-cell liver file in data/compat. Checkpoints are
compared on the same cells, paired (the first one is the reference), and the language model alone
(`readout=False`) on the reference is reported beside them. With `--baselines`, classifiers trained
on the label set's own study (its train+valid cells, on the vocabulary genes both files hold,
log1p(CP10k) over them; `baselines.py`) answer the same cells: the usual way to carry labels from
one study to another.

    python benchmarks/cross_study.py --checkpoints instructcell_agent/checkpoints/default DIR \
        --names shipped candidate [--hvg 2000] [--max-cells 200]
    python benchmarks/cross_study.py --baselines celltypist,logreg,knn --stem cross_study_peers
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import anndata
import numpy as np

import instructcell_agent as ica
from instructcell_agent.core_model.alignment import AlignedData, align_to_vocab
from instructcell_agent.core_model.bootstrap import summarize
from instructcell_agent.core_model.datasets import DatasetSpec, load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.hierarchy import consistent
from instructcell_agent.core_model.io import get_labels, read_h5ad
from baselines import run_baselines
from demo_peers import on_genes
from file_copies import with_hvg
from report_io import meta_lines, run_meta, write_report

logger = logging.getLogger("cross_study")
N_BOOT = 2000
LM_ALONE = "language model alone"


@dataclass
class Query:
    name: str
    cells: anndata.AnnData
    truth: np.ndarray
    species: str
    tissue: str
    use_raw: bool = False


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=Path, nargs="+", default=[ica.default_checkpoint_path()],
                   help="the first is the reference the others are compared with")
    p.add_argument("--names", nargs="+", help="a short name per checkpoint for the tables")
    p.add_argument("--hvg", type=int, default=None,
                   help="ask copies of the catalog queries holding only their N most variable genes")
    p.add_argument("--max-cells", type=int, default=None, help="random cells per query at most (seeded)")
    p.add_argument("--min-cells", type=int, default=10)
    p.add_argument("--no-lm-alone", action="store_true", help="skip the language model alone")
    p.add_argument("--fast", action="store_true",
                   help="the checkpoints answer with fast=True (cells the read-out is sure of answered by it alone)")
    p.add_argument("--baselines", default="", help="comma-separated: celltypist, logreg, knn (baselines.py)")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--stem", default="cross_study")
    args = p.parse_args(argv)
    if args.names and len(args.names) != len(args.checkpoints):
        p.error(f"{len(args.names)} --names for {len(args.checkpoints)} --checkpoints")
    return args


def catalog_queries(specs: list[DatasetSpec], hvg: int | None, copies: Path) -> list[Query]:
    out = []
    for spec in specs:
        if hvg is not None:
            spec = with_hvg(spec, hvg, copies)
        cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)["test"], "test").copy()
        out.append(Query(f"{spec.name} test", cells, np.asarray(get_labels(cells, spec.label_key), str),
                         spec.species, spec.tissue))
    return out


def other_queries() -> list[Query]:
    """Files from outside the training studies: pbmc68k_reduced and the compat liver file."""
    import scanpy as sc

    pbmc = sc.datasets.pbmc68k_reduced()  # ships inside scanpy
    out = [Query("pbmc68k_reduced (scanpy)", pbmc, pbmc.obs["bulk_labels"].astype(str).to_numpy(), "human",
                 "peripheral blood", use_raw=True)]
    for spec in load_catalog(tasks=("compat",)):
        if spec.label_key and spec.path.is_file():
            cells = read_h5ad(spec.path)
            out.append(Query(f"{spec.name} (all cells)", cells, np.asarray(get_labels(cells, spec.label_key), str),
                             spec.species, spec.tissue))
    return out


def subsample(query: Query, max_cells: int | None, seed: int) -> Query:
    if max_cells is None or query.cells.n_obs <= max_cells:
        return query
    keep = np.sort(np.random.default_rng([seed, len(query.name)]).choice(query.cells.n_obs, max_cells, replace=False))
    return Query(query.name, query.cells[keep].copy(), query.truth[keep], query.species, query.tissue, query.use_raw)


def pairs(queries: list[Query], label_sets: dict[str, list[str]], own: dict[str, str], min_cells: int):
    """(query, label set name, eligible cell mask) for every query and every other study's label set."""
    out = []
    for q in queries:
        for name, labels in label_sets.items():
            if own.get(q.name) == name:
                continue
            ok = {t: any(consistent(c, t) for c in labels) for t in set(q.truth)}
            mask = np.array([ok[t] for t in q.truth])
            if mask.sum() >= min_cells and len(set(q.truth[mask])) >= 2:
                out.append((q, name, mask))
    return out


def answers(model, query: Query, labels: list[str], mask: np.ndarray, readout: bool, fast: bool) -> np.ndarray:
    cells = query.cells[mask]
    result = ica.annotate(cells, model=model, candidates=labels, species=query.species, tissue=query.tissue,
                          use_raw=query.use_raw, readout=readout, fast=fast and readout)
    return np.asarray(result.labels, dtype=object)


class Peers:
    """Baselines trained on each label set's study, on the genes it shares with each query."""

    def __init__(self, specs: dict[str, DatasetSpec], vocab: list[str], names: list[str]):
        self.specs, self.vocab, self.names = specs, vocab, names
        self._train: dict[str, tuple[AlignedData, Any]] = {}
        self._query: dict[str, AlignedData] = {}

    def train(self, name: str) -> tuple[AlignedData, Any]:
        if name not in self._train:
            spec = self.specs[name]
            split = read_split(spec.split_path)
            cells = subset_by_names(read_h5ad(spec.path), split["train"] + split["valid"], "train+valid")
            self._train[name] = (align_to_vocab(cells, self.vocab), cells.obs)
        return self._train[name]

    def answers(self, query: Query, labels_of: str, mask: np.ndarray) -> dict[str, np.ndarray]:
        if query.name not in self._query:
            self._query[query.name] = align_to_vocab(query.cells, self.vocab, use_raw=query.use_raw)
        aligned, obs = self.train(labels_of)
        asked = self._query[query.name]
        keep = np.intersect1d(aligned.matched, asked.matched)
        key = self.specs[labels_of].label_key
        train = on_genes(aligned, self.vocab, keep, obs)
        cells = AlignedData(asked.X[np.flatnonzero(mask)], [], asked.report, asked.matched)
        test = on_genes(cells, self.vocab, keep, query.cells.obs.iloc[np.flatnonzero(mask)][[]])
        test.obs[key] = query.truth[mask]  # the baselines score themselves against it; unused here
        results = run_baselines(train, test, key, list(self.specs[labels_of].classes), self.names)
        return {name: np.asarray(r.predicted, dtype=object) for name, r in results.items()}


def right(answered: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.array([a is not None and consistent(str(a), t) for a, t in zip(answered, truth)], dtype=float)


def difference(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[float, np.ndarray]:
    """Accuracy(a) - accuracy(b) and its paired bootstrap draws (cells resampled with replacement)."""
    n = len(a)
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=N_BOOT) / n
    return float(np.mean(a - b)), weights @ (a - b)


def render(report: dict[str, Any]) -> str:
    names = report["names"]
    head = "| query cells | labels of | n | " + " | ".join(f"{n} acc" for n in names) + " | " + \
        " | ".join(f"{n} - {names[0]}" for n in names[1:]) + " |"
    lines = ["# Cells of one study asked with another study's labels", "", *meta_lines(report["meta"]),
             "- checkpoints: " + "; ".join(f"{n}: `{p}`" for n, p in zip(names, report["checkpoints"])
                                            if n != LM_ALONE),
             *([f"- {LM_ALONE}: the reference checkpoint with `readout=False`"] if LM_ALONE in names else []),
             *(["- (label set's study): trained on the label set's train+valid cells, on the vocabulary genes both "
                "files hold, log1p(CP10k) over them (`baselines.py`: CellTypist with its defaults, logistic regression "
                "on 2,000 HVGs, 15-NN on 50 PCs)"] if any("study)" in n for n in names) else []),
             "- queries: " + (f"copies holding their {report['hvg']:,} most variable genes of " if report["hvg"] else "")
             + "each cell-type set's test cells; pbmc68k_reduced (scanpy, all 700 cells, adata.raw); the liver file",
             f"- right: the answer is the known type or a broader or finer Cell Ontology type (`hierarchy.consistent`); "
             f"cells whose type no candidate matches are left out; language model in {report['precision']}"
             + ("; the checkpoints with fast=True" if report.get("fast") else ""),
             f"- interval: paired bootstrap over the pair's cells ({N_BOOT} resamples); the mean row averages the "
             "pairs' draws", "", head, "|" + " --- |" * (3 + 2 * len(names) - 1)]
    for row in report["pairs"]:
        accs = " | ".join(f"{row['accuracy'][n]:.3f}" for n in names)
        diffs = " | ".join(f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" for d in row["versus"].values())
        lines.append(f"| {row['query']} | {row['labels_of']} | {row['n']} | {accs} | {diffs} |")
    mean = report["mean"]
    accs = " | ".join(f"{mean['accuracy'][n]:.3f}" for n in names)
    diffs = " | ".join(f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" for d in mean["versus"].values())
    lines.append(f"| mean over {len(report['pairs'])} pairs | | {mean['n']} | {accs} | {diffs} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    cmd = [sys.executable.rsplit("/", 1)[-1], *sys.argv] if argv is None else ["cross_study.py", *argv]
    specs = load_catalog(tasks=("annotation",))
    label_sets = {s.name: list(s.classes) for s in specs}
    own = {f"{s.name} test": s.name for s in specs}
    with tempfile.TemporaryDirectory(prefix="cross_study_") as copies:
        queries = catalog_queries(specs, args.hvg, Path(copies)) + other_queries()
    queries = [subsample(q, args.max_cells, args.seed) for q in queries]
    work = pairs(queries, label_sets, own, args.min_cells)
    logger.info("%d pairs, %d cell asks per checkpoint", len(work), sum(int(m.sum()) for _, _, m in work))

    names = list(args.names or [p.name for p in args.checkpoints])
    runs = [(n, p, True) for n, p in zip(names, args.checkpoints)]
    if not args.no_lm_alone:
        runs.append((LM_ALONE, args.checkpoints[0], False))
        names.append(LM_ALONE)
    scored: dict[str, list[np.ndarray]] = {}
    precision = ""
    peer_names = [n for n in args.baselines.split(",") if n]
    if peer_names:
        peers = Peers({s.name: s for s in specs}, list(ica.load_model(args.checkpoints[0]).vocab), peer_names)
        per_pair = [peers.answers(q, labels_of, mask) for q, labels_of, mask in work]
        for peer in peer_names:
            scored[f"{peer} (label set's study)"] = [right(p[peer], q.truth[mask])
                                                    for p, (q, _, mask) in zip(per_pair, work)]
    names += list(scored)
    for name, path, readout in runs:
        model = ica.load_model(path, precision=args.precision)
        precision = model.model.precision
        scored[name] = []
        for q, labels_of, mask in work:
            scored[name].append(right(answers(model, q, label_sets[labels_of], mask, readout, args.fast),
                                      q.truth[mask]))
            logger.info("%s: %s with %s's labels: %.3f", name, q.name, labels_of, scored[name][-1].mean())

    rows, draws = [], {n: [] for n in names[1:]}
    for i, (q, labels_of, mask) in enumerate(work):
        versus = {}
        for n in names[1:]:
            delta, d = difference(scored[n][i], scored[names[0]][i], args.seed)
            draws[n].append(d)
            versus[n] = summarize(delta, d, int(mask.sum())).to_dict()
        rows.append({"query": q.name, "labels_of": labels_of, "n": int(mask.sum()),
                     "accuracy": {n: float(scored[n][i].mean()) for n in names}, "versus": versus})
    mean = {"n": sum(r["n"] for r in rows),
            "accuracy": {n: float(np.mean([r["accuracy"][n] for r in rows])) for n in names},
            "versus": {n: summarize(float(np.mean([r["versus"][n]["delta"] for r in rows])), np.mean(draws[n], axis=0),
                                    sum(r["n"] for r in rows)).to_dict() for n in names[1:]}}
    report = {"meta": run_meta(shlex.join(cmd)), "checkpoints": [str(p) for p in args.checkpoints], "names": names,
              "hvg": args.hvg, "fast": args.fast, "precision": precision, "pairs": rows, "mean": mean}
    path = write_report(report, render(report), args.out_dir, args.stem)
    logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
