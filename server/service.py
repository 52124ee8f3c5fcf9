"""The service layer: paths and parameters in, pydantic results out. No MCP here.

Both the MCP server and the LangChain tools call these methods. Every input path is checked
against the data roots, inputs are only read, results are written under the output directory
(staged, then renamed), and the model is loaded once, on first use.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from instructcell_agent.agreement import known_labels
from instructcell_agent.composition import check_groups
from instructcell_agent.core_model.errors import CheckpointError, InputFileError, InstructCellError
from instructcell_agent.core_model.io import obs_column, write_h5ad_atomic
from instructcell_agent.core_model.obs_table import join_obs_table, joined_obs, sample_key_of
from instructcell_agent.core_model.labels import unexplainable
from instructcell_agent.core_model.readers import cell_file_format, read_cells
from instructcell_agent.core_model.samples import read_samples

from .chunks import concat_chunks
from .config import ServerConfig
from .jobs import Reporter
from .outputs import Staging, new_id, slug
from .paths import resolve_input
from .reading import HeldRead, opened, read_notes
from .replies import (agreement_summary, candidates_for, describe_column, explained_per_label, group_summaries,
                      marker_support, outside_counts, rounded)
from .schemas import (AnnotateCellsRequest, AnnotationSummary, CellExample, DatasetInfo, DescribeModelRequest,
                      ExplainGenesRequest, ExplanationSummary, GenerateCellsRequest, GenerationConditionInfo,
                      GenerationSummary, GeneScore, InspectDatasetRequest, LabelSetInfo, ModelInfo,
                      PredictDrugResponseRequest, VocabularyOverlap)

log = logging.getLogger(__name__)

_INSPECT_CELLS = 2000  # value type and gene overlap are read from the first cells only
_MIN_GENES = 100  # the API's default minimum gene overlap


class LimitError(InstructCellError):
    """A request over one of the server's configured limits."""


class _NoReporter:
    def update(self, done: float, total: float, message: str = "") -> None:
        pass

    def check(self) -> None:
        pass


# What `generate_cells` notes in uns['instructcell_generation'] for the caller to hear: another
# context the type was learned in, an instruction read as another condition, mostly atypical cells.
GENERATION_NOTES = ("alternatives", "misread", "atypical")


def _explained_count(obs: pd.DataFrame, req: ExplainGenesRequest, n_answers: int | None = None) -> int:
    """Cells an explain_genes request attributes, as `explain` picks them: with labels from an obs
    column, its cells with a label to explain (`unexplainable`), at most
    max_cells_per_label of each; with one label for every cell, at most max_cells_per_label;
    without labels, every cell, or with max_cells_per_label at most that many of each of the
    `n_answers` answers the cells can be given (they are answered first; a bound)."""
    cap = req.max_cells_per_label
    if cap is None and req.labels is None:
        return len(obs)
    if req.labels is None:
        return min(len(obs), cap * n_answers) if n_answers else len(obs)
    if req.labels not in obs.columns:
        return len(obs) if cap is None else min(len(obs), cap)
    column = np.array([None if pd.isna(v) else str(v) for v in obs[req.labels]], dtype=object)  # as explain reads it
    missing, unassigned = unexplainable(column, req.candidates)
    counts = pd.Series(column[~(missing | unassigned)]).value_counts().to_numpy()
    return int(counts.sum() if cap is None else np.minimum(counts, cap).sum())


