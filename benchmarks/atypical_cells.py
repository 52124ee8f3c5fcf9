"""Cells unlike the training cells of the label they were given: does typicality tell them apart?

Typicality (core_model/reference.py) scores each answer by how alike the cell is to the training
cells of its label, in those cells' standard deviations; `unassigned_atypical=s` labels cells
below -s 'Unassigned'. Beside it, the confidence (`unassigned_below`). Share of cells flagged by
each, for:

- in-set: each cell-type set's test cells asked among its own labels, and asked freely (tissue
  and species from the catalog); the flagged share of right and of wrong answers;
- the same files cut to their 2,000 most variable genes (scanpy's seurat flavour on the test
  cells; the reference cells are cut alike at run time);
- missing types, with candidates: zheng2017's CD34+ test cells and xin2016's pancreas test cells
  among kang2018's seven blood labels, bastidasponce2019's mouse pancreas test cells among xin2016's
  four islet labels;
- another tissue, free answers: the test cells of xin2016 (pancreas), puram2017 (head and neck)
  and aissa2021 (a lung cancer cell line) with the tissue given as peripheral blood;
- drug response (erlotinib): aissa2021's PC9 test cells, and kang2018's blood test cells asked
  the same question;
- other labs' cells of learned types: pbmc3k's test cells among kang2018's labels (where both
  name the type), scanpy's bundled pbmc68k_reduced (765 genes, `make demo`'s file) among the
  ten sorted populations' names, and CellTypist's unlabelled sample (shared `data/compat`, 559
  immune cells of a study no set comes from) answered freely, flagged share by answer;
- another study of a learned type, no model run: each cell-type set's test cells under their own
  labels, scored against the reference without that set's kept cells (the other sets' cells of
  the same population), as a file of a study the model never saw is scored; cells whose label no
  other set holds (over enough shared genes) are counted as unscored.

And generated cells: one per kang2018 / zheng2017 test cell with that cell's conditions (the
generation benchmark's requests, the generator's valid phrasings), scored against their requested
type beside the real test cells against their own (the real file's genes for both): a generator
drawing too close to each type's mean gives typicality well above the real cells'.

Answers as users get them: `ica.annotate`, default instruction, candidates in one order,
calibrated confidences.

    python benchmarks/atypical_cells.py [--precision bfloat16] [--out-dir benchmarks/results]
    python benchmarks/atypical_cells.py --only-another-study   # the last group alone (seconds)
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

import instructcell_agent as ica
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.datasets import DatasetSpec, load_catalog, read_split, shared_root, subset_by_names
from instructcell_agent.core_model.io import get_labels, read_h5ad
from instructcell_agent.core_model.reference import Reference
from report_io import run_meta, write_report

logger = logging.getLogger("atypical_cells")
SDS = (2.0, 2.5, 3.0, 4.0)
CONFIDENCES = (0.5, 0.6)
BLOOD = {"tissue": "peripheral blood", "species": "human"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--only-another-study", action="store_true",
                   help="print the leave-one-study-out group alone (no model run, no report written)")
    return p.parse_args(argv)


def test_cells(spec: DatasetSpec) -> ad.AnnData:
    return subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)["test"], "test")


def hvg_cut(cells: ad.AnnData, n_top: int = 2000) -> ad.AnnData:
    """The file as a scanpy workflow cuts it: counts of its n_top most variable genes."""
    logged = cells.copy()
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    sc.pp.highly_variable_genes(logged, flavor="seurat", n_top_genes=n_top)
    return cells[:, logged.var["highly_variable"].to_numpy()].copy()


def flagged(result, truth: np.ndarray | None = None, scored: bool = True, by_answer: bool = False) -> dict[str, Any]:
    """Shares flagged; with `truth`, the share flagged at -3 per true label, and where the
    candidates name the true labels (`scored`), the accuracy and the flagged share of right and
    of wrong answers; `by_answer`: the share flagged at -3 per answer (for unlabelled cells)."""
    typ, conf = np.asarray(result.typicality, float), np.asarray(result.confidence, float)
    row: dict[str, Any] = {"n": len(typ), "n_no_typicality": int(np.isnan(typ).sum()),
                           "median_typicality": float(np.nanmedian(typ)),
                           "typicality_below": {f"-{s:g}": float((typ < -s).mean()) for s in SDS},
                           "confidence_below": {f"{c:g}": float((conf < c).mean()) for c in CONFIDENCES},
                           "either_-3_or_0.5": float(((typ < -3) | (conf < 0.5)).mean()),
                           "typicality": typ.tolist(), "confidence": conf.tolist()}
    if by_answer:
        answers = np.asarray(result.labels, str)
        row["flagged_at_-3_by_answer"] = {str(l): [int((answers == l).sum()), float((typ[answers == l] < -3).mean())]
                                          for l in sorted(set(answers), key=lambda l: -(answers == l).sum())}
    if truth is not None:
        row["flagged_at_-3_by_true_label"] = {str(l): float((typ[truth == l] < -3).mean()) for l in sorted(set(truth))}
    if truth is not None and scored:
        right = np.asarray(result.labels, str) == truth
        row["accuracy"] = float(right.mean())
        row["flagged_at_-3_right_wrong"] = [float((typ[right] < -3).mean()) if right.any() else None,
                                            float((typ[~right] < -3).mean()) if (~right).any() else None]
    return row


def auroc(inset: list[dict[str, Any]], other: list[dict[str, Any]], key: str) -> float:
    a = np.concatenate([r[key] for r in inset])
    b = np.concatenate([r[key] for r in other])
    keep_a, keep_b = ~np.isnan(a), ~np.isnan(b)
    y = np.r_[np.zeros(keep_a.sum()), np.ones(keep_b.sum())]
    return float(roc_auc_score(y, -np.r_[a[keep_a], b[keep_b]]))  # lower score = flagged


def without_set(reference: Reference, name: str) -> Reference:
    """The reference less one label set's kept cells: what a file of a study it never saw meets."""
    take = [i for i, key in enumerate(reference.keys) if key[0] != name]
    kept = [reference.cells[reference.offsets[i]:reference.offsets[i + 1]] for i in take]
    offsets = np.concatenate([[0], np.cumsum([k.shape[0] for k in kept])]).astype(np.int64)
    return Reference([reference.keys[i] for i in take], reference.mean_cp10k[take], reference.n_cells[take],
                     sp.vstack(kept, format="csr"), offsets, dict(reference.info), dict(reference.tissues))


