"""The worker: claim a job, run the pipeline on it under a kept-alive lease, record the outcome.

Workers are separate processes from the receiver (a slow model never blocks a modality) and
may run many at once, on one host or several: everything they share goes through the
registry (``node.jobs``), never through memory or lock files.

Failure handling, from the job's point of view:

* the pipeline raises → ``fail_job``: retried after a backoff while attempts remain;
* the worker dies (SIGKILL, OOM, power) → heartbeats stop, the lease runs out, the sweeper
  re-queues the job; another worker redoes it (the pipeline is idempotent);
* the worker is stopped (SIGTERM/SIGINT) → it finishes the job in hand and claims no more; a
  second signal interrupts the pipeline and *releases* the job (the attempt does not count);
* the worker was too slow and lost its lease → its finish is refused by the registry, so the
  new owner's result stands.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from node import wake
from node.config import Config
from node.domain import JobState
from node.jobs import ClaimedJob, RetryPolicy, claim_job, fail_job, finish_job, heartbeat, release_job
from node.pipeline import JobOutcome, Pipeline
from node.registry import Database

log = logging.getLogger(__name__)

_OUTCOME_STATES = frozenset({JobState.DONE, JobState.SKIPPED})
_REASON_MAX_CHARS = 500


class JobProcessor(Protocol):
    """What a worker needs from a pipeline: process one job, raise to ask for a retry."""

    def process(self, job_pk: int) -> JobOutcome: ...


PipelineFactory = Callable[[Config, Database], JobProcessor]


def default_worker_id() -> str:
    """Unique per process and start: host and pid for humans, a random suffix so a recycled
    pid on a restarted container can never pass for the previous owner of a lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= _REASON_MAX_CHARS else text[: _REASON_MAX_CHARS - 1] + "…"


#: C stack of a worker thread: SR composition deep-copies highdicom content trees recursively,
#: and a worker thread on the platform default (8 MiB) segfaulted on the JPEG 2000 import bench.
WORKER_STACK_BYTES = 64 * 2**20


class JobTimeLimit(BaseException):
    """Raised inside the worker thread when its job exceeds ``jobs.max_job_s``.

    A ``BaseException``: the pipeline's own ``except Exception`` guards (one hip's failure must
    not cost the study's report) must not swallow it."""


