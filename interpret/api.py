"""`explain`: which genes drive the model's answer, per label, checked against marker databases.

    import instructcell_agent as ica
    result = ica.explain(adata, model=ica.load_model(), dataset="xin2016_pancreas_subset")
    result.top_genes                  # label, rank, gene, score, is_known_marker
    result.marker_report              # precision at 10 vs PanglaoDB, ours and wilcoxon's
    vocab_adata = result.to_adata()   # uns["instructcell_saliency"] in rank_genes_groups layout
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from instructcell_agent.core_model.alignment import align_to_vocab, empty_cells
from instructcell_agent.core_model.candidate_route import (CandidateNoteWarning, CandidateRoute, ontology_note,
                                                           route_candidates)
from instructcell_agent.core_model.cell_encoder import log_normalize_csr
from instructcell_agent.core_model.checkpoint import LoadedModel
from instructcell_agent.core_model.datasets import prompt_fields
from instructcell_agent.core_model.errors import InputFileError, InvalidValuesError
from instructcell_agent.core_model.instructions import has_choices, render
from instructcell_agent.core_model.io import write_h5ad_atomic, write_json_atomic
from instructcell_agent.core_model.readout import one_set, readout_name
from instructcell_agent.core_model.scoring import check_scoring, scoring_name, use_decisive

from .aggregate import DEFAULT_NORMALIZE, NORMALIZATIONS, cell_scores, label_means, rankings
from .attribution import METHODS, RUNNER_UP, IGSettings, attribute
from .marker_explain import (answering_markers, by_markers_note, circular_precision, marker_attributions,
                             markers_only_attributions, merged)
from .markers import (DEFAULT_DB, PRECISION_K, MarkerDB, load_marker_db, marker_report, wilcoxon_pair_rankings,
                      wilcoxon_rankings)
from .result import DEFAULT_KEY, ExplanationResult
from .targets import (answer_candidates, answers_first, broader_types, candidates_of, cap_per_label, check_cap,
                      check_in_candidates, contrast_groups, drug_and_task, given_labels, per_cell_versus,
                      recorded_candidates, recorded_probabilities, set_of_free_answers, versus_indices,
                      without_unlabelled)

REFERENCES = ("train", "zero", "mean")

log = logging.getLogger(__name__)


def explain(adata: ad.AnnData, model: LoadedModel | None = None, labels: str | Sequence[str] | None = None,
            method: str = "saliency", top_k: int = 10, *, dataset: str | None = None,
            candidates: Sequence[str] | None = None, instruction: str | None = None,
            normalize: str = DEFAULT_NORMALIZE, reference: str | np.ndarray = "train",
            n_steps: int = 64, ig_tolerance: float | None = 0.05, batch_size: int = 16,
            marker_db: str = DEFAULT_DB, compare_wilcoxon: bool = True,
            species: str | None = None, layer: str | None = None, use_raw: bool = False,
            gene_key: str | None = None, min_genes: int = 100, scoring: str = "auto", readout: bool = True,
            max_cells_per_label: int | None = None, seed: int = 0, drug: str | None = None, fast: bool = False,
            versus: str | Sequence[str] | None = None, progress: Callable[[int, int], None] | None = None,
            answer_progress: Callable[[int, int], None] | None = None) -> ExplanationResult:
    """Gene saliency of every cell for its label, aggregated per label, checked against markers.

    Parameters
    ----------
    adata
        Cells to explain (never modified).
    model
        A loaded checkpoint (default: the shipped one).
    labels
        What to explain. None: each cell's predicted label. An ``obs`` column name: each cell's
        label in that column. A candidate label name: that label for every cell. A sequence:
        one label per cell. Cells are grouped by this label for the per-label ranking.
    method
        ``"saliency"`` (gradient x input, default), ``"gradient"`` (plain gradient) or ``"ig"``
        (Integrated Gradients from a zero baseline, with its convergence delta).
    top_k
        Genes reported per label.
    dataset, candidates
        The labels scored for every cell: `candidates` if given, else the label set `dataset`
        of the checkpoint, else the candidates ``annotate`` recorded in ``uns`` when `labels` names
        a column its ``to_adata`` wrote (``instructcell_label``, ``instructcell_resolved``), else
        the labels passed in `labels`, else the learned label set that
        holds most of the cells' free answers (``annotate`` without candidates, on up to 256 evenly
        spaced cells; at least half of them), else all annotation labels of the checkpoint.
    instruction
        Prompt template (default: the API's annotation phrasing listing the candidates).
    normalize
        Per-cell normalisation before the per-label mean: ``"none"`` (default, raw attributions)
        or ``"minmax"`` (each cell's supporting attributions scaled to [0, 1], after the
        InstructCell paper); see :mod:`~instructcell_agent.interpret.aggregate` for why.
    reference
        What ``saliency`` and ``ig`` measure each cell against (``gradient`` ignores it):
        ``"train"`` (default) the mean log1p(CP10k) training cell of the label set being scored
        (`dataset`, else the checkpoint's sets holding the scored labels, pooled; kept beside the
        read-out, so a checkpoint without one falls back to ``"zero"`` with a note): why this
        label rather than an average cell of its kind, so housekeeping genes drop out of the
        rankings, and it does not depend on which cells are passed in (one cell works as well
        as a thousand); ``"zero"`` (no expression); ``"mean"`` (the mean cell of the cells passed
        in); or one log1p(CP10k) value per model gene. Rankings and per-cell top genes count a
        gene where the cell expresses it above the reference (for ``"zero"``: where it is
        expressed); the full signed attributions stay in the layers.
    n_steps, ig_tolerance, batch_size
        Integrated Gradients: integration points of the first pass, and the completeness
        |delta| (log-probability units) below which pieces of the path stop being refined (None:
        one pass; see :class:`~instructcell_agent.interpret.attribution.IGSettings`); cells per
        forward pass.
    marker_db, compare_wilcoxon, species
        Marker database for validation (``"panglaodb"`` or ``"cellmarker2"``), whether to rank
        the same cells by scanpy's wilcoxon test for comparison, and whose database entries to
        use (default: the species the gene alignment detected).
    layer, use_raw, gene_key, min_genes
        Which matrix and gene names to read (see ``align_to_vocab``).
    scoring
        As in ``annotate`` (``core_model/scoring.py``): "auto" explains the log-probability of
        learned labels' decisive tokens, the quantity ``annotate`` answers with by default.
    readout
        As in ``annotate``: where the checkpoint has a linear gene read-out and the scored labels
        are one learned label set, the explained log-probability includes its weighted term (the
        quantity ``annotate`` answers with). False: the language model's alone.
    drug
        Explain drug-response answers instead of cell types: the prompt asks about this drug as
        ``predict_drug_response`` does (its default instruction; a given `instruction` may use
        ``{drug}``), and the candidates default to the response labels the checkpoint learned
        (resistant / sensitive). A drug the checkpoint never learned gets the same warning and
        note as in ``predict_drug_response``. A drug-response `dataset` brings its own drug.
    max_cells_per_label, seed
        Explain at most this many cells of each label, drawn at random (`seed`), in file order:
        the per-label ranking is a mean over cells, and attribution costs a backward pass per
        cell. Without `labels` every cell is answered first (``annotate`` or
        ``predict_drug_response`` over the same candidates, no gradients, several times cheaper
        than attribution) and the cells are drawn from each answer. The result then holds the
        cells explained (``result.obs_names``); see benchmarks/results/explain_subsample.md for
        how the rankings hold up.
    versus
        Why each cell's label rather than another: explain log p(label) - log p(`versus`) instead of
        log p(label). A candidate label (the same for every cell); ``"runner-up"``: each cell's
        most probable other candidate; an ``obs`` column (it wins over a candidate of the same name)
        or one label per cell, e.g. the labels an author gave, to ask why the model's answer rather
        than the author's (names read through the Cell Ontology as free answers are; cells whose
        label is missing or names no candidate are left out). The other candidates then drop out of
        the explained quantity
        (the softmax's normaliser cancels), so the rankings name what tells the two apart rather
        than what sets the label off from every candidate. Cells are grouped as ``'A vs B'``;
        cells whose label is `versus` itself are left out (with a note); the marker check counts
        the known markers of A that the database does not list for B, and wilcoxon ranks A's cells
        against B's (None where either has fewer than two cells).
    fast
        For those answers given first: as in ``annotate``, cells the linear read-out is sure of
        take its answer without the language model (core_model/readout_first.py); on a large
        file answering every cell costs more than explaining the cells drawn. The attributions
        themselves always go through the language model.
    progress, answer_progress
        Called with (cells done, total) after each attribution batch, and after each batch of the
        answers given first (`max_cells_per_label` without labels); an exception either raises
        stops the work there (the server's cancellation).

    Returns
    -------
    ExplanationResult

    Raises
    ------
    LabelKeyError
        A label that is neither an ``obs`` column nor among the candidates.
    CheckpointError
        `dataset` is not a label set of the checkpoint.
    ValueError
        Unknown method, normalisation or reference, bad `top_k`, labels of the wrong length.
    """
    _check_options(method, normalize, top_k, reference)
    check_cap(max_cells_per_label)
    check_scoring(scoring)
    if model is None:
        from instructcell_agent.api import load_model

        model = load_model()
    started = time.perf_counter()
    given = given_labels(adata, labels)
    versus_by_cell = per_cell_versus(adata, versus)  # read before any cell is left out
    recorded_note = None
    if candidates is None and dataset is None:  # an annotated file's own answers: annotate's candidates
        candidates, recorded_note = recorded_candidates(adata, labels)
    n_cells_in = adata.n_obs
    drug, task = drug_and_task(model, dataset, drug)
    matrix = dict(layer=layer, use_raw=use_raw, gene_key=gene_key, min_genes=min_genes)
    inferred_note = answers_note = None
    if candidates is None and dataset is None and given is None and task == "annotation":
        dataset, inferred_note = set_of_free_answers(model, adata, species=species, **matrix)
    answered = given is None and max_cells_per_label is not None
    if answered:  # the cells to draw are known only from their answers: annotate first (no gradients)
        given, answers_note = answers_first(model, adata, answer_candidates(model, candidates, dataset, drug), drug,
                                            species=species or "", scoring=scoring, readout=readout,
                                            progress=answer_progress, fast=fast, **matrix)
    adata, given, unlabelled_note = without_unlabelled(adata, given, candidates)
    subsample_note = None
    if max_cells_per_label is not None:
        adata, given, subsample_note = cap_per_label(adata, given, max_cells_per_label, seed)
    cands = candidates_of(model, dataset, candidates, None if answered else given, task)
    # resolve_at's broader answers, over candidates the caller named (labels taken as the candidates
    # hold no broader type: it would be a candidate of its own)
    broader = broader_types(given, cands) if candidates is not None or dataset is not None else []
    explained = [*cands, *(name for name, _ in broader)]
    given = check_in_candidates(given, explained, adata.n_obs)
    against, adata, given, versus_note = versus_indices(versus, versus_by_cell, explained, adata, given)
    aligned = align_to_vocab(adata, model.vocab, layer=layer, use_raw=use_raw, gene_key=gene_key, min_genes=min_genes)
    # A cell with no counts on the model's genes has nothing to explain; measured against the mean
    # training cell its attributions would only echo the reference, so the per-label means skip it.
    empty = empty_cells(aligned.X)
    if empty.all():
        raise InvalidValuesError(f"none of the {adata.n_obs:,} cells has counts on any of the model's genes; "
                                 "nothing to explain (check the matrix read: layer=..., use_raw=...)")
    # Candidates the user named (or the labels of their obs column) may be spelled unlike anything
    # the checkpoint learned; its own label sets need no routing.
    user_named = candidates is not None or (dataset is None and labels is not None and not isinstance(given, str))
    route = route_candidates(cands, model.label_sets, task) if user_named else None
    notes = [route.note] if route is not None and route.note else []
    notes += [note for note in (recorded_note, inferred_note, answers_note, unlabelled_note, subsample_note,
                                versus_note) if note]
    notes += [f"{name!r} explained as a broader type: the summed probability of {', '.join(cands[i] for i in g)}"
              for name, g in broader]
    if drug is not None:
        from instructcell_agent.api import UnseenContextWarning, unseen_drug_note

        if drug_note := unseen_drug_note(model, drug):
            notes.append(drug_note)
            warnings.warn(drug_note, UnseenContextWarning, stacklevel=2)
    if route is not None and route.kind == "ontology" and instruction and has_choices(instruction):
        instruction = None  # the open question is asked (see route_candidates)
        notes.append("the instruction lists the candidates ({choices}), which this route cannot use; "
                      "the default open question was asked instead")
    template, prefixes, rows = _prompts(model, adata, instruction, cands, route, drug)
    decisive = use_decisive(scoring, route.scores_learned_labels if route is not None else True)
    target = None if given is None else np.array([explained.index(l) for l in given], dtype=np.int64)
    scored = list(route.learned) if route is not None and route.kind == "ontology" else cands
    # Only over one learned set: across sets `annotate` lets the LM pick the set first, a choice
    # that has no gradient (core_model/readout.py).
    expert = model.readout_for(aligned.matched) if readout and model.readout is not None \
        and model.readout.covers(scored) and one_set(scored, model.label_lists) else None
    species = species or aligned.report.species
    # marker databases list cell types: a drug response has no markers to check against
    db = load_marker_db(marker_db) if task == "annotation" else None
    found, answers_db = {}, db
    if db is not None and versus is None:  # answers known markers gave are explained by those markers
        found, recorded_db = answering_markers(adata, labels, _answered_by_markers(route),
                                               route.candidates if route is not None else cands, db, species)
        answers_db = load_marker_db(recorded_db) if recorded_db and recorded_db != db.name else db
    # every candidate answered from its markers: the model has no part in the answers, and is not run
    markers_only = bool(found) and set(cands) <= set(found) and not broader
    # the never-learned names are annotate's markers' to decide, not scored as text as the route's note says
    gated = route is not None and route.kind == "ontology" and bool(route.unrouted) \
        and set(route.unrouted) <= set(found)
    if markers_only and route is not None and route.note in notes:
        notes.remove(route.note)  # how the model would score them: it is not asked
    elif gated:
        names = ", ".join(map(repr, route.unrouted))
        notes[notes.index(route.note)] = (f"{ontology_note(len(route.learned) - len(route.unrouted))} {names}: "
                                          "never learned by this checkpoint; annotate answers them from their known "
                                          "markers, and cells given them are explained by those markers")
    ref_name = None if method == "gradient" or markers_only else reference if isinstance(reference, str) else "given"
    ref, ref_sets = _reference(reference, aligned.X, model, dataset, scored) if ref_name else (None, [])
    if ref_name == "train" and ref is None:
        ref_name = "zero"
        notes.append("the checkpoint keeps no mean training cells (refit its read-out with `instructcell "
                     "train-readout`); attributions are measured against zero expression instead")
    if markers_only:
        attr = markers_only_attributions(adata, aligned.X, cands, target, found, model=model, db=answers_db,
                                         species=species, method=method,
                                         recorded=recorded_probabilities(adata, labels, cands),
                                         **{k: matrix[k] for k in ("layer", "use_raw", "gene_key")})
        if progress is not None:
            progress(adata.n_obs, adata.n_obs)
    else:
        attr = attribute(model.model, aligned.X, cands, prefixes, rows, target, method=method,
                         batch_size=batch_size, ig=IGSettings(n_steps, min(8, n_steps), ig_tolerance,
                                                              max_steps=16 * n_steps),
                         reference=ref, progress=progress, route=route, decisive=decisive, readout=expert,
                         broader=broader, versus=against)
    groups = given if given is not None else np.asarray(cands, dtype=object)[attr.predicted].astype(str)
    answered_labels = set(map(str, groups))  # before a contrast turns them into 'A vs B' groups
    pairs: dict[str, tuple[str, str]] = {}
    obs_names = list(aligned.obs_names)
    if versus is not None:  # 'A vs B' groups; a cell answered B itself has nothing to contrast
        keep, groups, pairs, contrast_note = contrast_groups(attr, groups)
        attr, adata, empty = attr.subset(keep), adata[keep], empty[keep]
        obs_names = [obs_names[i] for i in keep]
        other = ("its runner-up" if versus == RUNNER_UP else versus if versus_by_cell is None
                 else f"its label in obs[{versus!r}]" if isinstance(versus, str) else "its versus label")
        notes += [f"each cell explained as log p(its label) - log p({other}): the genes that make it that label "
                  "rather than the other"]
        notes += [contrast_note] if contrast_note else []
        explained = list(pairs)  # the means' row order: by label, then by versus, as explained lists them
    if empty.any():  # a group named by no candidate is left out of the means
        notes.append(f"{int(empty.sum()):,} cells with no counts on any of the model's genes were left out of "
                     "the per-label means")
    counted_groups = np.where(empty, "", groups)
    by_markers = None
    if found := {name: genes for name, genes in found.items() if name in answered_labels}:
        by_markers = marker_attributions(adata, counted_groups, found, vocab=model.vocab, normalize=normalize,
                                         species=species, db=answers_db,
                                         **{k: matrix[k] for k in ("layer", "use_raw", "gene_key")})
        notes.append(by_markers_note(by_markers, len(obs_names), subsample_note is not None, markers_only))
    elif versus is not None and (unlearned := [n for n in _answered_by_markers(route) if n in answered_labels]):
        notes.append(f"{', '.join(map(repr, unlearned))}: never learned by this checkpoint; contrasted through the "
                     "model's scores for the names as text, not the known markers annotate answers them from")
    if route is not None and (route.kind == "text" or route.unrouted):
        # what the model's scores make of names it never learned: moot where every answer
        # explained is explained by its markers
        if not (gated or markers_only) and (by_markers is None or not set(map(str, groups)) <= set(by_markers.labels)):
            warnings.warn(route.note, CandidateNoteWarning, stacklevel=2)
        elif route.note in notes:
            notes.remove(route.note)
    means = label_means(cell_scores(*merged(attr.values, attr.above_reference, by_markers, groups, model.vocab),
                                    normalize), counted_groups, model.vocab, order=explained)
    report = _marker_comparison(means, db, species, model.vocab, attr.inputs, groups, compare_wilcoxon, pairs,
                                np.asarray(attr.explained)[attr.target])
    if report is not None and by_markers is not None:
        report = circular_precision(report, by_markers.labels)
    provenance = {
        "method": method, "instruction": template,
        "target": "answers (annotated first)" if answered else "given" if given is not None else "predicted",
        "task": task, "drug": drug, "versus": versus,
        "candidates": cands, "candidate_route": route.kind if route is not None else "learned",
        "broader_types": {name: [cands[i] for i in g] for name, g in broader},
        "scoring": scoring_name(decisive),
        "readout": readout_name(expert, scored),
        "normalize": normalize,
        "reference": ref_name, "reference_sets": ref_sets,
        "n_steps": n_steps if method == "ig" else None,
        "ig_tolerance": ig_tolerance if method == "ig" else None,
        "marker_db": marker_db if db is not None else None, "marker_db_source": db.source if db else None,
        "species": species, "checkpoint": str(model.path) if model.path else None,
        "backbone": model.model.cfg.backbone.name, "alignment": aligned.report.to_dict(),
        "alignment_summary": aligned.report.summary(), "seconds": time.perf_counter() - started,
        "n_cells_in": n_cells_in, "max_cells_per_label": max_cells_per_label,
        "seed": seed if max_cells_per_label is not None else None,
        "explained_by_markers": by_markers.n_markers if by_markers is not None else None,
        "notes": notes,
    }
    return ExplanationResult(obs_names, list(model.vocab), np.asarray(groups, dtype=str), attr, means,
                             top_k, normalize, report, adata.obs.copy(), provenance, db, species, pairs, by_markers)


def _answered_by_markers(route) -> list[str]:
    """The candidates `annotate` answers from known markers: types the checkpoint never learned."""
    if route is None:
        return []
    unlearned = set(route.unrouted) | (set(route.candidates) if route.nothing_learned else set())
    return [c for c in route.candidates if c in unlearned]


def _check_options(method: str, normalize: str, top_k: int, reference: str | np.ndarray) -> None:
    if isinstance(reference, str) and reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES} or an array of one value per gene, got {reference!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")


def _reference(reference: str | np.ndarray, counts: sp.spmatrix, model: LoadedModel, dataset: str | None,
               scored: Sequence[str]) -> tuple[np.ndarray | None, list[str]]:
    """The reference input over the model's genes (None: zeros), and the label sets whose mean
    training cell it is (for ``"train"``)."""
    if not isinstance(reference, str):
        return np.asarray(reference, dtype=np.float32), []  # shape and values checked by `attribute`
    if reference == "mean":
        log_expr = log_normalize_csr(counts, model.model.cfg.target_sum)
        return np.asarray(log_expr.mean(0), dtype=np.float32).ravel(), []
    if reference == "zero" or model.readout is None:
        return None, []
    sets = [name for name in _reference_sets(model, dataset, scored) if name in model.readout.mean_cells]
    mean = model.readout.mean_cell(sets)
    return (None, []) if mean is None else (mean.cpu().numpy().astype(np.float32), sets)


def _reference_sets(model: LoadedModel, dataset: str | None, scored: Sequence[str]) -> list[str]:
    """`dataset`, else the label sets holding every scored label, else those holding any, else all.

    Several sets name the same labels (the PBMC sets, the sensitive/resistant drug sets); their
    mean cells are then pooled, each set weighted equally."""
    if dataset is not None:
        return [dataset]
    wanted = set(scored)
    for fits in (wanted.issubset, lambda labels: bool(wanted & labels)):
        names = [name for name, entry in model.label_sets.items() if fits(set(entry["labels"]))]
        if names:
            return names
    return list(model.label_sets)


def _prompts(model: LoadedModel, adata: ad.AnnData, instruction: str | None, cands: list[str],
             route: CandidateRoute | None = None, drug: str | None = None) -> tuple[str, list[str], np.ndarray]:
    """The rendered prompt prefix of every cell, as distinct prefixes plus a row index per cell
    (with `drug`, the drug-response question `predict_drug_response` asks)."""
    from instructcell_agent.api import DEFAULT_INSTRUCTIONS

    open_question = route is not None and route.kind == "ontology"
    task = "annotation" if drug is None else "drug_response"
    template = instruction or DEFAULT_INSTRUCTIONS[(task, not open_question)]
    texts = []
    for fields in prompt_fields(adata, **({"drug": drug} if drug is not None else {})):
        # A fixed candidate order keeps one shared prefix for every cell (read once).
        values = {**fields, "cell_type": "", "condition": "", "choices": ", ".join(cands)}
        texts.append(model.model.prefix_text(render(template, values)))
    uniq = sorted(set(texts))
    lookup = {t: i for i, t in enumerate(uniq)}
    return template, uniq, np.array([lookup[t] for t in texts], dtype=np.int64)


def _marker_comparison(means: pd.DataFrame, db: MarkerDB | None, species: str | None, vocab: Sequence[str],
                       inputs: np.ndarray, groups: np.ndarray, compare_wilcoxon: bool,
                       pairs: dict[str, tuple[str, str]], labels: np.ndarray) -> pd.DataFrame | None:
    """Precision at 10 of our ranking, and of wilcoxon's on the same cells and labels (for
    contrasts 'A vs B', A's cells against B's; `labels` is each cell's explained label)."""
    if db is None:
        return None
    ours = {label: names for label, (names, _) in rankings(means, PRECISION_K, positive_only=True).items()}
    report = marker_report(ours, db, species, PRECISION_K, vocab, pairs)
    if compare_wilcoxon:
        wil = (wilcoxon_pair_rankings(sp.csr_matrix(inputs), vocab, labels, pairs, n_genes=PRECISION_K) if pairs
               else wilcoxon_rankings(sp.csr_matrix(inputs), vocab, groups, n_genes=PRECISION_K))
        wil_report = marker_report(wil, db, species, PRECISION_K, pairs=pairs).set_index("label")
        # a label wilcoxon could not test (one cell) gets no genes, not NaN: an .h5ad cannot hold a
        # text column with missing values, and explained.h5ad carries this table
        report["wilcoxon_known_in_top"] = report["label"].map(wil_report["known_in_top"]).fillna("")
        report["wilcoxon_precision_at_k"] = report["label"].map(wil_report["precision_at_k"]).astype(float)
    return report


# ------------------------------------------------------------------ files

def write_explanation(result: ExplanationResult, out_dir: str | os.PathLike, protect: Sequence[str | os.PathLike] = (),
                      key: str = DEFAULT_KEY) -> dict[str, Path]:
    """Write a result to `out_dir`: explained.h5ad, top_genes.csv, marker_report.csv, explain.json, PNGs.

    Every file is written atomically; none may be one of the `protect` paths (the input).
    """
    out = Path(out_dir)
    names = {"h5ad": "explained.h5ad", "top_genes": "top_genes.csv", "markers": "marker_report.csv",
             "json": "explain.json", "dotplot": "saliency_dotplot.png", "heatmap": "saliency_heatmap.png"}
    paths = {k: out / v for k, v in names.items()}
    for path in paths.values():
        for guarded in protect:
            if path.exists() and Path(guarded).exists() and os.path.samefile(path, guarded):
                raise InputFileError(f"refusing to overwrite the input file {guarded}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_h5ad_atomic(result.to_adata(None, key), paths["h5ad"], protect=protect)
    _write_csv_atomic(result.top_genes, paths["top_genes"])
    if result.marker_report is not None:
        _write_csv_atomic(result.marker_report, paths["markers"])
    else:
        paths.pop("markers")
    result.save_figures(out, key)
    summary = {"summary": result.summary(), "provenance": result.provenance,
               "marker_report": result.marker_report.to_dict("records") if result.marker_report is not None else None}
    write_json_atomic(json_ready(summary), paths["json"])
    return paths


def _write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            frame.to_csv(fh, index=False)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a table is for sharing
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def json_ready(value: Any) -> Any:
    """NaN -> None and numpy scalars -> Python, recursively (json.dump would write NaN)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