class InstructCellService:
    """Runs the package's API for remote callers under the configured roots and limits."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.limits = config.limits
        self._load_lock = threading.Lock()
        # Model passes never overlap: the job worker is the normal queue, and this lock also
        # covers direct callers (the native LangChain tools may run on several threads).
        self.model_lock = threading.RLock()
        self._model = None
        self._held = HeldRead()

    # ------------------------------------------------------------------ model
    def model(self):
        """The loaded checkpoint; loaded on the first call (seconds for the shipped one)."""
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    from instructcell_agent.api import load_model

                    started = time.perf_counter()
                    self._model = load_model(self.config.checkpoint, device=self.config.device,
                                             precision=self.config.precision)
                    log.info("model %s loaded on %s (LM in %s) in %.1f s", self._model.path,
                             self._model.model.device, self._model.model.lm_dtype, time.perf_counter() - started)
        return self._model

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    # ------------------------------------------------------------------ checks
    def input_path(self, h5ad_path: str) -> Path:
        # The server's finished outputs are inputs too: an agent explains the file annotate_cells
        # wrote (labels='instructcell_label') or annotates the cells generate_cells drew.
        return resolve_input(h5ad_path, self.config.data_roots, outputs=self.config.output_dir)

    def input_paths(self, req) -> list[Path]:
        """`h5ad_path` and, where the request has them, its `more_samples`."""
        paths = [self.input_path(p) for p in (req.h5ad_path, *(getattr(req, "more_samples", None) or ()))]
        if len(set(paths)) < len(paths):
            raise InputFileError("a sample is named twice (h5ad_path and more_samples must be distinct files)")
        return paths

    def count_cells(self, req) -> int:
        """Cells a request reads (for limits and the background decision): an .h5ad's matrix stays
        on disk; other formats and several samples are read whole, and held for the run."""
        with self._counted(self.input_paths(req), req.genome) as cells:
            return int(cells.n_obs)

    def cells_to_explain(self, req: ExplainGenesRequest) -> int:
        """Cells an explain_genes request attributes (`_explained_count`; read from obs, and without
        labels bounded by the answers the model can give)."""
        with self._counted(self.input_paths(req), req.genome) as cells:
            obs = (joined_obs(cells.obs, self.input_path(req.obs_table), sample_key_of(cells))[0] if req.obs_table
                   else cells.obs)
            return self._explained(obs, req)

    @contextlib.contextmanager
    def _counted(self, paths: list[Path], genome: str | None) -> Iterator[ad.AnnData]:
        held = self._held.take(paths, genome)  # read whole by inspect_dataset just before
        if held is not None:
            self._held.put(paths, genome, held)
            yield held
            return
        if len(paths) > 1:
            cells = read_samples(paths, genome=genome)
            self._held.put(paths, genome, cells)
            yield cells
            return
        with opened(paths[0], genome) as cells:
            if not cells.isbacked:  # read whole: the run takes it instead of reading it again
                self._held.put(paths, genome, cells)
            yield cells

    def _read(self, paths: list[Path], genome: str | None) -> ad.AnnData:
        """The cells a tool runs on: those its count just read, else read now."""
        held = self._held.take(paths, genome)
        if held is not None:
            return held
        return read_cells(paths[0], genome=genome) if len(paths) == 1 else read_samples(paths, genome=genome)

    def _explained(self, obs: pd.DataFrame, req: ExplainGenesRequest) -> int:
        n_answers = None
        if req.labels is None and req.max_cells_per_label is not None:
            # every cell is answered first, as annotate_cells would: its limit holds too
            self._check(len(obs), self.limits.max_cells, "cells answered first (explain_genes without labels)")
            task = "annotation" if req.drug is None else "drug_response"
            n_answers = len(req.candidates) if req.candidates else len(self.model().labels_for_task(task))
        return _explained_count(obs, req, n_answers)

    def work_size(self, tool: str, request: Any) -> int:
        """Cells a request will process; also refuses requests over the limits up front."""
        try:
            return self._work_size(tool, request)
        except Exception:
            self._held.drop()  # a refused request runs nothing: do not keep its file in memory
            raise

    def _work_size(self, tool: str, request: Any) -> int:
        if tool == "generate_cells":
            self._check(request.n, self.limits.max_generate, "generated cells per call (n)")
            return int(request.n)
        if tool == "explain_genes":
            self._check(request.top_k, self.limits.max_top_k, "top_k")
            n = self.cells_to_explain(request)
            self._check(n, self.limits.max_explain_cells, "cells per explain_genes call")
            return n
        n = self.count_cells(request)
        self._check(n, self.limits.max_cells, f"cells per {tool} call")
        return n

    @staticmethod
    def _check(value: int, limit: int, what: str) -> None:
        if value > limit:
            raise LimitError(f"request over the server limit: {value:,} {what}, at most {limit:,} allowed. "
                             "Subset the data (e.g. one sample or cell type per file) and call again")

    # ------------------------------------------------------------------ tools
    def inspect_dataset(self, req: InspectDatasetRequest) -> DatasetInfo:
        """Shape, obs columns, value type and gene overlap with the model; runs no inference."""
        from instructcell_agent.core_model.alignment import align_to_vocab

        path = self.input_path(req.h5ad_path)
        # A file read whole (a count table, Cell Ranger's files) is held for the call that
        # usually follows (annotate_cells on it), which would otherwise parse it again.
        with self._counted([path], req.genome) as cells:
            try:
                obs = cells.obs.copy()
                head = cells[: min(cells.n_obs, _INSPECT_CELLS)].to_memory()
                n_cells, n_genes = cells.n_obs, cells.n_vars
                layers, has_raw = list(cells.layers.keys()), cells.raw is not None
            except Exception as exc:  # noqa: BLE001 - any failure here means an unreadable file
                raise InputFileError(f"{req.h5ad_path} could not be read as AnnData: "
                                     f"{type(exc).__name__}: {exc}") from exc
        model = self.model()
        overlap, kind, note = None, "invalid", ""
        try:
            report = align_to_vocab(head, model.vocab, layer=req.layer, use_raw=req.use_raw, gene_key=req.gene_key,
                                    min_genes=0).report
        except InstructCellError as exc:
            note = str(exc)
        else:
            needed = min(_MIN_GENES, len(model.vocab))
            kind, note = report.value_type["kind"], report.value_type.get("note", "")
            overlap = VocabularyOverlap(
                n_vocab=report.n_vocab, n_matched=report.n_matched, matched_fraction=round(report.matched_fraction, 4),
                input_matched_fraction=round(report.input_matched_fraction, 4), min_needed=needed,
                sufficient=report.n_matched >= needed, gene_id_type=report.id_type, species=report.species,
                missing_examples=list(report.missing_examples), notes=list(report.notes))
        return DatasetInfo(
            h5ad_path=str(path), input_format=cell_file_format(path), n_cells=n_cells, n_genes=n_genes,
            obs_columns=[describe_column(obs, c) for c in obs],
            layers=layers, has_raw=has_raw, value_type=kind, value_note=note, overlap=overlap,
            within_cell_limit=n_cells <= self.limits.max_cells,
            runs_in_background=n_cells > self.limits.async_threshold_cells,
            model_annotation_labels=model.labels_for_task("annotation")[:50],
            **candidates_for(model, head, overlap.species if overlap else ""))

    def describe_model(self, req: DescribeModelRequest) -> ModelInfo:
        """What the loaded checkpoint learned: label sets, drugs, generation conditions."""
        from instructcell_agent.core_model.generation.generator import has_generator, load_generator

        model = self.model()
        sets = [LabelSetInfo(name=name, task=e["task"], species=e.get("species", ""), tissue=e.get("tissue", ""),
                             drug=e.get("drug") or None, labels=list(e["labels"]))
                for name, e in model.label_sets.items()]
        generation, generation_note = None, "this checkpoint has no generator"
        if has_generator(model.path):
            try:
                generation = [GenerationConditionInfo(**g) for g in load_generator(model).table.grouped()]
                generation_note = None
            except CheckpointError as exc:  # the rest of what the model learned still answers
                generation_note = str(exc)
        return ModelInfo(checkpoint=str(model.path), package_version=model.info.get("package_version"),
                         backbone=model.model.cfg.backbone.name, device=model.model.device.type,
                         precision=model.model.precision, label_sets=sets,
                         drugs=sorted({s.drug for s in sets if s.drug}), generation=generation,
                         generation_note=generation_note, typicality=model.reference is not None)

    def annotate_cells(self, req: AnnotateCellsRequest, reporter: Reporter | None = None) -> AnnotationSummary:
        from instructcell_agent import api
        from instructcell_agent.core_model.candidate_route import route_candidates
        from instructcell_agent.unlearned_candidates import BY_MARKERS_NOTE, gates_unrouted, marker_result

        if req.by_markers or req.markers:
            return self._annotate_by_markers(req, reporter)
        if self._none_learned(req):  # as api.annotate does, but on the whole file (see _annotate_by_markers)
            from instructcell_agent.interpret.marker_annotation import UnknownMarkersError

            try:
                return self._annotate_by_markers(req.model_copy(update={"by_markers": "panglaodb"}), reporter,
                                                 note=BY_MARKERS_NOTE)
            except UnknownMarkersError:
                pass  # no markers known or expressed: the model scores the names, and its note says so
        extra = {k: v for k, v in (("species", req.species), ("tissue", req.tissue), ("free_text", req.free_text),
                                   ("unassigned_below", req.unassigned_below),
                                   ("unassigned_atypical", req.unassigned_atypical), ("fast", req.fast),
                                   ("resolve_at", req.resolve_at)) if v}
        gate: dict[str, Any] = {}

        def whole_file_markers(adata, model) -> None:
            # candidates mixing types the model learned with types it did not: their markers are
            # scored on the whole file once (chunks would change them), then decide in every chunk
            route = route_candidates(req.candidates, model.label_sets) if req.candidates else None
            if gates_unrouted(route):
                gate["markers"] = marker_result(adata, model, route, species=req.species, **_matrix(req))

        return self._annotate(req, "annotation", reporter, lambda view, model: api.annotate(
            view, model=model, instruction=req.instruction, candidates=req.candidates, **extra, **_matrix(req),
            marker_result=gate.get("markers"), by_markers=None if gate.get("markers") else False),
            before=whole_file_markers)

    @staticmethod
    def _model_only(req: AnnotateCellsRequest) -> bool:
        """Whether an option only the model answers was asked, so known markers answer nothing."""
        return any((req.instruction, req.fast, req.resolve_at, req.unassigned_atypical, req.free_text))

    def _none_learned(self, req: AnnotateCellsRequest) -> bool:
        """Whether api.annotate would answer these candidates from their markers: none is a type the
        model learned, and no option only the model answers was asked."""
        from instructcell_agent.core_model.candidate_route import route_candidates

        if not req.candidates:
            return False
        return route_candidates(req.candidates, self.model().label_sets).nothing_learned and not self._model_only(req)

    def _annotate_by_markers(self, req: AnnotateCellsRequest, reporter: Reporter | None,
                             note: str | None = None) -> AnnotationSummary:
        """Cell types from known markers alone: no model is asked, and the file is scored whole
        (a cell's score sets it against the file's other cells, so chunks would change answers).
        `note` heads the reply's notes (why the markers answered)."""
        from instructcell_agent.interpret.marker_annotation import annotate_by_markers

        if not req.by_markers:
            raise ValueError("markers are read by by_markers: set by_markers ('panglaodb') to answer from them")
        unused = [name for name in _NOT_BY_MARKERS if getattr(req, name)]
        if unused:
            raise ValueError(f"by_markers asks no model, so {', '.join(unused)} does not apply; leave it out")
        candidates = req.candidates or (list(req.markers) if req.markers else None)
        if not candidates:
            raise ValueError("by_markers needs the cell types to choose from: candidates (or markers)")

        def run(view, model):
            result = annotate_by_markers(view, candidates, markers=req.markers, marker_db=req.by_markers,
                                         model=self.config.checkpoint, species=req.species or None,
                                         unassigned_below=req.unassigned_below, **_matrix(req))
            if note:
                result.provenance["notes"].insert(0, note)
            return result

        return self._annotate(req, "annotation", reporter, run, whole=True)

    def predict_drug_response(self, req: PredictDrugResponseRequest,
                              reporter: Reporter | None = None) -> AnnotationSummary:
        from instructcell_agent import api

        return self._annotate(req, "drug_response", reporter, lambda view, model: api.predict_drug_response(
            view, drug=req.drug, model=model, instruction=req.instruction, candidates=req.candidates,
            unassigned_below=req.unassigned_below, unassigned_atypical=req.unassigned_atypical, fast=req.fast,
            **_matrix(req)))

    def generate_cells(self, req: GenerateCellsRequest, reporter: Reporter | None = None) -> GenerationSummary:
        from instructcell_agent import api

        rep = reporter or _NoReporter()
        self._check(req.n, self.limits.max_generate, "generated cells per call (n)")
        started = time.perf_counter()
        model = self.model()
        rep.update(0, req.n, f"generating {req.n:,} {req.cell_type} cells")
        with self.model_lock:
            adata = api.generate_cells(model=model, cell_type=req.cell_type, n=req.n, species=req.species,
                                       tissue=req.tissue, condition=req.condition, instruction=req.instruction,
                                       seed=req.seed, allow_unseen=req.allow_unseen)
        rep.update(req.n, req.n, "writing the generated cells")
        name = f"generated_{slug(req.cell_type)}_{new_id()}.h5ad"
        with Staging(self.config.output_dir) as staging:
            write_h5ad_atomic(adata, staging.path(name))
            rep.check()  # the last point a cancellation is honoured: after it the file is published
            files = staging.commit({name: "generated_h5ad"})
        means = np.asarray(adata.X.mean(axis=0)).ravel()
        top = [str(adata.var_names[i]) for i in np.argsort(-means)[:10]]
        totals = np.asarray(adata.X.sum(axis=1)).ravel()
        unseen = bool(adata.obs["unseen_condition"].any()) if "unseen_condition" in adata.obs else False
        first = adata.obs.iloc[0]  # one condition per call: every row holds it
        provenance = adata.uns.get("instructcell_generation", {})
        return GenerationSummary(n_cells=adata.n_obs, n_genes=adata.n_vars, cell_type=str(first["cell_type"]),
                                 requested_cell_type=req.cell_type, species=str(first["species"]) or None,
                                 tissue=str(first["tissue"]) or None, condition=str(first["condition"]) or None,
                                 learned_from=provenance.get("learned_from"), unseen_condition=unseen,
                                 notes=[provenance[k] for k in GENERATION_NOTES if provenance.get(k)],
                                 mean_total_counts=round(float(totals.mean()), 3), top_expressed_genes=top,
                                 outputs=files, seconds=round(time.perf_counter() - started, 3))

    def explain_genes(self, req: ExplainGenesRequest, reporter: Reporter | None = None) -> ExplanationSummary:
        from instructcell_agent.interpret.api import explain, write_explanation

        rep = reporter or _NoReporter()
        self._check(req.top_k, self.limits.max_top_k, "top_k")
        started = time.perf_counter()
        paths = self.input_paths(req)
        path = paths[0]
        adata = self._read(paths, req.genome)
        if req.obs_table is not None:  # before labels, which may name its column
            adata = join_obs_table(adata, self.input_path(req.obs_table))
        n_explained = self._explained(adata.obs, req)
        self._check(n_explained, self.limits.max_explain_cells, "cells per explain_genes call")
        model = self.model()
        # Progress after every attribution batch; rep.update raises JobCancelled once the job is
        # cancelled, so a cancellation is honoured between batches and nothing is written.
        answered_first = req.labels is None and req.max_cells_per_label is not None
        plan = (f"answering {adata.n_obs:,} cells first, then explaining at most {n_explained:,}" if answered_first
                else f"explaining {n_explained:,} cells")
        rep.update(0, n_explained, f"{plan} ({req.method})")
        def explained(done: int, total: int) -> None:
            rep.update(done, total, f"explained {done:,} of {total:,} cells")

        def answered(done: int, total: int) -> None:
            rep.update(0, n_explained, f"answered {done:,} of {total:,} cells first")

        with self.model_lock:
            result = explain(adata, model=model, labels=req.labels, method=req.method, top_k=req.top_k,
                             reference=req.reference, normalize=req.normalize,
                             candidates=req.candidates, max_cells_per_label=req.max_cells_per_label, drug=req.drug,
                             fast=req.fast, versus=req.versus, **_matrix(req),
                             progress=explained, answer_progress=answered)
        rep.update(n_explained, n_explained, "writing tables and figures")
        folder = f"{slug(path.stem)}_explain_{new_id()}"
        with Staging(self.config.output_dir) as staging:
            write_explanation(result, staging.path(folder), protect=paths)
            rep.check()
            files = staging.commit({folder: "explanation"})
        top: dict[str, list[GeneScore]] = {}
        for row in result.top_genes.itertuples(index=False):
            known = None if pd.isna(row.is_known_marker) else bool(row.is_known_marker)
            top.setdefault(str(row.label), []).append(GeneScore(gene=str(row.gene), score=float(row.score),
                                                                is_known_marker=known))
        precision = None
        if result.marker_report is not None:
            precision = {str(r.label): (None if pd.isna(r.precision_at_k) else float(r.precision_at_k))
                         for r in result.marker_report.itertuples(index=False)}
        return ExplanationSummary(h5ad_path=str(path), n_cells=adata.n_obs, n_explained=len(result.obs_names),
                                  method=req.method,
                                  reference=result.provenance.get("reference") or "none",
                                  normalize=req.normalize,
                                  cells_per_label=explained_per_label(result), top_genes=top,
                                  explained_by_markers=list(result.provenance.get("explained_by_markers") or ()),
                                  marker_precision=precision,
                                  notes=read_notes(adata, req) + list(result.provenance.get("notes", [])),
                                  outputs=files,
                                  seconds=round(time.perf_counter() - started, 3))

    # ------------------------------------------------------------------ annotation core
    def _annotate(self, req, task: str, reporter: Reporter | None, run, whole: bool = False,
                  before=None) -> AnnotationSummary:
        from instructcell_agent.cell_map import keep_coords
        from instructcell_agent.results import AnnotationResult

        rep = reporter or _NoReporter()
        started = time.perf_counter()
        paths = self.input_paths(req)
        path = paths[0]
        adata = self._read(paths, req.genome)
        if req.obs_table is not None:  # before compare_key and groupby, which may name its columns
            adata = join_obs_table(adata, self.input_path(req.obs_table))
        self._check(adata.n_obs, self.limits.max_cells, f"cells per {_TOOL[task]} call")
        if adata.n_obs == 0:
            raise InputFileError(f"{req.h5ad_path} has no cells; nothing to annotate")
        known = known_labels(adata, req.compare_key) if req.compare_key else None  # refused before any model work
        # several samples are reported on one by one unless another grouping is asked for
        group_key = req.groupby or (adata.uns["samples"]["key"] if len(paths) > 1 else None)
        groups = obs_column(adata, group_key, "Name a column of groups (clusters, samples)") if group_key else None
        if groups is not None:
            check_groups(groups, group_key)
        model = None if whole else self.model()  # `whole`: the marker route, which needs no model
        if before is not None:  # what is read from the whole file before it is answered in chunks
            before(adata, model)
        n, step = adata.n_obs, (adata.n_obs if whole else max(1, self.limits.chunk_cells))
        parts: list[AnnotationResult] = []
        rep.update(0, n, f"{n:,} cells queued" + ("" if whole else " for the model"))
        # Chunks bound the time between progress reports and cancellation checks; each chunk
        # runs the public API on a view (the input is never modified).
        for start in range(0, n, step):
            with self.model_lock:
                parts.append(run(adata[start:start + step], model))
            rep.update(min(start + step, n), n, f"{min(start + step, n):,} of {n:,} cells")
        result = concat_chunks(parts)
        key = "instructcell" if task == "annotation" else "instructcell_drug"
        base = f"{slug(path.stem)}_{'annotated' if task == 'annotation' else 'drug_response'}_{new_id()}"
        found = result.agreement(known) if known is not None else None
        annotated = result.to_adata(adata, key_added=key)
        if found is not None:
            annotated.uns[key]["agreement"] = {"key": req.compare_key, **found.to_dict()}
        grouped = result.composition(groups, group_key) if groups is not None else None
        if grouped is not None:
            annotated.uns[key]["composition"] = grouped.to_uns()
        grouped_resolved = (result.composition(groups, group_key, resolved=True)
                            if groups is not None and result.resolved is not None else None)
        if grouped_resolved is not None:
            annotated.uns[key]["resolved_composition"] = grouped_resolved.to_uns()
        checked = self._marker_check(req, adata, result, model)
        if checked is not None:
            checked.note_answers_from_these_markers(result.provenance)
            checked.store(annotated, key)
        published = {base + ".h5ad": "annotated_h5ad", base + "_labels.csv": "labels_csv"}
        notes = read_notes(adata, req) + list(result.provenance.get("notes", []))
        notes += checked.provenance["notes"] if checked is not None else []
        notes += [line for line in (result.fast_line(), result.resolved_line()) if line]
        resolved = result.resolved["resolved"].to_numpy() if result.resolved is not None else None
        found_resolved = result.resolved_agreement(known) if known is not None and resolved is not None else None
        if found_resolved is not None:
            annotated.uns[key]["resolved_agreement"] = {"key": req.compare_key, **found_resolved.to_dict()}
            notes.append(found_resolved.summary(f"obs[{req.compare_key!r}]"))
        with Staging(self.config.output_dir) as staging:
            if req.plot:
                rep.update(n, n, "drawing the map of the cells")
                try:
                    drawn = result.draw_map(adata, staging.path(base + "_map.png"), layer=req.layer,
                                            use_raw=req.use_raw)
                except Exception as exc:  # noqa: BLE001 - e.g. too few cells: the labels stand without a picture
                    log.warning("no map drawn for %s", path, exc_info=True)
                    notes.append(f"no map drawn: {exc}")
                else:
                    published[base + "_map.png"] = "map_png"
                    keep_coords(annotated, drawn)  # what the figure shows
            write_h5ad_atomic(annotated, staging.path(base + ".h5ad"), protect=paths)
            result.to_table().to_csv(staging.path(base + "_labels.csv"), index_label="cell")
            rep.check()  # the last point a cancellation is honoured: after it the files are published
            files = staging.commit(published)
        conf = np.asarray(result.confidence, dtype=float)
        labelled = np.flatnonzero(~np.isnan(conf))  # unlabelled cells (no counts on the model's genes) have NaN
        cands = list(map(str, result.probabilities.columns)) if result.probabilities is not None else None
        m = len(labelled)
        pick = labelled[np.linspace(0, m - 1, num=min(req.n_examples, m)).round().astype(int)] if m else []
        typ = np.asarray(result.typicality, dtype=float) if result.typicality is not None else None
        examples = [CellExample(cell=result.obs_names[i], label=str(result.labels[i]),
                                confidence=round(float(conf[i]), 4),
                                typicality=rounded(typ[i]) if typ is not None else None,
                                resolved=str(resolved[i]) if resolved is not None else None) for i in pick]
        return AnnotationSummary(
            kind=task, h5ad_path=str(path), n_cells=n,
            label_counts={str(k): int(v) for k, v in result.label_counts().items()},
            mean_confidence=round(float(conf[labelled].mean()), 4) if m else None,  # a 0.0 would read as doubt
            low_confidence_cells=int((conf[labelled] < 0.5).sum()), unlabelled_cells=n - m,
            unassigned_cells=result.n_unassigned(),
            atypical_cells=int((typ < -3).sum()) if typ is not None else None,
            outside_candidates=outside_counts(result), candidates=cands, drug=getattr(req, "drug", None),
            examples=examples,
            alignment=str(result.provenance.get("alignment_summary", "")),
            notes=notes, answer_tissues=result.answer_tissues(),
            agreement=agreement_summary(found, req.compare_key) if found is not None else None,
            groups=group_summaries(grouped) if grouped is not None else None, outputs=files,
            resolved_groups=group_summaries(grouped_resolved) if grouped_resolved is not None else None,
            resolved_counts=(None if resolved is None else
                             {str(k): int(v) for k, v in pd.Series(resolved).dropna().value_counts().items()}),
            resolved_agreement=(None if found_resolved is None or np.isnan(found_resolved.agreement)
                                else round(found_resolved.agreement, 4)),
            marker_check=marker_support(checked) if checked is not None else None,
            seconds=round(time.perf_counter() - started, 3))


    def _marker_check(self, req, adata, result, model):
        """`marker_check` of the answers, when asked (annotation only: a drug response has no markers);
        on the checkpoint's genes, loaded or not (the marker route loads no model)."""
        if getattr(req, "marker_check", None) is None:
            return None
        from instructcell_agent.interpret.marker_check import marker_check  # imports torch: only when asked

        return marker_check(adata, result.labels, model=model or self.config.checkpoint, marker_db=req.marker_check,
                            **_matrix(req))


_TOOL = {"annotation": "annotate_cells", "drug_response": "predict_drug_response"}
# annotate_cells options the marker route has no use for: refused rather than silently ignored
_NOT_BY_MARKERS = ("instruction", "free_text", "unassigned_atypical", "fast", "resolve_at")


def _matrix(req) -> dict[str, Any]:
    return {"layer": req.layer, "use_raw": req.use_raw, "gene_key": req.gene_key}
