"""Annotate scanpy's bundled pbmc68k_reduced with the shipped checkpoint (no download needed).

Its `bulk_labels` name the same sorted PBMC populations as zheng2017_pbmc_sorted (plus
"Dendritic"), so we can print how often the model agrees with them.

    python examples/demo_pbmc68k.py [--out runs/demo/pbmc68k_annotated.h5ad]
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import scanpy as sc

import instructcell_agent as ica
from instructcell_agent.core_model.io import write_h5ad_atomic
from instructcell_agent.core_model.precision import PRECISIONS


def cells(n: int) -> str:
    return f"{n} cell" if n == 1 else f"{n} cells"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/demo/pbmc68k_annotated.h5ad")
    parser.add_argument("--cells", type=int, default=300,
                        help="random cells for the free-answer run (all 700 take a few minutes on 2 CPU cores)")
    parser.add_argument("--scored-cells", type=int, default=300,
                        help="of those, cells for the candidate-scoring run (10 candidates: several times the work "
                             "of a free answer)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="language-model compute dtype "
                             "(auto: bfloat16 on a CPU with fast bfloat16 units, else float32)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    adata = sc.datasets.pbmc68k_reduced()  # ships inside scanpy
    rng = np.random.default_rng(0)
    if args.cells < adata.n_obs:
        adata = adata[np.sort(rng.choice(adata.n_obs, args.cells, replace=False))].copy()
    known = adata.obs["bulk_labels"].astype(str).to_numpy()
    print(f"pbmc68k_reduced: {adata.n_obs} random cells (--cells); X is scaled (z-scores), so the log-normalized adata.raw is used")

    start = time.perf_counter()
    model = ica.load_model(precision=args.precision)
    print(f"loaded {model.path} in {time.perf_counter() - start:.1f} s "
          f"(language model in {model.model.precision}; --precision {args.precision})")

    start = time.perf_counter()
    # What a user knows about these cells: the prompt names them, and free answers are then
    # decoded within the labels the checkpoint learned for human peripheral blood.
    # resolve_at: beside each label, the finest answer reaching p 0.9 (a broader Cell Ontology type
    # where the model is torn between fine ones), from the same probabilities
    free = ica.annotate(adata, model=model, use_raw=True, species="human", tissue="peripheral blood", resolve_at=0.9)
    free_s = time.perf_counter() - start
    print("\nAlignment report:\n" + free.provenance["alignment_summary"])

    candidates = sorted(set(known))
    subset = adata if args.scored_cells >= adata.n_obs else \
        adata[np.sort(rng.choice(adata.n_obs, args.scored_cells, replace=False))].copy()
    sub_known = subset.obs["bulk_labels"].astype(str).to_numpy()
    start = time.perf_counter()
    scored = ica.annotate(subset, model=model, use_raw=True, candidates=candidates)
    scored_s = time.perf_counter() - start

    print("\n1) Free answers (no candidates given; species human, tissue peripheral blood):")
    print(free.summary())
    # agreement: answers read onto the bulk_labels names (same name, Cell Ontology synonym or finer type)
    print(f"agreement with bulk_labels: {free.agreement(known).agreement:.3f}  ({adata.n_obs / free_s:.1f} cells/s)")
    print(free.resolved_agreement(known).summary("bulk_labels"))
    print(f"\n2) Candidates = the {len(candidates)} bulk_labels names, {subset.n_obs} random cells:")
    print(scored.summary())
    print(f"agreement with bulk_labels: {scored.agreement(sub_known).agreement:.3f}  ({subset.n_obs / scored_s:.1f} cells/s)")
    # The same answers with the least confident ones set aside (no second model pass): what a
    # user does when unsure the candidates cover every type in the file.
    sure = scored.unassigned_below(0.5)
    kept = sure.agreement(sub_known)
    print(f"with unassigned_below=0.5: {cells(sure.n_unassigned())} 'Unassigned', agreement on the other "
          f"{kept.n_compared}: {kept.agreement:.3f}")
    # Or by how unlike the training cells of their label the cells are (typicality, in those
    # cells' standard deviations), which works for free answers too.
    for name, result, labels in (("free", free, known), ("scored", scored, sub_known)):
        unlike = result.unassigned_atypical(3)
        kept = unlike.agreement(labels)
        print(f"with unassigned_atypical=3 ({name} answers): {cells(unlike.n_unassigned())} 'Unassigned', agreement "
              f"on the other {kept.n_compared}: {kept.agreement:.3f}")
    # The peer that needs no training: the same names and cells answered from their known markers
    # alone (PanglaoDB), what annotate_by_markers gives for types the model never learned.
    start = time.perf_counter()
    by_markers = ica.annotate_by_markers(subset, candidates, model=model, use_raw=True)
    print(f"known markers alone (annotate_by_markers, no model), the same names and cells: agreement "
          f"{by_markers.agreement(sub_known).agreement:.3f}  ({subset.n_obs / (time.perf_counter() - start):.0f} "
          "cells/s)")
    print("\nPer known label (free answers):")
    print(free.agreement(known).summary("bulk_labels"))
    # A second opinion that asks no model: how well each free answer's known markers (PanglaoDB)
    # single out the cells given it, against the file's other cells.
    print("\nThe free answers against their known markers:")
    print(ica.marker_check(adata, free.labels, model=model, use_raw=True).summary())

    out = free.to_adata(adata.copy(), key_added="instructcell")
    path = write_h5ad_atomic(out, args.out)
    print(f"\nwrote {path} (obs['instructcell_label'], obs['instructcell_confidence'], "
          "obs['instructcell_typicality'], obs['instructcell_ontology_id'], obs['instructcell_ontology_name'], "
          "uns['instructcell'])")
    picture = path.with_name(path.stem.replace("_annotated", "") + "_map.png")
    drawn = free.draw_map(adata, picture)  # the file's own UMAP: the free answers where its owner sees the cells
    print(f"wrote {picture} (free answers and their confidence on {drawn.source})")


if __name__ == "__main__":
    main()
