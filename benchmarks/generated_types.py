"""Which learned types the generator renders well: generated cells' typicality, type by type.

For every condition in the shipped generator's table (cell type x species x tissue x condition
text, as learned from each training set), `ica.generate_cells` draws N cells (seeded) with that
record's full conditions, and typicality (core_model/reference.py) scores them against the type
asked for, on the genes of the record's own file, beside the same set's real test cells of that
type, species and condition on the same genes: a type rendered well scores as its real cells do.
Also: the training cells the record holds, which training condition the generator read the
instruction as (its signal token's nearest; "read as asked" when it is this record, or the same
condition from another set), whether the call warned that most cells came out atypical
(`AtypicalCellsWarning`), and the rank correlation of the generated-minus-real median with the
training cell count.

Twice, side by side: with the default phrasing (it names species, tissue and sequencing method)
and with the phrasing that was the default before 2026-12-05, naming the cell type (and the
condition) only, "Generate one {cell_type}." / "Generate one {cell_type} in the {condition}
condition.".

    python benchmarks/generated_types.py [--n 100] [--seed 0] [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.stats import spearmanr

import instructcell_agent as ica
from instructcell_agent.core_model.alignment import align_to_vocab
from instructcell_agent.core_model.context import canonical_species
from instructcell_agent.core_model.datasets import load_catalog, read_split, subset_by_names
from instructcell_agent.core_model.generation.conditions import condition_text
from instructcell_agent.core_model.generation.generator import load_generator
from instructcell_agent.core_model.io import read_h5ad
from instructcell_agent.core_model.reference import AtypicalCellsWarning
from report_io import run_meta, write_report

logger = logging.getLogger("generated_types")
# the phrasings that were the default before 2026-12-05 (without / with a condition)
CELL_TYPE_ONLY = ("Generate one {cell_type}.", "Generate one {cell_type} in the {condition} condition.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="cells generated per condition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


class RealCells:
    """One set's test cells on the model's genes, with each cell's label, species and condition."""

    def __init__(self, model, spec) -> None:
        cells = subset_by_names(read_h5ad(spec.path), read_split(spec.split_path)["test"], "test")
        self.aligned = align_to_vocab(cells, model.vocab)
        obs = cells.obs
        self.labels = obs[spec.label_key].astype(str).to_numpy()
        species = obs["species"].astype(str) if "species" in obs else [spec.species] * cells.n_obs
        self.species = np.array([canonical_species(s) for s in species])
        self.conditions = (np.array([condition_text(c) for c in obs["condition"].astype(str)])
                           if "condition" in obs else np.full(cells.n_obs, ""))

    def rows(self, cell_type: str, species: str, condition: str) -> np.ndarray:
        keep = (self.labels == cell_type) & (self.species == canonical_species(species))
        return np.flatnonzero(keep & (self.conditions == condition)) if condition else np.flatnonzero(keep)


def summary(typ: np.ndarray) -> dict[str, Any]:
    scored = typ[np.isfinite(typ)]
    if not scored.size:
        return {"n": 0, "median": None, "below_-3": None}
    return {"n": int(scored.size), "median": float(np.median(scored)), "below_-3": float(np.mean(scored < -3))}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    meta = run_meta(shlex.join(["python", *sys.argv]))
    model = ica.load_model(precision=args.precision)
    if model.reference is None:
        raise SystemExit("the shipped checkpoint keeps no reference cells (instructcell fit-reference)")
    specs = {s.name: s for s in load_catalog(tasks=("annotation",))}
    real: dict[str, RealCells] = {}
    rows = []
    table = load_generator(model).table
    for record in table.records:
        c = record.condition
        if record.dataset not in real:
            real[record.dataset] = RealCells(model, specs[record.dataset])
        cells = real[record.dataset]
        own = cells.rows(c.cell_type, c.species, c.condition)
        row = {"dataset": record.dataset, "cell_type": c.cell_type, "species": c.species, "tissue": c.tissue,
               "condition": c.condition, "n_train": record.n_cells,
               "real_test": summary(model.reference.typicality(cells.aligned.X[own], cells.aligned.matched,
                                                               [c.cell_type] * len(own)))}
        for variant, instruction in (("default", None), ("cell_type_only", CELL_TYPE_ONLY[bool(c.condition)])):
            row[variant] = generated(model, table, record, cells, instruction, args)
        rows.append(row)
        logger.info("%s %s %s: %s", record.dataset, c.cell_type, c.condition, row["default"])
    report = {**meta, "n_per_condition": args.n, "seed": args.seed, "precision": args.precision, "rows": rows,
              "variants": {v: totals(rows, v) for v in ("default", "cell_type_only")}}
    path = write_report(report, markdown(report), args.out_dir, "generated_types")
    print(path)


