"""Background jobs: one worker thread runs all model work in submission order.

One worker is the queue around the model: calls from several clients never run the model at
the same time, and each job sees the model to itself. A job reports progress through its
`Reporter` and stops at the next `check()` once cancelled.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .schemas import JobInfo

log = logging.getLogger(__name__)


_KEEP_UPDATES = 1000  # progress history a slow waiter can still relay


class JobCancelled(Exception):
    """Raised inside a job at a cancellation point; the job ends as 'cancelled'."""


class Reporter:
    """Handed to the work function: progress updates and cancellation checks."""

    def __init__(self, job: "Job") -> None:
        self._job = job

    def update(self, done: float, total: float, message: str = "") -> None:
        self.check()
        job = self._job
        with job._changed:
            job.done_units, job.total_units = float(done), float(total)
            if message:
                job.message = message
            job.updates.append((job.done_units, job.total_units, job.message))
            del job.updates[:-_KEEP_UPDATES]
            job.version += 1
            job._changed.notify_all()

    def check(self) -> None:
        if self._job.cancel_event.is_set():
            raise JobCancelled()

    @property
    def cancelled(self) -> bool:
        return self._job.cancel_event.is_set()


class Job:
    def __init__(self, tool: str, fn: Callable[[Reporter], Any]) -> None:
        self.id = uuid.uuid4().hex
        self.tool = tool
        self.fn = fn
        self.status = "queued"
        self.message = "waiting for the model"
        self.error: str | None = None
        self.result: Any = None
        self.done_units, self.total_units = 0.0, 1.0
        self.created = time.monotonic()
        self.cancel_event = threading.Event()
        self.finished = threading.Event()
        self._lock = threading.RLock()
        # Waiters sleep on this until a progress update or the end (relayed as notifications).
        self._changed = threading.Condition(self._lock)
        self.updates: list[tuple[float, float, str]] = []
        self.version = 0

    def cancel(self) -> bool:
        """Ask the job to stop; True unless it had already finished."""
        with self._lock:
            if self.finished.is_set():
                return False
            self.cancel_event.set()
            if self.status == "queued":
                # Never started: nothing to clean up, finish it here so waiters return now.
                self._finish("cancelled", "cancelled before it started")
            else:
                # Still 'running' until its next batch boundary; say so, or a caller polling
                # job_status reads the old message and thinks the cancel was lost.
                self.message = "cancelling: stops at the next batch boundary, keeping no output"
            return True

    def wait(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def wait_for_update(self, seen: int, timeout: float) -> int:
        """Block until more than `seen` updates were made or the job finished; the version now."""
        with self._changed:
            self._changed.wait_for(lambda: self.version > seen or self.finished.is_set(), timeout)
            return self.version

    def updates_since(self, seen: int) -> tuple[int, list[tuple[float, float, str]]]:
        """The current version and the updates made after version `seen` (oldest first)."""
        with self._lock:
            new = self.version - seen
            return self.version, (list(self.updates[-new:]) if new > 0 else [])

    def _finish(self, status: str, message: str, error: str | None = None, result: Any = None) -> None:
        self.status, self.message, self.error, self.result = status, message, error, result
        if status == "completed":
            self.done_units = self.total_units
        self.finished.set()
        self._changed.notify_all()

    @property
    def progress(self) -> tuple[float, float, str]:
        with self._lock:
            return self.done_units, self.total_units, self.message

    def info(self) -> JobInfo:
        with self._lock:
            frac = self.done_units / self.total_units if self.total_units > 0 else 0.0
            return JobInfo(job_id=self.id, tool=self.tool, status=self.status, progress=min(max(frac, 0.0), 1.0),
                           message=self.message, error=self.error, seconds=round(time.monotonic() - self.created, 3))


class JobManager:
    """Runs submitted work on one worker thread; remembers recent jobs for polling."""

    def __init__(self, max_kept: int = 200, error_message: Callable[[BaseException], str] = str) -> None:
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._max_kept = max_kept
        self._error_message = error_message
        self._worker = threading.Thread(target=self._run, name="instructcell-model-worker", daemon=True)
        self._worker.start()

    def submit(self, tool: str, fn: Callable[[Reporter], Any]) -> Job:
        job = Job(tool, fn)
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def shutdown(self) -> None:
        """Cancel everything still queued or running and stop the worker."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _forget_old(self) -> None:
        finished = [jid for jid, j in self._jobs.items() if j.finished.is_set()]
        for jid in finished[: max(0, len(self._jobs) - self._max_kept)]:
            del self._jobs[jid]

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with job._lock:
                if job.finished.is_set():  # cancelled while queued
                    continue
                job.status, job.message = "running", "started"
            try:
                result = job.fn(Reporter(job))
            except JobCancelled:
                with job._lock:
                    job._finish("cancelled", "cancelled; no output was kept")
            except Exception as exc:  # noqa: BLE001 - a job's failure is reported, the worker lives on
                log.log(logging.INFO if _expected(exc) else logging.ERROR, "job %s (%s) failed: %s", job.id,
                        job.tool, exc, exc_info=not _expected(exc))
                with job._lock:
                    job._finish("failed", "failed", error=self._error_message(exc))
            else:
                with job._lock:
                    job._finish("completed", "done", result=result)


def _expected(exc: BaseException) -> bool:
    from instructcell_agent.core_model.errors import InstructCellError

    return isinstance(exc, (InstructCellError, ValueError))