def another_study(model, tests: dict[str, ad.AnnData], truths: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Each set's test cells under their own labels against the reference without that set."""
    rows = []
    for name, cells in tests.items():
        aligned = align_to_vocab(cells, model.vocab)
        typ = without_set(model.reference, name).typicality(aligned.X, aligned.matched, truths[name])
        scored = ~np.isnan(typ)
        by_label = {}
        for label in sorted(set(truths[name])):
            own = scored & (truths[name] == label)
            by_label[str(label)] = [int(own.sum()), float((typ[own] < -3).mean()) if own.any() else None]
        rows.append({"cells": name, "n": len(typ), "n_scored": int(scored.sum()),
                     "median_typicality": float(np.nanmedian(typ)) if scored.any() else None,
                     "typicality_below": {f"-{s:g}": float((typ[scored] < -s).mean()) if scored.any() else None
                                          for s in SDS},
                     "flagged_at_-3_by_true_label": by_label})
    return rows


def another_study_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| test cells of | n | scored | median typicality | " + " | ".join(f"typ < -{s:g}" for s in SDS)
             + " | scored cells by label: n, share below -3 |", "|---|---|---|---|" + "---|" * len(SDS) + "---|"]
    for row in rows:
        below = " | ".join("-" if row["typicality_below"][f"-{s:g}"] is None
                           else f"{row['typicality_below'][f'-{s:g}']:.3f}" for s in SDS)
        median = "-" if row["median_typicality"] is None else f"{row['median_typicality']:+.2f}"
        labels = ", ".join(f"{l} {n} {share:.2f}" for l, (n, share) in row["flagged_at_-3_by_true_label"].items() if n)
        lines.append(f"| {row['cells']} | {row['n']} | {row['n_scored']} | {median} | {below} | {labels} |")
    return lines


