"""Background indexing jobs: one at a time, in a thread, with progress and cancellation.

The job calls the engine's own ``index``; queries keep answering meanwhile from the indexes
already on disk, and see the new items when the job's final sync atomically replaces them.
Jobs live in memory: a restart forgets finished ones (the catalog itself keeps the results).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmsearch.errors import MMSearchError, NotFound

log = logging.getLogger("mmsearch.api.jobs")

Progress = Callable[[int, int], None]
Status = Callable[[Any], None]  # hears the ingest's IngestStatus (indexer/progress.py)
RunIndex = Callable[[Path, Progress, Status, threading.Event], dict[str, Any]]


class JobConflict(MMSearchError):
    """Another write holds the catalog: one indexing job (or delete) at a time."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Job:
    id: str
    path: str
    state: str = "queued"
    done: int = 0
    total: int = 0
    created_at: datetime = field(default_factory=_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    report: dict[str, Any] | None = None
    error: str | None = None
    status: dict[str, Any] | None = None  # the ingest's last IngestStatus: phase, items, ETA
    cancelled: bool = False  # asked to stop (the engine sets ``stop`` itself when it ends)
    stop: threading.Event = field(default_factory=threading.Event, repr=False)
    thread: threading.Thread | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "state": self.state, "done": self.done, "total": self.total,
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
                "report": self.report, "error": self.error, "status": self.status, "url": f"/jobs/{self.id}"}


class JobManager:
    """Starts jobs under the service's write mutex, so a job never races a delete for the catalog."""

    def __init__(self, run_index: RunIndex, write_mutex: threading.Lock, keep: int = 50) -> None:
        self._run_index = run_index
        self._write_mutex = write_mutex
        self._keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, path: Path) -> Job:
        if not self._write_mutex.acquire(blocking=False):
            running = self.running()
            what = f"job {running.id} is indexing {running.path}" if running else "a delete is in progress"
            raise JobConflict(f"another write is running ({what}); try again when it has finished")
        try:
            job = Job(id=uuid.uuid4().hex[:12], path=str(path))
            job.thread = threading.Thread(target=self._run, args=(job,), name=f"mmsearch-job-{job.id}", daemon=True)
            with self._lock:
                self._jobs[job.id] = job
                while len(self._jobs) > self._keep:
                    oldest = next(iter(self._jobs))
                    if self._jobs[oldest].state in ("queued", "running"):
                        break
                    self._jobs.popitem(last=False)
            job.thread.start()
        except BaseException:
            self._write_mutex.release()
            raise
        return job

    def _run(self, job: Job) -> None:
        try:
            job.state, job.started_at = "running", _now()

            def progress(done: int, total: int) -> None:
                job.done, job.total = done, total

            def status(st: Any) -> None:
                job.status = dataclasses.asdict(st)

            job.report = self._run_index(Path(job.path), progress, status, job.stop)
            job.state = "cancelled" if job.cancelled else "done"
        except MMSearchError as e:
            job.state, job.error = "failed", str(e)
        except Exception as e:  # noqa: BLE001 - reported on the job, never kills the server
            log.exception("indexing job %s failed", job.id)
            job.state, job.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            job.finished_at = _now()
            self._write_mutex.release()

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def list(self) -> list[Job]:
        with self._lock:
            return list(reversed(self._jobs.values()))

    def running(self) -> Job | None:
        return next((j for j in self.list() if j.state in ("queued", "running")), None)

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop: files already embedded are kept and the indexes synced."""
        job = self.get(job_id)
        if job.state in ("queued", "running"):
            job.cancelled = True
            job.stop.set()
        return job

    def shutdown(self, timeout: float = 30.0) -> None:
        for job in self.list():
            if job.state in ("queued", "running"):
                job.cancelled = True
                job.stop.set()
        for job in self.list():
            if job.thread is not None and job.thread.is_alive():
                job.thread.join(timeout)
