"""Dynamic batching of model runs across series (issue 16, part 3), as Triton's dynamic batcher.

Why: a worker analyses one series per job, and a series has a handful of images, so without
this a model never sees a batch larger than one series. With several jobs in flight in one
process (worker threads of ``hipnode run`` / ``work``, the analysis threads of ``hipnode
import``), their requests for the same model are merged into one ONNX run. That is for accelerators, where
larger batches are what fill the device (not measured yet: no GPU was available). On a CPU a
run's cost grows with its rows, so there is nothing to gain (``benchmarks/bench_infer.py``
measures batched and per-series side by side: equal within the noise of a shared 2-core
machine), and the batcher's job there is to cost neither latency nor throughput.

How: each model session is wrapped (:meth:`BatchingGroup.wrap`) in a :class:`BatchedSession`
whose ``run`` hands its NCHW batch to the model's :class:`DynamicBatcher` and blocks. The
model's batcher thread forms batches from the pending requests and runs them one after another
on the real session; each caller gets back exactly its own rows, in its order. The models' own
code (``node.infer.triage``, ``detector``, ``morphology``) does not know. ``instances`` > 1
gives a model that many batcher threads (Triton's instance count): that many runs of it at once,
each taking what has piled up — for a CPU, where one run does not use every core as well as
two side by side do.

When a batch starts: as soon as one of these holds —

* the pending rows reach ``max_batch`` (a batch never holds more rows; a larger request is
  split and reassembled);
* the oldest pending request has waited ``max_wait_ms`` (the latency budget: the batcher never
  *holds* a request longer than that to fill a batch; a request may of course also wait for the
  batch already running on the model to finish);
* every registered client of the group is blocked waiting on some model (:meth:`client`: the
  pipeline registers the job's thread while it runs the models). Nobody else can then add to the
  batch, so waiting longer would only add latency: with one job in flight a batch starts at
  once, exactly as without batching. Threads that never registered (benchmarks, evaluation)
  are not waited for.

Priority: a request carries the priority of the job it serves (``node.jobs``: larger runs
first; live traffic 0, ``hipnode import`` -10 by default). Pending requests are taken into a
batch highest priority first, oldest first within a priority, so an imported archive fills the
room that live series leave but never delays them: a live request waits at most for the
batches already running. Import requests can wait as long as live traffic keeps every batch full; that
is the intent (the job queue orders jobs the same way).

Failures: an exception in a run goes back to the callers whose rows were in that batch, never
further. A batch of several requests that fails is run again request by request, so one
malformed input fails only its own job and the others still get their results. A stopped
batcher (:meth:`DynamicBatcher.stop`) fails its pending and later callers with
:class:`BatcherStopped` at once; nobody is left waiting. Results are the same numbers as an
unbatched run: each row's outputs do not depend on the rows beside it (checked bit for bit for
the bundled models on onnxruntime's CPU provider, and by ``tests/test_batcher.py``).
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from node.infer.session import ModelSession

log = logging.getLogger(__name__)

#: The priority of live traffic (``node.config.CallingAE.priority`` default); larger runs first.
LIVE_PRIORITY = 0
#: How often a blocked caller wakes to let an asynchronous exception in (``node.worker``'s
#: per-job time limit is raised in the job's thread at its next bytecode).
_POLL_S = 0.2
#: A batcher thread with nothing to do this long exits; the next request starts a new one, so
#: models loaded and dropped (tests, one ``hipnode import`` after another) leave no threads.
IDLE_EXIT_S = 30.0

RunFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
Outputs = dict[str, np.ndarray]


class BatcherStopped(RuntimeError):
    """The batcher was stopped before this request ran (the process is shutting down)."""


@dataclass(frozen=True)
class _Client:
    group: BatchingGroup | None
    priority: int


#: The calling thread's registration and priority (each thread has its own context).
_CLIENT: contextvars.ContextVar[_Client | None] = contextvars.ContextVar("hipnode_batch_client", default=None)


@dataclass
class _Request:
    rows: np.ndarray
    priority: int
    seq: int
    enqueued: float
    done: threading.Event = field(default_factory=threading.Event)
    result: Outputs | None = None
    error: BaseException | None = None

    @property
    def n(self) -> int:
        return int(self.rows.shape[0])


@dataclass
class BatcherStats:
    """Counters of one batcher (benchmarks, tests): what was run, and how much was shared."""

    runs: int = 0  # ONNX runs of merged batches (fallback runs not included)
    requests: int = 0  # requests served by those runs
    rows: int = 0
    shared_runs: int = 0  # runs that served more than one request
    max_rows: int = 0
    failed_runs: int = 0  # runs that raised (their requests were retried one by one if several)


class DynamicBatcher:
    """Merges concurrent requests for one model into runs of at most ``max_batch`` rows.

    Created by :meth:`BatchingGroup.batcher`; its thread starts with the first request and
    exits after ``IDLE_EXIT_S`` without work."""

    def __init__(self, group: BatchingGroup, run: RunFn, name: str) -> None:
        self.group = group
        self.name = name
        self._run_fn = run
        self._pending: list[_Request] = []
        self._threads: set[threading.Thread] = set()
        self._stopped = False
        self._seq = itertools.count()
        self.stats = BatcherStats()

    # ------------------------------------------------------------------ callers

    def submit(self, batch: np.ndarray, priority: int | None = None) -> Outputs:
        """Run ``batch`` (rows along axis 0) as part of a merged batch; blocks until done.

        ``priority`` defaults to the calling thread's (:meth:`BatchingGroup.client`), else
        ``LIVE_PRIORITY``."""
        client = _CLIENT.get()
        registered = client is not None and client.group is self.group
        if priority is None:
            priority = client.priority if client is not None else LIVE_PRIORITY
        if batch.shape[0] == 0:
            return dict(self._run_fn(batch))  # nothing to merge: the model's own answer to no rows
        g = self.group
        step = g.max_batch
        with g.cond:
            if self._stopped:
                raise BatcherStopped(f"{self.name}: the batcher is stopped")
            now = time.monotonic()
            requests = [
                _Request(batch[i : i + step], priority, next(self._seq), now) for i in range(0, batch.shape[0], step)
            ]
            self._pending.extend(requests)
            if registered:
                g.blocked += 1
            self._ensure_threads()
            g.cond.notify_all()
        try:
            for r in requests:
                while not r.done.wait(_POLL_S):
                    pass
        finally:
            with g.cond:
                if registered:
                    g.blocked -= 1
                # interrupted (a job time limit): what has not run yet is not run for nobody
                self._pending = [p for p in self._pending if all(p is not r for r in requests)]
        for r in requests:
            if r.error is not None:
                raise r.error
        results = [r.result for r in requests if r.result is not None]
        if len(results) == 1:
            return results[0]
        return {k: np.concatenate([res[k] for res in results]) for k in results[0]}

    def pending(self) -> int:
        """Requests waiting for a batch (not counting the batch running)."""
        with self.group.cond:
            return len(self._pending)

    def stop(self, timeout_s: float | None = 30.0) -> None:
        """Fail pending and later requests with ``BatcherStopped``; the batch running finishes
        and its callers get their results."""
        with self.group.cond:
            self._stopped = True
            for r in self._pending:
                r.error = BatcherStopped(f"{self.name}: stopped before this request ran")
                r.done.set()
            self._pending = []
            threads = set(self._threads)
            self.group.cond.notify_all()
        for thread in threads - {threading.current_thread()}:
            thread.join(timeout_s)

    # ------------------------------------------------------------------ the batcher thread

    def _ensure_threads(self) -> None:
        """Under the group lock: the model's ``instances`` threads, to serve what is queued."""
        while len(self._threads) < self.group.instances:
            t = threading.Thread(target=self._loop, name=f"batcher-{self.name}", daemon=True)
            self._threads.add(t)
            t.start()

    def threads(self) -> int:
        """Batcher threads alive (they end after ``IDLE_EXIT_S`` without work)."""
        with self.group.cond:
            return len(self._threads)

    def _loop(self) -> None:
        me = threading.current_thread()
        batch: list[_Request] = []
        try:
            while True:
                with self.group.cond:
                    batch = self._next_batch()
                    if not batch:
                        return
                self._execute(batch)
                batch = []
        except BaseException as exc:  # never leave a caller waiting on a thread that is gone
            for r in batch:
                if not r.done.is_set():
                    r.error = BatcherStopped(f"{self.name}: the batcher thread failed: {type(exc).__name__}")
                    r.done.set()
            log.exception("batcher %s: thread failed", self.name)
            raise
        finally:
            with self.group.cond:
                self._threads.discard(me)
                if self._pending and not self._stopped:
                    self._ensure_threads()  # requests that arrived while this one was leaving

    def _ready(self, now: float) -> float:
        """Under the lock: 0 when a batch should start now, else how long to wait at most."""
        g = self.group
        rows = sum(r.n for r in self._pending)
        if rows >= g.max_batch or g.blocked >= g.clients:
            return 0.0
        oldest = min(r.enqueued for r in self._pending)
        return max(oldest + g.max_wait_s - now, 0.0)

    def _next_batch(self) -> list[_Request]:
        """Under the lock: wait for a batch to be due and take it; [] when the thread should end."""
        cond = self.group.cond
        idle_until = time.monotonic() + IDLE_EXIT_S
        while True:
            if self._stopped:
                return []
            now = time.monotonic()
            if not self._pending:
                if now >= idle_until:
                    return []
                cond.wait(idle_until - now)
                continue
            wait = self._ready(now)
            if wait <= 0.0:
                return self._take()
            cond.wait(wait)

    def _take(self) -> list[_Request]:
        """Highest priority first, oldest first within it; only rows of one shape and dtype
        share a run (a malformed request cannot poison the batch of the others)."""
        order = sorted(self._pending, key=lambda r: (-r.priority, r.seq))
        first = order[0]
        shape, dtype = first.rows.shape[1:], first.rows.dtype
        room = self.group.max_batch
        taken: list[_Request] = []
        for r in order:
            if r.n <= room and r.rows.shape[1:] == shape and r.rows.dtype == dtype:
                taken.append(r)
                room -= r.n
                if room == 0:
                    break
        self._pending = [r for r in self._pending if all(r is not t for t in taken)]
        return taken

    def _run_checked(self, rows: np.ndarray) -> Outputs:
        out = {k: np.asarray(v) for k, v in self._run_fn(rows).items()}
        for k, v in out.items():
            if v.ndim == 0 or v.shape[0] != rows.shape[0]:
                raise ValueError(f"{self.name}: output {k!r} has shape {v.shape} for a batch of {rows.shape[0]}")
        return out

    def _execute(self, batch: list[_Request]) -> None:
        """Run one batch outside the lock and hand every caller its rows (or its error)."""
        try:
            rows = batch[0].rows if len(batch) == 1 else np.concatenate([r.rows for r in batch])
            out = self._run_checked(rows)
        except Exception as exc:
            with self.group.cond:
                self.stats.failed_runs += 1
            if len(batch) == 1:
                batch[0].error = exc
            else:
                log.warning("batcher %s: a batch of %d requests failed (%s); running them one by one",
                            self.name, len(batch), type(exc).__name__)
                for r in batch:
                    try:
                        r.result = self._run_checked(r.rows)
                    except Exception as own:
                        r.error = own
        else:
            offset = 0
            for r in batch:
                r.result = (
                    out if len(batch) == 1
                    else {k: v[offset : offset + r.n].copy() for k, v in out.items()}
                )
                offset += r.n
            with self.group.cond:
                s = self.stats
                s.runs += 1
                s.requests += len(batch)
                s.rows += rows.shape[0]
                s.shared_runs += len(batch) > 1
                s.max_rows = max(s.max_rows, int(rows.shape[0]))
        for r in batch:
            r.done.set()


