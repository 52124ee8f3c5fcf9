"""Generation (CPCG) benchmark: our generator against a per-type Gaussian in PCA space, scVI, and
the real-vs-real ceiling, on the test splits of kang2018_pbmc_ifnb (cell type x stimulation) and
zheng2017_pbmc_sorted (cell type).

For every test cell one cell is generated with that cell's conditions; all methods go through
``core_model.generation.metrics`` (MMD, deltaSKNN and pKNN at K = 5, 10, 25, 50 in a 2-D UMAP fit
on the real test cells; per-label mean-expression correlation, marker checks, classifier AUC,
non-zero-fraction correlation). Our model runs twice: with our held-out phrasings and with the
reference system's unseen test phrasings. Baselines are trained on the train split only.
A population check (``population_check``) repeats the mean-expression correlation with 20 generated
cells per test cell against the mean of every training cell, to tell a generator's error from
the sampling noise of small labels. ``generation_seeds.py`` runs this benchmark over several seeds.

Targets: classifier AUC <= 0.6, non-zero-fraction and mean-expression correlations >= 0.95,
reference metrics within 10% of real-vs-real (MMD <= 1.1 x ceiling; sKNN of the generated cells
within 10% of the real cells' sKNN, i.e. deltaSKNN <= ceiling + 0.1 x sKNN(real); pKNN >=
0.9 x ceiling), and unseen-phrasing metrics within 10% of own-phrasing metrics.

scVI (scvi-tools) runs when it imports; it is not a project dependency. Run::

    python benchmarks/generation_benchmark.py --checkpoint DIR --out-dir /tmp/gen_bench
    python benchmarks/generation_benchmark.py --checkpoint DIR --max-cells 60 --skip-scvi --out-dir /tmp/smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import shlex
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from instructcell_agent.api import default_checkpoint_path, load_model
from instructcell_agent.core_model.checkpoint import LoadedModel
from instructcell_agent.core_model.datasets import load_catalog, shared_root
from instructcell_agent.core_model.generation.baselines import gaussian_pca_cells, real_cells_like
from instructcell_agent.core_model.generation.data import GenerationSplit, load_generation_split
from instructcell_agent.core_model.generation.evaluate import load_real, requests_for, understood_rate
from instructcell_agent.core_model.generation.generator import load_generator
from instructcell_agent.core_model.generation.metrics import (KS, generation_metrics, log_normalize,
                                                              mean_expression_correlation)
from instructcell_agent.core_model.generation.sampling import sample_counts
from instructcell_agent.core_model.instructions import load_bank, load_instruction_file
from report_io import write_report

log = logging.getLogger("generation_benchmark")
DATASETS = ("kang2018_pbmc_ifnb", "zheng2017_pbmc_sorted")
TEMPLATES = "benchmarks/instructcell/test_templates/conditional_pseudo_cell_generation/templates.json"
HEADLINE = ("mmd", "delta_sknn@10", "pknn@10", "classifier_auc", "nonzero_fraction_corr", "mean_expression_corr",
            "marker_frac_expressing_abs_diff")
METHODS = ("instructcell (own phrasings)", "instructcell (unseen phrasings)", "gaussian_pca", "scvi", "real_vs_real")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(default_checkpoint_path()))
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--max-cells", type=int, default=None, help="subsample real test cells (smoke runs)")
    p.add_argument("--out-dir", default="benchmarks/results")
    p.add_argument("--templates", default=None, help="unseen phrasings (default: the shared test templates)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-scvi", action="store_true")
    p.add_argument("--scvi-epochs", type=int, default=200)
    p.add_argument("--population-draws", type=int, default=20,
                   help="cells generated per real test cell for the population mean-expression check (0: skip)")
    p.add_argument("--precision", choices=("float32", "bfloat16", "auto"), default="float32",
                   help="LM compute dtype while reading instructions (float32: the same numbers on every machine)")
    return p.parse_args(argv)


def ours(loaded: LoadedModel, real: GenerationSplit, phrasings: list[str], seed: int) -> tuple[np.ndarray, dict]:
    gen = load_generator(loaded)
    texts, unseen = requests_for(gen, real.conditions, phrasings, seed)
    start = time.perf_counter()
    counts, nearest = sample_counts(loaded, gen, texts, seed)
    extra = {"understood_rate": understood_rate(gen, real.conditions, nearest),
             "n_unseen_conditions": int(sum(unseen)), "seconds": time.perf_counter() - start}
    return counts, extra


def _detected(train: GenerationSplit) -> np.ndarray:
    return np.flatnonzero(np.asarray((train.X > 0).sum(0)).ravel() > 0)


def _widen(part: np.ndarray, cols: np.ndarray, width: int) -> sp.csr_matrix:
    """Counts over genes `cols` placed in a `width`-gene matrix (the other genes zero)."""
    out = sp.csr_matrix(part, dtype=np.float32)
    return sp.csr_matrix((out.data, cols[out.indices], out.indptr), shape=(part.shape[0], width))


def gaussian(train: GenerationSplit, labels: list[str], seed: int) -> tuple[sp.csr_matrix, dict]:
    cols = _detected(train)
    counts = gaussian_pca_cells(train.X[:, cols], [c.label() for c in train.conditions], labels, seed)
    return _widen(counts, cols, train.X.shape[1]), {}


def scvi_cells(train: GenerationSplit, labels: list[str], seed: int, epochs: int) -> tuple[sp.csr_matrix, dict]:
    """scVI with the label as its (decoder) covariate; z from the prior, library from the label's
    training cells, counts from the ZINB."""
    import anndata as ad
    import scvi
    import torch

    scvi.settings.seed = seed
    cols = _detected(train)
    adata = ad.AnnData(train.X[:, cols].astype(np.float32))
    adata.obs["label"] = [c.label() for c in train.conditions]
    scvi.model.SCVI.setup_anndata(adata, batch_key="label")
    model = scvi.model.SCVI(adata)
    model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False)
    cats = list(adata.obs["label"].astype("category").cat.categories)
    rng = np.random.default_rng(seed)
    libs = np.asarray(adata.X.sum(1)).ravel()
    lib = np.array([rng.choice(libs[adata.obs["label"].to_numpy() == l]) for l in labels])
    module = model.module.eval()
    with torch.no_grad():
        z = torch.from_numpy(rng.standard_normal((len(labels), module.n_latent)).astype(np.float32))
        batch = torch.tensor([[cats.index(l)] for l in labels])
        out = module.generative(z, torch.log(torch.from_numpy(lib.astype(np.float32)))[:, None], batch)
        counts = out["px"].sample().numpy()
    return _widen(counts, cols, train.X.shape[1]), {"scvi_version": scvi.__version__, "epochs": epochs}


def run_dataset(loaded: LoadedModel, name: str, args: argparse.Namespace, unseen: list[str]) -> dict[str, Any]:
    spec = {s.name: s for s in load_catalog()}[name]
    real = load_real(spec.path, spec.split_path, spec.label_key, "test", max_cells=args.max_cells, seed=args.seed,
                     vocab=loaded.vocab)
    train = load_generation_split(spec, loaded.vocab, "train")
    labels = [c.label() for c in real.conditions]
    runs: dict[str, Any] = {}
    makers = {
        METHODS[0]: lambda: ours(loaded, real, list(load_bank("generation").valid), args.seed),
        METHODS[1]: lambda: ours(loaded, real, unseen, args.seed),
        METHODS[2]: lambda: gaussian(train, labels, args.seed),
        METHODS[3]: lambda: scvi_cells(train, labels, args.seed, args.scvi_epochs),
        METHODS[4]: lambda: (real_cells_like(train.X, [c.label() for c in train.conditions], labels, args.seed), {}),
    }
    for method, make in makers.items():
        if method == "scvi" and args.skip_scvi:
            runs[method] = {"skipped": "--skip-scvi"}
            continue
        log.info("%s: %s", name, method)
        try:
            start = time.perf_counter()
            counts, extra = make()
            extra = {"seconds": time.perf_counter() - start, **extra}
            metrics = generation_metrics(real.X, counts, labels, labels, gene_names=loaded.vocab, seed=args.seed)
            runs[method] = {**metrics, **extra}
        except ImportError as exc:
            runs[method] = {"skipped": f"not installed here: {exc}"}
        except Exception as exc:  # one failing method must not lose the others' numbers
            runs[method] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
    out = {"n_test_cells": len(labels), "counts_from": real.counts_from, "labels": sorted(set(labels)),
           "methods": runs, "checks": checks(runs)}
    if args.population_draws > 0:
        out["population_mean_expression"] = population_check(loaded, real, train, args)
    return out


def population_check(loaded: LoadedModel, real: GenerationSplit, train: GenerationSplit,
                     args: argparse.Namespace) -> dict[str, float]:
    """Per-label mean-expression correlation with the sampling noise of the generated side removed.

    With one generated cell per test cell, a label with 3 to 30 test cells has a noisy mean on both
    sides, so the correlation is capped well below 1 even for real cells (real-vs-real). Here the
    generated side draws `population_draws` cells per test cell, and the ceiling is the mean of
    every training cell of the label: what a generator that has the training population exactly
    would score against these test cells.
    """
    draws = args.population_draws
    labels = [c.label() for c in real.conditions]
    many = labels * draws
    real_log = log_normalize(real.X)

    def corr(gen_counts: Any, gen_labels: list[str]) -> float:
        return mean_expression_correlation(real_log, log_normalize(gen_counts), labels, gen_labels)[
            "mean_expression_corr"]

    gen = load_generator(loaded)
    texts, _ = requests_for(gen, list(real.conditions) * draws, list(load_bank("generation").valid), args.seed)
    ours_counts, _ = sample_counts(loaded, gen, texts, args.seed)
    gauss_counts, _ = gaussian(train, many, args.seed)
    return {"draws_per_test_cell": draws,
            "train_population": corr(train.X, [c.label() for c in train.conditions]),
            METHODS[0]: corr(ours_counts, many), METHODS[2]: corr(gauss_counts, many)}


def checks(runs: dict[str, Any]) -> dict[str, Any]:
    """The targets, for both of our runs (see the module docstring for the definitions)."""
    ceiling = runs.get("real_vs_real", {})
    out: dict[str, Any] = {}
    for method in METHODS[:2]:
        r = runs.get(method, {})
        if "mmd" not in r or "mmd" not in ceiling:
            continue
        c = {"classifier_auc<=0.6": r["classifier_auc"] <= 0.6,
             "nonzero_fraction_corr>=0.95": r["nonzero_fraction_corr"] >= 0.95,
             "mean_expression_corr>=0.95": r["mean_expression_corr"] >= 0.95,
             "mmd<=1.1*ceiling": r["mmd"] <= 1.1 * ceiling["mmd"]}
        for k in KS:
            c[f"delta_sknn@{k}<=ceiling+0.1*sknn_real"] = (
                r[f"delta_sknn@{k}"] <= ceiling[f"delta_sknn@{k}"] + 0.1 * r[f"sknn_real@{k}"])
            c[f"pknn@{k}>=0.9*ceiling"] = r[f"pknn@{k}"] >= 0.9 * ceiling[f"pknn@{k}"]
        out[method] = c
    own, other = runs.get(METHODS[0], {}), runs.get(METHODS[1], {})
    if "mmd" in own and "mmd" in other:
        out["unseen_vs_own_phrasings"] = {
            k: {"own": own[k], "unseen": other[k], "relative_gap": abs(other[k] - own[k]) / max(abs(own[k]), 1e-12)}
            for k in ("mmd", "pknn@10", "classifier_auc", "nonzero_fraction_corr", "mean_expression_corr")}
    return out


def setup(loaded: LoadedModel) -> dict[str, Any]:
    """How the evaluated model came about: the cell model's and the generator's training commands."""
    gen = load_generator(loaded)
    info = gen.info
    cfg = json.loads((Path(str(loaded.path)) / "config.json").read_text()) if loaded.path else {}
    return {"model_command": cfg.get("command"), "model_data": [d.get("name") for d in cfg.get("data", [])],
            "generator_command": info.get("command"), "generator_data": [d.get("name") for d in info.get("data", [])],
            "generator_train_seconds": info.get("train_seconds"), "generator_report": info.get("report"),
            "generator_lm_adapters": gen.lm_adapters}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("instructcell-agent", "torch", "numpy", "scikit-learn", "umap-learn", "scanpy", "scvi-tools"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (float, np.floating)) else str(value)


def _setup_lines(st: dict[str, Any]) -> list[str]:
    if not st:
        return []
    rep = st.get("generator_report") or {}
    acc = {k.rsplit("_", 1)[-1]: v for k, v in rep.items() if k.startswith("signal_nearest_condition_accuracy_")}
    reads = ("through the cell model's LM with its LoRA adapters (trained on annotation and drug response)"
             if st.get("generator_lm_adapters", True) else
             "through the backbone LM as its package ships it (LoRA adapters switched off)")
    return [f"- setup: the generator is trained on top of the frozen cell model; its signal token reads instructions "
            f"{reads}. The cell model was trained multi-task (cell type annotation + drug sensitivity) "
            f"with `{st.get('model_command')}` on {', '.join(st.get('model_data') or [])}; the generator with "
            f"`{st.get('generator_command')}` ({st.get('generator_train_seconds')} s) on the train splits of "
            f"{', '.join(st.get('generator_data') or [])}. Single- vs multi-task: "
            "benchmarks/results/single_vs_multi.md.",
            "- signal token, nearest-condition accuracy at the end of generator training: "
            + ", ".join(f"{k} phrasings {v:.3f}" for k, v in acc.items())]


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Generation benchmark (CPCG)", "", f"- command: `{report['command']}`", f"- date: {report['date']}",
             f"- checkpoint: `{report['checkpoint']}` (generator created {report['generator_created']}); "
             f"language model in {report.get('precision', 'float32')}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
             f"- real cells per set: {'subsampled to ' + str(report['max_cells']) if report['max_cells'] else 'full test split'}",
             *_setup_lines(report.get("setup") or {}),
             "", "One generated cell per real test cell, with that cell's conditions. Lower is better for MMD, "
             "deltaSKNN, AUC and marker difference; higher for pKNN and correlations.", ""]
    for name, res in report["datasets"].items():
        lines += [f"## {name} (n = {res.get('n_test_cells')}, labels: {len(res.get('labels', []))})", "",
                  "| method | " + " | ".join(HEADLINE) + " | understood |", "|---" * (len(HEADLINE) + 2) + "|"]
        for method, r in res.get("methods", {}).items():
            if "mmd" not in r:
                lines.append(f"| {method} | {r.get('skipped') or r.get('error', '')[:120]} |")
                continue
            cells = [_fmt(r[k]) for k in HEADLINE] + [_fmt(r.get("understood_rate", ""))]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        for method, c in res.get("checks", {}).items():
            if method == "unseen_vs_own_phrasings":
                gaps = ", ".join(f"{k} {v['relative_gap']:.1%}" for k, v in c.items())
                lines += ["", f"Unseen vs own phrasings, relative gaps: {gaps}"]
            else:
                failed = [k for k, ok in c.items() if not ok]
                lines += ["", f"{method}: {sum(c.values())}/{len(c)} targets met"
                          + (f"; missed: {', '.join(failed)}" if failed else "")]
        pop = res.get("population_mean_expression")
        if pop:
            lines += ["", f"Per-label mean-expression correlation without the generated side's sampling noise "
                      f"({pop['draws_per_test_cell']} generated cells per test cell): "
                      + ", ".join(f"{k} {_fmt(v)}" for k, v in pop.items() if k != "draws_per_test_cell")
                      + " (train_population: every training cell of the label, the ceiling here)"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    loaded = load_model(args.checkpoint, precision=args.precision)
    templates = Path(args.templates) if args.templates else shared_root() / TEMPLATES
    unseen = load_instruction_file(templates)
    report: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "versions": versions(),
        "checkpoint": str(loaded.path), "generator_created": load_generator(loaded).info.get("created"),
        "precision": loaded.model.precision,
        "setup": setup(loaded),
        "max_cells": args.max_cells, "seed": args.seed, "unseen_templates": str(templates), "datasets": {}}
    for name in [d for d in args.datasets.split(",") if d]:
        report["datasets"][name] = run_dataset(loaded, name, args, unseen)
    print(write_report(report, markdown(report), Path(args.out_dir), "generation"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