def generated_vs_real(model, spec: DatasetSpec, cells: ad.AnnData, truth: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Typicality of one generated cell per test cell (its conditions) and of the test cells."""
    from instructcell_agent.core_model.alignment import align_to_vocab
    from instructcell_agent.core_model.generation.evaluate import load_real, requests_for
    from instructcell_agent.core_model.generation.generator import load_generator
    from instructcell_agent.core_model.generation.sampling import sample_counts
    from instructcell_agent.core_model.instructions import load_bank

    aligned = align_to_vocab(cells, model.vocab)
    real = load_real(spec.path, spec.split_path, spec.label_key, vocab=model.vocab)
    gen = load_generator(model)
    texts, _ = requests_for(gen, real.conditions, list(load_bank("generation").valid), seed)
    counts, _ = sample_counts(model, gen, texts, seed)
    asked = [c.cell_type for c in real.conditions]
    out = {}
    for name, typ in (("generated", model.reference.typicality(counts, aligned.matched, asked)),
                      ("real", model.reference.typicality(aligned.X, aligned.matched, truth))):
        q25, q50, q75 = np.nanpercentile(typ, [25, 50, 75])
        out[name] = {"n": int(np.isfinite(typ).sum()), "median": float(q50), "q25": float(q25), "q75": float(q75),
                     "below_-3": float(np.mean(typ < -3)), "above_3": float(np.mean(typ > 3))}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model(precision=args.precision)
    if model.reference is None:
        raise SystemExit("the shipped checkpoint keeps no reference cells (instructcell fit-reference)")
    specs = {s.name: s for s in load_catalog(tasks=("annotation",))}
    labels = {name: list(spec.classes) for name, spec in specs.items()}
    tests = {name: test_cells(spec) for name, spec in specs.items()}
    truths = {name: np.asarray(get_labels(c, specs[name].label_key), str) for name, c in tests.items()}
    studies = another_study(model, tests, truths)
    if args.only_another_study:
        print("\n".join(another_study_lines(studies)))
        return
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in ("in-set, candidates", "in-set, free", "in-set, HVG-2000",
                                                               "missing types", "other tissue, free", "drug response",
                                                               "other labs")}
    seconds = {"annotate": 0.0, "typicality": 0.0}

    def run(group: str, what: str, cells: ad.AnnData, truth: np.ndarray | None = None, scored: bool = True,
            answer=ica.annotate, by_answer: bool = False, **kwargs) -> None:
        start = time.perf_counter()
        result = answer(cells, model=model, **kwargs)
        seconds["annotate"] += time.perf_counter() - start
        row = {"cells": what, **flagged(result, truth, scored, by_answer)}
        rows[group].append(row)
        logger.info("%s | %s: typicality < -3 %.3f, confidence < 0.5 %.3f", group, what,
                    row["typicality_below"]["-3"], row["confidence_below"]["0.5"])

    for name, cells in tests.items():
        context = {"species": specs[name].species, "tissue": specs[name].tissue}
        run("in-set, candidates", name, cells, truths[name], candidates=labels[name])
        run("in-set, free", name, cells, truths[name], **context)
        run("in-set, HVG-2000", name, hvg_cut(cells), truths[name], candidates=labels[name])
    kang, xin = labels["kang2018_pbmc_ifnb"], labels["xin2016_pancreas_subset"]
    zheng = tests["zheng2017_pbmc_sorted"]
    run("missing types", "zheng2017's CD34+ test cells, kang2018's labels",
        zheng[truths["zheng2017_pbmc_sorted"] == "CD34+"].copy(), candidates=kang)
    run("missing types", "xin2016's pancreas test cells, kang2018's labels (tissue given as blood)",
        tests["xin2016_pancreas_subset"], candidates=kang, tissue="peripheral blood")
    run("missing types", "bastidasponce2019's mouse pancreas test cells, xin2016's labels",
        tests["bastidasponce2019_pancreas_e155"], truths["bastidasponce2019_pancreas_e155"], scored=False,
        candidates=xin)
    for name in ("xin2016_pancreas_subset", "puram2017_headneck_chetah"):
        run("other tissue, free", f"{name} test cells, tissue given as blood", tests[name], **BLOOD)
    aissa = load_catalog(tasks=("drug_response",))[0]
    run("other tissue, free", "aissa2021_pc9_erlotinib test cells (a lung cancer cell line), tissue given as blood",
        test_cells(aissa), **BLOOD)
    aissa_cells = test_cells(aissa)
    run("drug response", "aissa2021_pc9_erlotinib test cells, erlotinib", aissa_cells,
        np.asarray(get_labels(aissa_cells, aissa.label_key), str), answer=ica.predict_drug_response, drug="erlotinib")
    run("drug response", "kang2018's blood test cells asked about erlotinib", tests["kang2018_pbmc_ifnb"],
        answer=ica.predict_drug_response, drug="erlotinib")
    pbmc3k = tests["pbmc3k_seurat"]
    shared = np.isin(truths["pbmc3k_seurat"], ["B", "NK"])  # spelled alike in kang2018
    run("other labs", "pbmc3k's B and NK test cells, kang2018's labels", pbmc3k[shared].copy(),
        truths["pbmc3k_seurat"][shared], candidates=kang)
    demo = sc.datasets.pbmc68k_reduced()
    run("other labs", "pbmc68k_reduced (765 genes), the ten bulk_labels names", demo,
        np.asarray(demo.obs["bulk_labels"], str), use_raw=True, candidates=sorted(set(demo.obs["bulk_labels"])))
    run("other labs", "pbmc68k_reduced (765 genes), free answers (blood)", demo,
        np.asarray(demo.obs["bulk_labels"], str), scored=False, use_raw=True, **BLOOD)
    sample = read_h5ad(shared_root() / "data" / "compat" / "celltypist_sample_unlabeled.h5ad")
    run("other labs", f"CellTypist's unlabelled sample ({sample.n_obs} immune cells), free answers", sample,
        by_answer=True, scored=False)

    generated = {name: generated_vs_real(model, specs[name], tests[name], truths[name])
                 for name in ("kang2018_pbmc_ifnb", "zheng2017_pbmc_sorted")}

    # the score's own cost: typicality alone on zheng2017's test cells, beside annotate's total
    aligned = align_to_vocab(zheng, model.vocab)
    for when in ("first", "again"):  # a first call measures each label's spread; later ones reuse it
        if when == "first":
            model.reference.clear_cache()
        start = time.perf_counter()
        model.reference.typicality(aligned.X, aligned.matched, truths["zheng2017_pbmc_sorted"])
        seconds[f"typicality_zheng2017_{when}"] = time.perf_counter() - start
    start = time.perf_counter()
    ica.annotate(zheng, model=model, candidates=labels["zheng2017_pbmc_sorted"])
    seconds["annotate_zheng2017"] = time.perf_counter() - start

    separations = [
        ("in-set with candidates vs missing types", rows["in-set, candidates"], rows["missing types"]),
        ("in-set free vs other tissue free", rows["in-set, free"], rows["other tissue, free"]),
    ]
    aurocs = [{"compared": what, "typicality": auroc(a, b, "typicality"), "confidence": auroc(a, b, "confidence")}
              for what, a, b in separations]
    report = {"meta": meta, "precision": model.model.precision, "sds": list(SDS), "confidences": list(CONFIDENCES),
              "rows": rows, "another_study": studies, "auroc": aurocs, "generated": generated, "seconds": seconds,
              "reference": {k: model.reference.info.get(k) for k in ("per_label", "informative_genes", "seed",
                                                                     "command")}}
    lines = ["# Cells unlike their label's training cells", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- machine: {meta['nproc']} CPU cores, load average at start {meta['loadavg']}",
             f"- ours: `ica.annotate`, default instruction, candidates in one order, calibrated confidences, "
             f"language model in {model.model.precision}; typicality against {model.reference.info.get('per_label')} "
             f"kept training cells per label, reading the {model.reference.info.get('informative_genes') or 'all'} "
             "genes whose mean differs most between the learned labels", "",
             "Share of cells flagged: typicality below -s (`unassigned_atypical=s`) and confidence below c "
             "(`unassigned_below=c`), and by either at -3 / 0.5. In-set rows also give the accuracy and the share "
             "flagged at -3 among right / wrong answers.", "",
             "| group | cells | n | median typicality | " + " | ".join(f"typ < -{s:g}" for s in SDS) + " | "
             + " | ".join(f"conf < {c:g}" for c in CONFIDENCES) + " | typ < -3 or conf < 0.5 | accuracy "
             "| flagged at -3: right / wrong |",
             "|---|---|---|---|" + "---|" * (len(SDS) + len(CONFIDENCES)) + "---|---|---|"]
    for group, group_rows in rows.items():
        for row in group_rows:
            rw = row.get("flagged_at_-3_right_wrong")
            rw_text = " / ".join("-" if v is None else f"{v:.3f}" for v in rw) if rw else ""
            lines.append(f"| {group} | {row['cells']} | {row['n']:,} | {row['median_typicality']:+.2f} | "
                         + " | ".join(f"{row['typicality_below'][f'-{s:g}']:.3f}" for s in SDS) + " | "
                         + " | ".join(f"{row['confidence_below'][f'{c:g}']:.3f}" for c in CONFIDENCES)
                         + f" | {row['either_-3_or_0.5']:.3f} | "
                         + (f"{row['accuracy']:.3f}" if "accuracy" in row else "") + f" | {rw_text} |")
    lines += ["", "Share flagged at -3 by the file's own label:", ""]
    for group in ("missing types", "other labs"):
        for row in rows[group]:
            if "flagged_at_-3_by_true_label" in row:
                lines.append(f"- {row['cells']}: " + ", ".join(
                    f"{label} {share:.2f}" for label, share in row["flagged_at_-3_by_true_label"].items()))
            if "flagged_at_-3_by_answer" in row:
                lines.append(f"- {row['cells']}, by answer (cells, share): " + ", ".join(
                    f"{label} {n} {share:.2f}" for label, (n, share) in row["flagged_at_-3_by_answer"].items()))
    lines += ["", "Another study of a learned type (no model run): each set's test cells under their own labels, "
              "scored against the reference without that set's kept cells; shares of the scored cells:", ""]
    lines += another_study_lines(studies)
    lines += ["", "AUROC of telling the second group's cells from the first's (cells pooled; lower score = "
              "flagged):", "", "| compared | typicality | confidence |", "|---|---|---|"]
    lines += [f"| {a['compared']} | {a['typicality']:.3f} | {a['confidence']:.3f} |" for a in aurocs]
    lines += ["", "Generated cells (one per test cell, its conditions) against their requested type, beside the test "
              "cells against their own:", "",
              "| set | cells | n | median | 25th / 75th percentile | below -3 | above +3 |", "|---|---|---|---|---|---|---|"]
    for name, sides in generated.items():
        lines += [f"| {name} | {side} | {v['n']} | {v['median']:+.2f} | {v['q25']:+.2f} / {v['q75']:+.2f} | "
                  f"{v['below_-3']:.3f} | {v['above_3']:.3f} |" for side, v in sides.items()]
    lines += ["", f"Cost: typicality of zheng2017's {zheng.n_obs} test cells took "
              f"{seconds['typicality_zheng2017_first']:.2f} s on a first call (each label's spread measured), "
              f"{seconds['typicality_zheng2017_again']:.2f} s again; the whole `annotate` call (typicality "
              f"included) {seconds['annotate_zheng2017']:.1f} s."]
    path = write_report(report, "\n".join(lines) + "\n", args.out_dir, "atypical_cells")
    print(path)


if __name__ == "__main__":
    main()
