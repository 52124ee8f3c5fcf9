"""The tool catalogue and call policy shared by the MCP server and the LangChain tools.

A `ToolSpec` names a tool, its description, request and output models and hints. `Toolbox`
decides how a call runs: quick tools run in place; model tools go to the job queue, and the
caller either waits for the result (up to the configured timeout) or, for large or explicitly
background requests, gets a job id at once. Nothing here imports MCP or LangChain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from instructcell_agent.core_model.errors import InstructCellError

from .config import ServerConfig
from .jobs import Job, JobManager
from .outputs import clean_stale_staging
from .schemas import (AnnotateCellsRequest, AnnotationOutput, DatasetInfo, DescribeModelRequest, ExplainGenesRequest,
                      ExplanationOutput, GenerateCellsRequest, GenerationOutput, InspectDatasetRequest, JobInfo,
                      JobRequest, JobResultOutput, ModelInfo, PredictDrugResponseRequest)
from .service import InstructCellService

log = logging.getLogger(__name__)


class ToolFailure(Exception):
    """A call that failed for a reason the caller can act on; the message says what to do."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str  # may use {limit} placeholders filled from the configured limits
    request: type[BaseModel]
    output: type[BaseModel]
    read_only: bool
    idempotent: bool
    runs_model: bool  # goes through the job queue
    destructive: bool = False


_JOB_NOTE = (" Requests over {async_threshold_cells:,} cells (or with background=true) return a job id at once; "
             "poll job_status and fetch the result with job_result. A call still running after "
             "{call_timeout_s:.0f} s also returns its job id.")
_OUT_NOTE = " The full result is written to new files under the server's output directory and returned as paths " \
            "and instructcell:// resource URIs; the input file is never modified."

SPECS: tuple[ToolSpec, ...] = (
    ToolSpec("inspect_dataset", "Inspect a dataset",
             "Describe a cell file (AnnData .h5ad or .zarr, Cell Ranger's .h5 or matrix folder, or a count table) "
             "before running the model: cells, genes, obs columns with example values, layers, the kind of "
             "expression values (raw counts, log1p, normalized) and how many of the model's genes it contains. "
             "Reads only; runs no inference. Use it first to pick labels and options.",
             InspectDatasetRequest, DatasetInfo, read_only=True, idempotent=True, runs_model=False),
    ToolSpec("describe_model", "Describe the model",
             "What the loaded InstructCell model learned: its annotation and drug-response label sets (with species "
             "and tissue), the drugs, and the cell types, species, tissues and conditions generate_cells can draw, "
             "with the training cells behind each. Runs no inference. Use it to pick candidates or a cell type.",
             DescribeModelRequest, ModelInfo, read_only=True, idempotent=True, runs_model=False),
    ToolSpec("annotate_cells", "Annotate cell types",
             "Predict the cell type of every cell in a file with the InstructCell model. Returns label "
             "counts, mean confidence, a few example cells and notes to weigh (e.g. a tissue the model never saw). "
             "Pass candidates to choose among known types (probabilities per type): best one label set from "
             "inspect_dataset's matching_label_sets, or Cell Ontology names. compare_key (an obs column of labels "
             "the cells already have) adds the agreement with them. atypical_cells counts cells unlike the "
             "training cells of their label (a type or tissue the model may not know); unassigned_atypical=3 "
             "labels them 'Unassigned'. resolve_at=0.9 adds each cell's finest answer reaching that "
             "probability: its label, or a broader type such as 'CD4-positive, alpha-beta T cell' where fine "
             "types are unsure (resolved_counts). marker_check='panglaodb' adds, per label, how well its known "
             "markers single out the cells given it (no model asked): a second opinion on each answer. For cell "
             "types the model never learned (see describe_model), by_markers='panglaodb' with candidates such as "
             "'Hepatocyte', 'Kupffer cell' answers from their known markers alone (or your own: markers); "
             "candidates mixing such types with learned ones have the markers decide the unlearned ones by "
             "default; tissue_types='liver' adds a tissue's known types as candidates (inspect_dataset's "
             "tissue_cell_types lists them). At most "
             "{max_cells:,} cells per call."
             + _JOB_NOTE + _OUT_NOTE,
             AnnotateCellsRequest, AnnotationOutput, read_only=False, idempotent=False, runs_model=True),
    ToolSpec("predict_drug_response", "Predict drug response",
             "Predict whether each cell in a file is resistant or sensitive to a drug. Returns class "
             "counts, mean confidence and example cells. At most {max_cells:,} cells per call." + _JOB_NOTE
             + _OUT_NOTE,
             PredictDrugResponseRequest, AnnotationOutput, read_only=False, idempotent=False, runs_model=True),
    ToolSpec("generate_cells", "Generate cells",
             "Generate synthetic single cells (integer counts over the model's genes) of a cell type under a "
             "condition, e.g. 'CD14+ Monocyte' under 'IFN-beta stimulated'. Conditions unseen in training are "
             "refused unless allow_unseen. Species and tissue left out are filled from training (the summary "
             "says which, and notes other species or tissues the type was learned in). Returns a summary (mean "
             "counts, top genes); at most "
             "{max_generate:,} cells per call." + _JOB_NOTE + _OUT_NOTE,
             GenerateCellsRequest, GenerationOutput, read_only=False, idempotent=True, runs_model=True),
    ToolSpec("explain_genes", "Explain predictions by genes",
             "Rank the genes that drive the model's cell-type answers, or with drug its drug-response answers "
             "(gradient saliency or Integrated Gradients), per label, and check cell types against marker "
             "databases; with versus, the genes that make each answer this label rather than another (a named "
             "one, or each cell's runner-up). Returns the top genes per label; "
             "tables and dot plot / heatmap PNGs are written to files. At most {max_explain_cells:,} cells and "
             "top_k {max_top_k} per call." + _JOB_NOTE + _OUT_NOTE,
             ExplainGenesRequest, ExplanationOutput, read_only=False, idempotent=False, runs_model=True),
    ToolSpec("job_status", "Job status",
             "Status and progress of a background job started by annotate_cells, predict_drug_response, "
             "generate_cells or explain_genes.",
             JobRequest, JobInfo, read_only=True, idempotent=True, runs_model=False),
    ToolSpec("job_result", "Job result",
             "The result of a background job once it completed (status and progress while it runs). A failed "
             "job returns its error.",
             JobRequest, JobResultOutput, read_only=True, idempotent=True, runs_model=False),
    ToolSpec("cancel_job", "Cancel a job",
             "Cancel a queued or running job. It stops at its next batch boundary and leaves no output files.",
             JobRequest, JobInfo, read_only=False, idempotent=True, runs_model=False, destructive=True),
)
SPEC_BY_NAME = {s.name: s for s in SPECS}