class BatchedSession(ModelSession):
    """A :class:`ModelSession` whose ``run`` goes through a :class:`DynamicBatcher`; everything
    else (manifest, provider, the onnxruntime session) is the wrapped session's."""

    def __init__(self, inner: ModelSession, batcher: DynamicBatcher) -> None:
        super().__init__(manifest=inner.manifest, session=inner.session, provider=inner.provider)
        self.inner = inner
        self.batcher = batcher

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if batch.ndim != 4 or batch.dtype != np.float32:  # refused in the caller, as unbatched
            raise ValueError(f"batch must be float32 NCHW, got {batch.dtype} {batch.shape}")
        return self.batcher.submit(batch)


class BatchingGroup:
    """The batchers of one process's models, with what they share: the limits, one lock, and
    the count of registered clients (job threads running the models) and of those blocked."""

    def __init__(self, max_batch: int = 32, max_wait_ms: float = 5.0, instances: int = 1) -> None:
        if max_batch < 1 or instances < 1:
            raise ValueError("max_batch and instances must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.instances = instances  # runs of one model at once (Triton's instance count)
        self.cond = threading.Condition()
        self.clients = 0  # registered threads (``client``)
        self.blocked = 0  # registered threads waiting in some batcher's ``submit``
        self.batchers: list[DynamicBatcher] = []

    def batcher(self, run: RunFn, name: str) -> DynamicBatcher:
        b = DynamicBatcher(self, run, name)
        with self.cond:
            self.batchers.append(b)
        return b

    def wrap(self, session: ModelSession) -> BatchedSession:
        """``session`` with its runs batched (the unwrapped session runs the merged batches)."""
        inner = session.inner if isinstance(session, BatchedSession) else session
        return BatchedSession(inner, self.batcher(inner.run, inner.manifest.label.replace(" ", "-")))

    @contextmanager
    def client(self, priority: int = LIVE_PRIORITY) -> Iterator[None]:
        """Register the calling thread for the block: batches wait (up to ``max_wait_ms``) for
        a registered thread that is not yet waiting on a model, never for others. Its requests
        carry ``priority``. Nested use in one thread only changes the priority."""
        current = _CLIENT.get()
        outer = current is None or current.group is not self
        if outer:
            with self.cond:
                self.clients += 1
        token = _CLIENT.set(_Client(self, priority))
        try:
            yield
        finally:
            _CLIENT.reset(token)
            if outer:
                with self.cond:
                    self.clients -= 1
                    self.cond.notify_all()  # one fewer to wait for

    def stats(self) -> dict[str, BatcherStats]:
        with self.cond:
            return {b.name: BatcherStats(**vars(b.stats)) for b in self.batchers}

    def close(self) -> None:
        """Stop every batcher (pending and later requests fail with ``BatcherStopped``)."""
        for b in list(self.batchers):
            b.stop()