def generated(model, table, record, cells: RealCells, instruction: str | None, args) -> dict[str, Any]:
    """N cells of the record's full conditions, scored on its file's genes, and what was read."""
    c = record.condition
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cells_out = ica.generate_cells(model=model, cell_type=c.cell_type, species=c.species, tissue=c.tissue,
                                       condition=c.condition or None, sequencing_method=c.sequencing_method,
                                       instruction=instruction, n=args.n, seed=args.seed)
    provenance = cells_out.uns["instructcell_generation"]
    if provenance.get("learned_from") != record.dataset:  # the request must reach this very record
        raise SystemExit(f"{c} resolved to {provenance.get('learned_from')}, not {record.dataset}")
    read = provenance["understood_as"]
    same = [read.get(f, "") for f in ("cell_type", "species", "tissue", "condition")] == \
        [c.cell_type, c.species, c.tissue, c.condition]
    typ = model.reference.typicality(cells_out.X, cells.aligned.matched, [c.cell_type] * cells_out.n_obs)
    return {**summary(typ), "read_as": f"{read['dataset']}: {read['cell_type']} / {read['species']}",
            "read_as_asked": bool(same), "warned_atypical": any(issubclass(w.category, AtypicalCellsWarning)
                                                                for w in caught)}


def totals(rows: list[dict[str, Any]], variant: str) -> dict[str, Any]:
    """Conditions read as asked; warned; the rank correlation of training cells with the
    generated-minus-real median typicality."""
    paired = [(r["n_train"], r[variant]["median"] - r["real_test"]["median"]) for r in rows
              if r[variant]["median"] is not None and r["real_test"]["median"] is not None]
    rho = spearmanr(*zip(*paired)) if len(paired) > 2 else None
    gaps = [g for _, g in paired]
    return {"read_as_asked": sum(r[variant]["read_as_asked"] for r in rows), "n": len(rows),
            "warned_atypical": sum(r[variant]["warned_atypical"] for r in rows),
            "median_gap": float(np.median(gaps)) if gaps else None,
            "spearman_n_train_vs_gap": None if rho is None else {"rho": float(rho.statistic), "p": float(rho.pvalue),
                                                                 "n": len(paired)}}


def markdown(report: dict[str, Any]) -> str:
    def fmt(x, spec="+.2f"):
        return "-" if x is None else format(x, spec)

    lines = ["# Generated cells of each learned type against the real cells of that type", "",
             f"- command: `{report['command']}`", f"- date: {report['date']}",
             f"- machine: {report['nproc']} CPU cores, load average at start {report['loadavg']}",
             f"- ours: `ica.generate_cells`, {report['n_per_condition']} cells per condition (seed "
             f"{report['seed']}), every field of the training record given; language model in {report['precision']}",
             "- typicality against the type asked for, on the genes of the record's own file, for the generated "
             "cells and for that set's real test cells of the type (same species; same condition where the set has "
             "conditions); 0: as alike as the type's training cells are, -3: three of their standard deviations "
             "less", ""]
    lines += ["| phrasing | conditions read as asked | median of generated-minus-real medians | rank correlation of "
              "training cells with that difference | calls warned atypical |", "|---|---|---|---|---|"]
    for variant, t in report["variants"].items():
        rho = t["spearman_n_train_vs_gap"]
        lines.append(f"| {variant.replace('_', ' ')} | {t['read_as_asked']} of {t['n']} | {fmt(t['median_gap'])} | "
                     + (f"{rho['rho']:+.2f} (p = {rho['p']:.3g}, {rho['n']} conditions)" if rho else "-")
                     + f" | {t['warned_atypical']} |")
    lines += ["", "Per condition (generated: median typicality / share below -3; 'read as' where the instruction was "
              "read as another training condition; 'warned': the call's AtypicalCellsWarning):", "",
              "| set | cell type | species / tissue | condition | training cells | real test n / median / below -3 | "
              "default phrasing | cell type only |", "|---|---|---|---|---|---|---|---|"]

    def cell(g: dict[str, Any]) -> str:
        read = "" if g["read_as_asked"] else f"; read as {g['read_as']}"
        return f"{fmt(g['median'])} / {fmt(g['below_-3'], '.2f')}{read}{'; warned' if g['warned_atypical'] else ''}"

    for r in report["rows"]:
        t = r["real_test"]
        lines.append(f"| {r['dataset']} | {r['cell_type']} | {r['species']} / {r['tissue']} | {r['condition'] or '-'} "
                     f"| {r['n_train']} | {t['n']} / {fmt(t['median'])} / {fmt(t['below_-3'], '.2f')} | "
                     f"{cell(r['default'])} | {cell(r['cell_type_only'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