def error_message(exc: BaseException) -> str:
    """What a caller is told about a failure: our own messages as they are, others with their type."""
    if isinstance(exc, (InstructCellError, ToolFailure)):
        return str(exc)
    if isinstance(exc, ValidationError):
        return f"invalid arguments: {exc}"
    if isinstance(exc, (ValueError, KeyError)):
        return f"{type(exc).__name__}: {exc}"
    return f"internal error ({type(exc).__name__}: {exc}); see the server log"


class Toolbox:
    """One service and one job queue behind every tool."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.service = InstructCellService(config)
        self.jobs = JobManager(config.limits.max_jobs_kept, error_message=error_message)
        clean_stale_staging(config.output_dir)

    def description(self, spec: ToolSpec) -> str:
        return spec.description.format(**vars(self.config.limits))

    # ------------------------------------------------------------------ quick tools
    def run_quick(self, spec: ToolSpec, req: BaseModel) -> BaseModel:
        try:
            if spec.name in ("inspect_dataset", "describe_model"):
                return getattr(self.service, spec.name)(req)
            job = self._job(req.job_id)  # type: ignore[attr-defined]
            if spec.name == "cancel_job":
                job.cancel()
                return job.info()
            if spec.name == "job_status":
                return job.info()
            if job.status == "failed":
                raise ToolFailure(f"job {job.id} ({job.tool}) failed: {job.error}")
            return JobResultOutput(job=job.info(), result=job.result if job.status == "completed" else None)
        except ToolFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure reaches the caller as a readable message
            self._log_failure(spec.name, exc)
            raise ToolFailure(error_message(exc)) from exc

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise ToolFailure(f"no job {job_id}; jobs are kept in memory until the server restarts "
                              f"(the {self.config.limits.max_jobs_kept} most recent)")
        return job

    # ------------------------------------------------------------------ model tools
    def start(self, spec: ToolSpec, req: BaseModel) -> tuple[Job, bool]:
        """Check the request (path, limits) and queue it; True when the caller should not wait."""
        try:
            size = self.service.work_size(spec.name, req)
        except Exception as exc:  # noqa: BLE001
            self._log_failure(spec.name, exc)
            raise ToolFailure(error_message(exc)) from exc
        method = getattr(self.service, spec.name)
        job = self.jobs.submit(spec.name, lambda reporter: method(req, reporter))
        background = bool(getattr(req, "background", False)) or size > self.config.limits.async_threshold_cells
        return job, background

    def output(self, spec: ToolSpec, job: Job) -> BaseModel:
        """The tool's answer for `job` as it stands: the result, a failure, or the job to poll."""
        if job.status == "completed":
            return spec.output(status="completed", job=None, result=job.result)
        if job.status == "failed":
            raise ToolFailure(job.error or "failed")
        if job.status == "cancelled":
            raise ToolFailure(f"{spec.name} was cancelled; no output was written")
        return spec.output(status=job.status, job=job.info(), result=None)

    def call(self, name: str, req: BaseModel) -> BaseModel:
        """Blocking call (LangChain tools, scripts): same policy as the MCP server, no progress."""
        spec = SPEC_BY_NAME[name]
        if not spec.runs_model:
            return self.run_quick(spec, req)
        job, background = self.start(spec, req)
        if not background:
            job.wait(self.config.limits.call_timeout_s)
        return self.output(spec, job)

    def shutdown(self) -> None:
        self.jobs.shutdown()

    @staticmethod
    def _log_failure(tool: str, exc: BaseException) -> None:
        expected = isinstance(exc, (InstructCellError, ValueError, ValidationError))
        log.log(logging.INFO if expected else logging.ERROR, "%s refused: %s", tool, exc, exc_info=not expected)
