"""A queue of restorations run one at a time by one worker thread, so concurrent requests never share the model.

Only a bounded number of jobs may wait or run; the rest are told the server is busy. Finished jobs
keep their folder (the result to download) until they have not been looked at for a while.
"""

from __future__ import annotations

import queue
import secrets
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from refface.errors import RefFaceError, short_reason


class ServerBusy(RefFaceError):
    """Too many restorations are waiting; the client should try again later."""


@dataclass
class Job:
    """One restoration: what was asked (`request`), where its files live, and how far it got."""

    id: str
    folder: Path
    request: object
    state: str = "queued"  # queued, running, done, failed
    stage: str = "waiting for the restorations ahead"
    step: int = 0
    steps: int = 0
    message: str = ""
    summary: str = ""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    people: list[dict] = field(default_factory=list)  # the people used: name, references (label, thumbnail)
    faces: list[dict] = field(default_factory=list)  # each face restored: person, distance, status, message
    touched: float = field(default_factory=time.monotonic)


class JobQueue:
    """Runs `work(job)` for each submitted job in order, on one thread; thread-safe."""

    def __init__(self, work: Callable[[Job], None], root: Path, max_pending: int, keep_seconds: float) -> None:
        self._work, self._root = work, root
        self._max_pending, self._keep = max_pending, keep_seconds
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._order: list[str] = []  # queued job ids, oldest first
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="refface-restore", daemon=True)
        self._thread.start()

    def new_job(self, request: object) -> Job:
        """A job with its own private folder (not yet queued)."""
        identifier = secrets.token_urlsafe(16)
        folder = self._root / f"job-{identifier}"
        folder.mkdir(parents=True)
        return Job(identifier, folder, request)

    def submit(self, job: Job) -> None:
        self.expire()
        with self._lock:
            pending = sum(1 for j in self._jobs.values() if j.state in ("queued", "running"))
            if pending >= self._max_pending:
                shutil.rmtree(job.folder, ignore_errors=True)
                raise ServerBusy(f"The server is busy with {pending} restorations; please try again in a minute.")
            self._jobs[job.id] = job
            self._order.append(job.id)
        self._queue.put(job)

    def get(self, identifier: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(identifier)
            if job is not None:
                job.touched = time.monotonic()
            return job

    def status(self, job: Job) -> dict:
        """A JSON-ready snapshot of the job (consistent: taken under the lock)."""
        with self._lock:
            ahead = self._order.index(job.id) if job.id in self._order else 0
            return {
                "id": job.id,
                "state": job.state,
                "stage": job.stage,
                "position": ahead,
                "step": job.step,
                "steps": job.steps,
                "message": job.message,
                "summary": job.summary,
                "warnings": list(job.warnings),
                "notes": list(job.notes),
                "people": list(job.people),
                "faces": list(job.faces),
            }

    def update(self, job: Job, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)

    def expire(self) -> None:
        """Forget finished jobs nobody has looked at for `keep_seconds`, deleting their files."""
        now = time.monotonic()
        with self._lock:
            old = [j for j in self._jobs.values() if j.state in ("done", "failed") and now - j.touched > self._keep]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            shutil.rmtree(job.folder, ignore_errors=True)

    def close(self) -> None:
        """Stop the worker after the job it is running (queued jobs are dropped)."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                self._order.remove(job.id)
                job.state, job.stage = "running", "starting"
            try:
                self._work(job)
                self.update(job, state="done", stage="done")
            except RefFaceError as error:
                self.update(job, state="failed", message=str(error))
            except Exception as error:  # a bug must not kill the worker: report it and go on
                traceback.print_exc()
                reason = short_reason(error)
                self.update(job, state="failed", message=f"The restoration failed unexpectedly ({reason}).")
            finally:
                job.touched = time.monotonic()
