"""Server settings: where data may be read, where results go, which model, and request limits."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core_model.precision import PRECISIONS


@dataclass(frozen=True)
class Limits:
    """Per-call bounds. A request over a bound is refused with a message naming the bound."""

    max_cells: int = 50_000  # cells per annotate / predict_drug_response call
    max_explain_cells: int = 2_000  # attribution needs a backward pass per cell: far costlier
    max_top_k: int = 50
    max_generate: int = 5_000
    # Requests above this many cells (or generated cells) run as background jobs: the call
    # returns a job id at once instead of holding the client.
    async_threshold_cells: int = 5_000
    # A foreground call waits this long for its job, then hands back the job id (no call may
    # block past a minute; clients often time out at 60 s).
    call_timeout_s: float = 50.0
    chunk_cells: int = 256  # cells per model pass between progress reports / cancellation checks
    max_resource_bytes: int = 64 * 1024 * 1024  # larger outputs are reachable by path only
    max_jobs_kept: int = 200  # finished jobs remembered for job_status / job_result


@dataclass(frozen=True)
class ServerConfig:
    """Everything the service needs; built by the CLI or by tests."""

    data_roots: tuple[Path, ...]
    output_dir: Path
    checkpoint: Path | None = None  # None: the checkpoint shipped with the package
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    precision: str = "auto"  # LM dtype: "auto" | "float32" | "bfloat16" (core_model/precision.py)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not self.data_roots:
            raise ValueError("at least one data root is needed (--data-root DIR)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        # Resolved once: containment checks compare resolved paths, so a root given through a
        # symlink must be resolved too.
        object.__setattr__(self, "data_roots", tuple(Path(r).expanduser().resolve() for r in self.data_roots))
        object.__setattr__(self, "output_dir", Path(self.output_dir).expanduser().resolve())
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", Path(self.checkpoint).expanduser())

    def with_limits(self, **changes) -> "ServerConfig":
        return replace(self, limits=replace(self.limits, **changes))
