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
import gc
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Protocol

from node import tempfiles, wake
from node.config import Config
from node.domain import JobState
from node.jobs import ClaimedJob, RetryPolicy, claim_job, fail_job, finish_job, heartbeat, release_job
from node.pipeline import JobOutcome, Pipeline
from node.registry import Database
from node.registry.db import guard_sessions

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


def apply_address_space_limit(cfg: Config) -> bool:
    """``jobs.max_address_space_mb`` as this process's RLIMIT_AS (soft limit; ``hipnode work``
    only, before the models load). Returns whether a limit was set.

    Why: an allocation that the image screening did not foresee (``screening.max_decoded_mb``
    bounds decoding) then fails with MemoryError in the job that made it — pixel decoding turns
    that into the image's screening reason, anything else fails the job with its reason —
    instead of the kernel's OOM killer ending the process (a receiver too, were it the same
    process: hence not for ``hipnode run``). Not with a GPU provider: CUDA reserves far more
    address space than it uses. Address space is not memory: thread stacks and malloc arenas
    reserve some unused, so set it well above a working worker's VmSize (``/proc/PID/status``).
    """
    limit_mb = cfg.jobs.max_address_space_mb
    if limit_mb is None:
        return False
    if cfg.models.provider != "cpu":
        log.warning(
            "jobs.max_address_space_mb is not applied with the %s provider (it reserves far more address "
            "space than memory)", cfg.models.provider,
        )
        return False
    import resource

    limit = int(limit_mb * 2**20)
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and limit > hard:
        limit = hard
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError) as exc:
        log.warning("jobs.max_address_space_mb: cannot limit the address space: %s", exc)
        return False
    log.info("address space of this worker process limited to %d MiB (jobs.max_address_space_mb)", limit // 2**20)
    return True


class JobTimeLimit(BaseException):
    """Raised inside the worker thread when its job exceeds ``jobs.max_job_s``.

    A ``BaseException``: the pipeline's own ``except Exception`` guards (one hip's failure must
    not cost the study's report) must not swallow it."""


def _interrupt(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in another thread at its next Python bytecode (a thread blocked inside C
    code gets it when the call returns; until then its lease is simply no longer renewed).
    ``None`` withdraws one not delivered yet."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


#: How long the time limit waits for a job to leave a database session before interrupting it
#: there all the same (a session is milliseconds; one held longer is the job's own doing).
SESSION_GRACE_S = 30.0


class _SessionShield:
    """Keeps the per-job time limit out of SQLAlchemy (``node.registry.db.guard_sessions``).

    ``JobTimeLimit`` is an asynchronous exception: it lands at whatever bytecode the job's
    thread runs next, and landing inside SQLAlchemy's connection check-in left the pool one
    connection short for good (found by making the limit strike there; after enough timed-out
    jobs every session would wait for a connection). So while the job's thread is inside a
    database session the limit is only marked, and raised by the session's end itself (after
    its commit or rollback and close: a synchronous exception at a safe point); outside a
    session it is raised at once. A job still inside one session ``SESSION_GRACE_S`` after the
    limit is interrupted there all the same (``forced``; the worker then renews the pool).

    One lock orders ``interrupt`` (lease thread) against a session's start and end (job's
    thread): the asynchronous exception is only ever sent while the job is outside a session,
    and a session that starts after it was sent withdraws it and raises it itself, before
    touching the database."""

    def __init__(self, thread_id: int, grace_s: float) -> None:
        self._thread_id = thread_id
        self._grace_s = grace_s
        self._lock = threading.Lock()
        self._depth = 0
        self._due_since: float | None = None
        self.sent = False  # the asynchronous exception was sent
        self.raised = False  # raised synchronously at a session's edge
        self.forced = False  # sent while the job was inside a session (past the grace)

    def interrupt(self) -> bool:
        """From the lease thread: raise the limit in the job's thread now unless it is inside a
        session (then it is raised as the session ends). True once it is under way."""
        with self._lock:
            if self.sent or self.raised:
                return True
            now = time.monotonic()
            if self._due_since is None:
                self._due_since = now
            if self._depth and now - self._due_since < self._grace_s:
                return False
            self.forced = self._depth > 0
            self.sent = True
            _interrupt(self._thread_id, JobTimeLimit)
            return True

    @contextmanager
    def section(self) -> Iterator[None]:
        with self._lock:
            if self._due_since is not None and not self.raised:
                if self.sent:
                    _interrupt(self._thread_id, None)  # withdrawn if not delivered yet: raised here
                self.raised = True
                raise JobTimeLimit
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                due = self._depth == 0 and self._due_since is not None and not (self.sent or self.raised)
                if due:
                    self.raised = True
            if due:
                raise JobTimeLimit


_SHIELD_POLL_S = 0.05  # how often a limit waiting for a session's end is looked at again


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
        self.shield = _SessionShield(self._worker_thread, SESSION_GRACE_S)
        self._halt = threading.Event()
        self.lost = threading.Event()
        self.timed_out = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-job-{job.job_pk}", daemon=True)
        # its own thread: a heartbeat can wait on the database (on SQLite, behind the job's own
        # write transaction), and the limit must not wait with it
        self._watch_thread = threading.Thread(target=self._watch, name=f"limit-job-{job.job_pk}", daemon=True)

    def __enter__(self) -> _LeaseKeeper:
        guard_sessions(self.shield)  # in the job's thread: its sessions keep the limit out
        self._thread.start()
        if math.isfinite(self._deadline):
            self._watch_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._halt.set()
            if self._watch_thread.is_alive():
                self._watch_thread.join()
            self._thread.join()
        finally:
            guard_sessions(None)
            if self.timed_out.is_set():
                # the job finished just as the limit struck: drop an interruption not yet delivered
                _interrupt(self._worker_thread, None)

    def _watch(self) -> None:
        """At the deadline: the limit, at once or (inside a database session) as it ends."""
        if self._halt.wait(max(self._deadline - time.monotonic(), 0.0)):
            return
        while not self.shield.interrupt():
            if self._halt.wait(_SHIELD_POLL_S):
                return
        self.timed_out.set()

    def _run(self) -> None:
        job = self._job
        while not self._halt.wait(min(self._interval_s, max(self._deadline - time.monotonic(), 0.0))):
            if time.monotonic() >= self._deadline:
                return  # past the limit the lease is no longer renewed (``_watch``)
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

    def _recover_database(self, shield: _SessionShield | None) -> None:
        """After the time limit: whatever the interrupted job still referenced (a session, a
        connection) is released now, not at some later garbage collection (SQLAlchemy hands a
        connection found unreferenced back to its pool, rolled back). Had the limit to be forced
        inside a session, the pool itself is renewed: a connection interrupted in its check-in
        would otherwise stay counted as out for ever (connections other threads hold stay
        valid and are discarded when they come back)."""
        gc.collect()
        if shield is not None and shield.forced:
            log.warning("job interrupted inside a database session: renewing the connection pool")
            self.db.engine.dispose()

    def _process(self, job: ClaimedJob) -> None:
        jobs_cfg = self.cfg.jobs
        lease: _LeaseKeeper | None = None
        try:
            with _LeaseKeeper(self.db, job, jobs_cfg.heartbeat_s, jobs_cfg.lease_s, jobs_cfg.max_job_s) as lease:
                outcome = self.pipeline.process(job.job_pk)
        except JobTimeLimit:
            guard_sessions(None)  # had the limit landed in the lease keeper's exit, before it did this
            log.warning("job %d: stopped after the per-job time limit of %g s", job.job_pk, jobs_cfg.max_job_s)
            self._recover_database(lease.shield if lease is not None else None)
            fail_job(self.db, job.job_pk, self.worker_id,
                     f"exceeded the per-job time limit of {jobs_cfg.max_job_s:g} s (jobs.max_job_s)",
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
        # result files a crashed worker left half-written (``node.tempfiles``)
        tempfiles.sweep_at_start(Path(self.cfg.outputs.root), ".tmp", "result write")
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