def _interrupt(thread_id: int, exc: type[BaseException]) -> None:
    """Raise ``exc`` in another thread at its next Python bytecode (a thread blocked inside C
    code gets it when the call returns; until then its lease is simply no longer renewed)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))


class _LeaseKeeper:
    """Renews one job's lease every ``interval_s`` on a daemon thread until stopped.

    A failed renewal because of a database hiccup is retried on the next beat (the lease is
    several beats long); a *refused* renewal means the job was taken away and ends the thread.
    Past ``max_job_s`` it stops renewing and interrupts the job's thread (``JobTimeLimit``).
    """

    def __init__(self, db: Database, job: ClaimedJob, interval_s: float, lease_s: float,
                 max_job_s: float = math.inf) -> None:
        self._db = db
        self._job = job
        self._interval_s = interval_s
        self._lease_s = lease_s
        self._deadline = time.monotonic() + max_job_s
        self._worker_thread = threading.get_ident()
        self._halt = threading.Event()
        self.lost = threading.Event()
        self.timed_out = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-job-{job.job_pk}", daemon=True)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join()
        if self.timed_out.is_set():
            # the job finished just as the limit struck: drop an interruption not yet delivered
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._worker_thread), None)

    def _run(self) -> None:
        job = self._job
        while not self._halt.wait(min(self._interval_s, max(self._deadline - time.monotonic(), 0.0))):
            if time.monotonic() >= self._deadline:
                self.timed_out.set()
                _interrupt(self._worker_thread, JobTimeLimit)
                return
            try:
                renewed = heartbeat(self._db, job.job_pk, job.worker_id, self._lease_s, attempt=job.attempt)
            except Exception:
                log.warning("job %d: heartbeat failed, retrying next beat", job.job_pk, exc_info=True)
                continue
            if not renewed:
                self.lost.set()
                return


class Worker:
    """One job at a time; run several processes for parallelism (models hold their own threads)."""

    def __init__(
        self,
        cfg: Config,
        db: Database,
        pipeline_factory: PipelineFactory = Pipeline,
        worker_id: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.db = db
        self.worker_id = worker_id or default_worker_id()
        self.policy = RetryPolicy.from_config(cfg.jobs)
        # Built once: loading models per job would dominate the run time.
        self.pipeline = pipeline_factory(cfg, db)
        self.current: ClaimedJob | None = None

    def run_once(self) -> bool:
        """Claim and process one job; ``False`` when no job was runnable."""
        job = claim_job(self.db, self.worker_id, self.cfg.jobs.lease_s)
        if job is None:
            return False
        self.current = job
        try:
            self._process(job)
        finally:
            self.current = None
        return True

    def _process(self, job: ClaimedJob) -> None:
        jobs_cfg = self.cfg.jobs
        try:
            with _LeaseKeeper(self.db, job, jobs_cfg.heartbeat_s, jobs_cfg.lease_s, jobs_cfg.max_job_s) as lease:
                outcome = self.pipeline.process(job.job_pk)
        except JobTimeLimit:
            log.warning("job %d: stopped after the per-job time limit of %.0f s", job.job_pk, jobs_cfg.max_job_s)
            fail_job(self.db, job.job_pk, self.worker_id,
                     f"exceeded the per-job time limit of {jobs_cfg.max_job_s:.0f} s (jobs.max_job_s)",
                     attempt=job.attempt, policy=self.policy)
            return
        except Exception as exc:
            # Only the exception class in the log: messages from DICOM libraries may quote
            # attribute values. The full reason goes to the registry (the audit trail).
            log.warning("job %d: pipeline raised %s", job.job_pk, type(exc).__name__)
            log.debug("job %d: pipeline traceback", job.job_pk, exc_info=True)
            fail_job(
                self.db, job.job_pk, self.worker_id, _reason(exc), attempt=job.attempt, policy=self.policy
            )
            return
        except BaseException:
            # KeyboardInterrupt / SystemExit (second stop signal): not the job's fault.
            release_job(self.db, job.job_pk, self.worker_id, "worker interrupted", attempt=job.attempt)
            raise
        if lease.lost.is_set():
            log.warning("job %d: lease was lost while processing; the registry decides below", job.job_pk)
        try:
            state = JobState(outcome.state)
        except ValueError:
            state = JobState.RUNNING  # caught just below
        if state not in _OUTCOME_STATES:
            fail_job(
                self.db,
                job.job_pk,
                self.worker_id,
                f"pipeline returned state {outcome.state!r}, expected done or skipped",
                attempt=job.attempt,
                policy=self.policy,
            )
            return
        if not finish_job(
            self.db,
            job.job_pk,
            self.worker_id,
            state,
            outcome.reason,
            outcome.summary or None,
            attempt=job.attempt,
        ):
            log.warning("job %d: result of attempt %d discarded (lease lost)", job.job_pk, job.attempt)

    def run_forever(self, stop_event: threading.Event) -> None:
        """Work until ``stop_event`` is set; the job in hand is always finished first."""
        log.info("worker %s started", self.worker_id)
        while not stop_event.is_set():
            try:
                worked = self.run_once()
            except Exception:
                # Database unreachable or similar: keep the process alive and try again.
                log.exception("worker %s: claim/record failed", self.worker_id)
                worked = False
            if not worked and not stop_event.is_set():
                wake.wait(wake.JOBS, self.cfg.jobs.poll_interval_s)
        log.info("worker %s stopped", self.worker_id)


def install_stop_handlers(
    stop_event: threading.Event, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
) -> None:
    """First signal: set ``stop_event`` (finish the current job, then exit). A second one:
    raise ``SystemExit`` in the main thread, which releases the current job at once.

    Must be called from the main thread (Python delivers signals there).
    """

    def _handle(signum: int, _frame: FrameType | None) -> None:
        if stop_event.is_set():
            log.warning("second %s: interrupting the current job", signal.Signals(signum).name)
            raise SystemExit(128 + signum)
        log.info("%s: finishing the current job, then stopping", signal.Signals(signum).name)
        stop_event.set()
        wake.notify(wake.JOBS)  # do not sleep out a poll interval before stopping

    for sig in signals:
        signal.signal(sig, _handle)
