"""Genes named the newer way: zheng2017's test split as newer files name its genes, answered with
and without the alignment's earlier-name step (`core_model/genes.py::earlier_name`).

The vocabulary keeps the names its training files used, and zheng2017's are old ('SARS' for what
GENCODE v44 calls SARS1, ids since retired for CCL3/CCL4/CCL5). Three copies of the file:

- its own symbols (as the benchmark tables read it);
- Ensembl ids alone (its own `var['ensembl']`, no symbol column);
- GENCODE v44 symbols (each id's current name; ids v44 lacks dropped, as a newer file would not
  hold them).

Each copy is aligned and evaluated (`evaluate`, own phrasings, seed 0) with the step and, as the
peer in the same run, without it (the step switched off by patching `alignment.earlier_name`).

    python benchmarks/gene_names.py [--precision float32] [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Sequence
from unittest import mock

import anndata as ad

import instructcell_agent as ica
from instructcell_agent.core_model import alignment, genes
from instructcell_agent.core_model.datasets import load_catalog
from instructcell_agent.core_model.evaluation import evaluate
from report_io import run_meta, write_report

logger = logging.getLogger("gene_names")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def renamed_copies(path: Path, folder: Path) -> dict[str, Path]:
    """The file as it is, by Ensembl ids alone, and by GENCODE v44 symbols (written to `folder`)."""
    z = ad.read_h5ad(path)
    ids = z.var["ensembl"].astype(str).tolist()
    by_id = z.copy()
    by_id.var = z.var.drop(columns=["ensembl"]).set_axis(ids)
    table = genes.ensembl_to_symbol_table()
    keep = [i for i, g in enumerate(ids) if g in table]
    v44 = z[:, keep].copy()
    v44.var = v44.var.drop(columns=["ensembl"]).set_axis([table[ids[i]] for i in keep])
    v44.var_names_make_unique()
    copies = {"its own symbols": path}
    for name, adata in (("Ensembl ids alone", by_id), ("GENCODE v44 symbols", v44)):
        copies[name] = folder / f"{name.split()[0]}.h5ad"
        adata.write_h5ad(copies[name])
    return copies


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    meta = run_meta(shlex.join(["python", *sys.argv]))
    spec = next(s for s in load_catalog(tasks=("annotation",)) if s.name == "zheng2017_pbmc_sorted")
    model = ica.load_model(precision=args.precision)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in renamed_copies(spec.path, Path(tmp)).items():
            for step in (False, True):
                # the peer: the step switched off; otherwise the code as shipped
                peer = mock.patch.object(alignment, "earlier_name", lambda *_: None)
                with contextlib.nullcontext() if step else peer:
                    n = alignment.align_to_vocab(ad.read_h5ad(path), model.vocab).report.n_matched
                    result = evaluate(model, path, spec.split_path, "cta", spec.label_key, seed=0)
                rows.append({"named_by": name, "earlier_names": step, "genes_matched": n,
                             "accuracy": result["accuracy"], "macro_f1": result["macro_f1"]})
                logger.info("%s, earlier names %s: %d genes, accuracy %.3f, macro-F1 %.3f", name,
                            "on" if step else "off", n, result["accuracy"], result["macro_f1"])
    report = {"meta": meta, "precision": model.model.precision, "dataset": spec.name, "rows": rows}
    lines = ["# Genes named the newer way (zheng2017 test split)", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}",
             f"- ours: `evaluate(..., seed=0)`, own phrasings, language model in {model.model.precision}", "",
             "| genes named by | earlier-name step | vocabulary genes matched | accuracy | macro-F1 |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['named_by']} | {'on' if r['earlier_names'] else 'off'} | {r['genes_matched']:,} | "
              f"{r['accuracy']:.3f} | {r['macro_f1']:.3f} |" for r in rows]
    print(write_report(report, "\n".join(lines) + "\n", args.out_dir, "gene_names"))


if __name__ == "__main__":
    main()
