"""``hipnode import DIR``: an archive analysed as live traffic would be, without the network.

How it runs (one process; ``node.bulk`` reads the files):

1. **Walk and record.** One thread walks the tree lazily and sends each file through the
   receiver's ingest path (``node.bulk.ingest_file``): header screening, storage, registry row,
   de-duplication by SOP Instance UID and content. Every file's outcome goes into the import
   manifest (``node.bulk.ImportManifest``), so a run started again skips finished files
   without opening them.
2. **Complete at once.** Series are recorded with a quiet period of a week (a running node's
   scheduler leaves them alone) and completed by the importer as soon as the directory that
   held their files is done — an archive has no late images to wait for. Whatever is still
   open when the walk ends (the files of a series spread over several directories, or a run
   killed between recording and completing) is completed then. A series whose files turn up
   in a later directory after all is re-opened by the ingest path and gets a new generation,
   exactly as a late image would on the live path.
3. **Analyse in process.** ``--workers N`` threads (``--engine local``, sharing one set of
   models) or N Ray actors (``--engine ray``, each with its own) run ``node.worker.Worker``
   around ``node.pipeline.Pipeline`` — the very code a ``hipnode work`` process runs — until
   every job of the import's series has ended.

**Priority.** Imported jobs are queued at ``--priority`` (default -10, below the 0 of live
traffic; calling AEs may set their own, larger runs first). Workers claim the most urgent job
first, so a node sharing the registry serves its live series before the archive's, and the
import's own workers, being ordinary workers, also take a live job first when one is waiting.
Where jobs share inference batches (``node.infer.batcher``), a job's images carry its priority
too: a batch takes live images first and fills the rest with imported ones.

**Outputs.** Results go where the pipeline writes them (``outputs.root``, or ``--out DIR``)
and are recorded in the registry; they are queued for a destination only with ``--send DEST``
(the import ignores the routing rules: an archive is not sent anywhere unless asked), and then
a dispatcher thread of the import sends them.

**Resuming.** Jobs left running by an importer that died on this host are handed back at
start (their pid is gone); others come back when their lease expires (the sweeper runs here
too). The pipeline is idempotent, so a job redone writes the same results.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, select

from node import wake
from node.bulk import (
    REFUSED,
    FileOutcome,
    ImportManifest,
    count_files,
    ingest_file,
    refusal_reason,
    resumed_outcome,
    walk_files,
)
from node.config import Config, RouteMatch, RouteRule
from node.domain import JobState, SeriesState
from node.jobs import RetryPolicy, release_job, sweep_stale
from node.receive.handlers import InvalidDataset
from node.receive.storage import InstanceStore, OutOfResources, uid_digest
from node.registry import Database, Job, Series
from node.registry.ingest import IngestKind
from node.series import complete_now

log = logging.getLogger(__name__)

IMPORT_PRIORITY = -10  # live traffic's default is 0; larger runs first
IMPORT_QUIET_S = 7 * 24 * 3600.0  # keeps a running node's completion off the import's series
WORKER_PREFIX = "import"
_COMPLETABLE = (SeriesState.OPEN.value, SeriesState.REOPENED.value)
_UNFINISHED = (JobState.QUEUED.value, JobState.RUNNING.value)


@dataclass
class ImportOptions:
    calling_ae: str = "IMPORT"
    workers: int = 1  # 0: record only, a running node analyses after its quiet period
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # None: a local Ray with ``workers`` CPUs
    ray_gpus_per_actor: float | None = None  # None: 1 with a GPU provider (models.provider), else 0
    out: Path | None = None  # results root instead of outputs.root
    send: str | None = None  # destination to queue results for
    priority: int = IMPORT_PRIORITY
    manifest: Path | None = None
    progress: bool = True
    progress_interval_s: float = 0.5


# --------------------------------------------------------------------------- configuration


def import_config(cfg: Config, opts: ImportOptions) -> Config:
    """The node's configuration as the import's pipeline sees it: results under ``--out``,
    routed to ``--send`` only, every path absolute (Ray actors may start elsewhere)."""
    if opts.send is not None:
        cfg.destination(opts.send)  # KeyError for an unknown destination
    outputs_root = Path(opts.out) if opts.out is not None else Path(cfg.outputs.root)
    routing = [RouteRule(match=RouteMatch(calling_ae=opts.calling_ae), destinations=[opts.send])] if opts.send else []
    database = cfg.database
    url = database.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    return cfg.model_copy(
        update={
            "outputs": cfg.outputs.model_copy(update={"root": outputs_root.resolve()}),
            "storage": cfg.storage.model_copy(update={"root": Path(cfg.storage.root).resolve()}),
            "models": cfg.models.model_copy(update={"root": Path(cfg.models.root).resolve()}),
            "database": database.model_copy(update={"url": url}),
            "routing": routing,
            "calling_aes": [a for a in cfg.calling_aes if a.ae_title != opts.calling_ae],
        }
    )


# --------------------------------------------------------------------------- registry steps


def complete_series(db: Database, cfg: Config, series_pk: int, priority: int) -> int | None:
    """Complete one imported series now and queue its job at ``priority``; ``None`` when it is
    not open (completed already, by us or anybody). ``node.series.complete_now``: the same
    transition as after a quiet period, without the wait."""
    return complete_now(db, cfg, series_pk, priority=priority, by="import")


def complete_open_series(db: Database, cfg: Config, calling_ae: str, priority: int) -> list[int]:
    """Complete every series of the import's calling AE still open (see module doc, step 2)."""
    with db.session() as s:
        pks = list(s.scalars(
            select(Series.id).where(Series.calling_ae == calling_ae[:16], Series.state.in_(_COMPLETABLE))
            .order_by(Series.id)
        ))
    return [j for pk in pks if (j := complete_series(db, cfg, pk, priority)) is not None]


def unfinished_jobs(db: Database, calling_ae: str) -> int:
    """Jobs of the import's series that are queued or running (by anybody)."""
    with db.session() as s:
        return int(s.scalar(
            select(func.count()).select_from(Job).join(Series, Series.id == Job.series_pk)
            .where(Series.calling_ae == calling_ae[:16], Job.state.in_(_UNFINISHED))
        ) or 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_orphans(db: Database) -> int:
    """Hand back jobs held by importers of this host whose process is gone (a killed run):
    without it a restarted import would wait out their leases. The attempt does not count."""
    prefix = f"{WORKER_PREFIX}:{socket.gethostname()}:"
    with db.session() as s:
        held = s.execute(
            select(Job.id, Job.worker_id, Job.attempts)
            .where(Job.state == JobState.RUNNING.value, Job.worker_id.like(prefix + "%"))
        ).all()
    released = 0
    for job_pk, worker_id, attempts in held:
        pid_text = str(worker_id)[len(prefix):].split(":", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)) and release_job(
            db, job_pk, str(worker_id), "the importer holding it is gone", attempt=attempts
        ):
            released += 1
    return released


def worker_id(tag: str) -> str:
    """``import:<host>:<pid>:<tag>:<random>``: :func:`release_orphans` reads host and pid."""
    return f"{WORKER_PREFIX}:{socket.gethostname()}:{os.getpid()}:{tag}:{uuid.uuid4().hex[:6]}"


# --------------------------------------------------------------------------- progress


@dataclass
class Progress:
    """Counters shared by the walker and the workers, drawn as one stderr line.

    The ETA is the later of the walk's and the analysis's: files left at the walk's rate, and
    jobs left — those queued plus those the rest of the walk will queue, extrapolated — at the
    analysis's rate. Files skipped as done do not enter the rates."""

    total: int | None = None
    walked: int = 0
    skipped: int = 0
    refused: int = 0
    jobs_queued: int = 0
    jobs_done: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def line(self) -> str:
        with self.lock:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            worked = self.walked - self.skipped
            file_rate = worked / elapsed
            job_rate = self.jobs_done / elapsed
            total = self.total
            parts = [f"files {self.walked}" + (f"/{total}" if total is not None else "")]
            if total:
                parts[0] += f" ({100.0 * self.walked / total:.1f} %)"
            parts.append(f"{file_rate:.1f} files/s")
            parts.append(f"jobs {self.jobs_done}/{self.jobs_queued} ({job_rate:.2f}/s)")
            eta: float | None = None
            if total is not None and file_rate > 0 and worked > 0:
                eta = (total - self.walked) / file_rate
                expected_jobs = self.jobs_queued * (total - self.skipped) / max(worked, 1)
                if job_rate > 0:
                    eta = max(eta, (expected_jobs - self.jobs_done) / job_rate)
                elif self.jobs_queued:
                    eta = None
            parts.append("ETA " + (_hms(eta) if eta is not None else "?"))
            if self.skipped:
                parts.append(f"{self.skipped} done before")
            if self.refused:
                parts.append(f"{self.refused} refused")
        return " | ".join(parts)


def _hms(seconds: float) -> str:
    s = max(int(seconds + 0.5), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Bar:
    """Redraws the progress line on stderr: in place on a terminal, else every 30 s."""

    def __init__(self, progress: Progress, interval_s: float, enabled: bool) -> None:
        self.progress = progress
        self.tty = sys.stderr.isatty()
        self.interval_s = interval_s if self.tty else max(interval_s, 30.0)
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="import-progress", daemon=True)

    def __enter__(self) -> _Bar:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self._draw(final=True)

    def _draw(self, final: bool = False) -> None:
        text = self.progress.line()
        if self.tty:
            sys.stderr.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._draw()


# --------------------------------------------------------------------------- the walk


class _Walker:
    """Step 1 and 2 of the module doc, on its own thread."""

    def __init__(self, cfg: Config, db: Database, root: Path, manifest: ImportManifest,
                 opts: ImportOptions, progress: Progress) -> None:
        self.cfg, self.db, self.root, self.manifest, self.opts, self.progress = cfg, db, root, manifest, opts, progress
        self.store = InstanceStore(cfg.storage.root, min_free_mb=cfg.storage.min_free_mb, fsync=cfg.storage.fsync)
        self.analyse = opts.workers > 0
        self.done = threading.Event()
        self.stopped_for_space = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._walk()
            if self.analyse:
                self._queued(complete_open_series(self.db, self.cfg, self.opts.calling_ae, self.opts.priority))
        except BaseException as exc:
            self.error = exc
            log.exception("import: the walk failed")
        finally:
            self.done.set()
            wake.notify(wake.JOBS)

    def _queued(self, jobs: list[int]) -> None:
        with self.progress.lock:
            self.progress.jobs_queued += len(jobs)

    def _walk(self) -> None:
        quiet = IMPORT_QUIET_S if self.analyse else None
        for _folder, entries in walk_files(self.root):
            touched: set[int] = set()
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                key = entry.path
                claim = self.manifest.begin(key, st.st_size, st.st_mtime_ns)
                if claim.done:
                    with self.progress.lock:
                        self.progress.walked += 1
                        self.progress.skipped += 1
                    continue
                try:
                    outcome = ingest_file(self.cfg, self.db, self.store, Path(entry.path), self.opts.calling_ae,
                                          quiet_period_s=quiet, screen=True)
                    if claim.interrupted is not None:
                        outcome = resumed_outcome(self.db, outcome, claim.interrupted)
                except OutOfResources as exc:
                    log.error("import: storage below watermark, stopping the walk: %s", exc.strerror)
                    self.stopped_for_space = True
                    return
                except (InvalidDataset, ValueError, OSError) as exc:
                    outcome = FileOutcome(REFUSED, None, refusal_reason(exc))
                    log.info("import: file %s refused: %s", uid_digest(key)[:12], outcome.detail)
                self.manifest.record(key, st.st_size, st.st_mtime_ns, outcome)
                if outcome.kind in (IngestKind.NEW.value, IngestKind.NEW_VERSION.value) and outcome.series_pk:
                    touched.add(outcome.series_pk)
                with self.progress.lock:
                    self.progress.walked += 1
                    self.progress.refused += outcome.kind == REFUSED
            if self.analyse:
                self._queued([j for pk in sorted(touched)
                              if (j := complete_series(self.db, self.cfg, pk, self.opts.priority)) is not None])


# --------------------------------------------------------------------------- engines


def _finished(walker: _Walker, db: Database, calling_ae: str) -> bool:
    return walker.done.is_set() and unfinished_jobs(db, calling_ae) == 0


def _run_local(cfg: Config, db: Database, opts: ImportOptions, walker: _Walker, progress: Progress) -> None:
    """``--workers N`` threads, one set of models (onnxruntime sessions are thread-safe); the
    threads' jobs share inference batches (``node.infer.batcher``, ``batching`` in the config)."""
    from node.pipeline import Models, Pipeline
    from node.worker import WORKER_STACK_BYTES, Worker

    models = Models(cfg)
    workers = [
        Worker(cfg, db, pipeline_factory=lambda c, d: Pipeline(c, d, models), worker_id=worker_id(f"w{i}"))
        for i in range(opts.workers)
    ]
    policy = RetryPolicy.from_config(cfg.jobs)

    def loop(worker: Worker, sweeper: bool) -> None:
        last_sweep = 0.0
        while True:
            if sweeper and time.monotonic() - last_sweep > cfg.jobs.sweep_interval_s:
                last_sweep = time.monotonic()
                with contextlib.suppress(Exception):
                    sweep_stale(db, policy=policy)
            try:
                worked = worker.run_once()
            except Exception:
                log.exception("import worker %s: claim/record failed", worker.worker_id)
                worked = False
            if worked:
                with progress.lock:
                    progress.jobs_done += 1
            elif _finished(walker, db, opts.calling_ae):
                return
            else:
                wake.wait(wake.JOBS, cfg.jobs.poll_interval_s)

    # SR composition (highdicom content trees, deep-copied recursively) can outgrow a thread's
    # default C stack: a worker thread segfaulted on the JPEG 2000 bench archive. The main
    # thread's 8 MiB is not at issue; worker threads get as much explicitly.
    previous = threading.stack_size(WORKER_STACK_BYTES)
    try:
        threads = [threading.Thread(target=loop, args=(w, i == 0), name=f"import-worker-{i}", daemon=True)
                   for i, w in enumerate(workers)]
        for t in threads:
            t.start()
    finally:
        threading.stack_size(previous)
    for t in threads:
        t.join()
    models.close()  # the batchers' threads (``node.infer.batcher``) end with the import


class RayWorker:
    """One Ray actor: its own registry connection, models and ``node.worker.Worker``."""

    def __init__(self, cfg: Config, index: int) -> None:
        from node import logsafe
        from node.pipeline import Models, Pipeline
        from node.worker import Worker

        logsafe.install(cfg.log_level)
        self.db = Database(cfg.database.url)
        models = Models(cfg)
        self.worker = Worker(cfg, self.db, pipeline_factory=lambda c, d: Pipeline(c, d, models),
                             worker_id=worker_id(f"ray{index}"))
        self.poll_s = cfg.jobs.poll_interval_s

    def work(self, budget_s: float) -> int:
        """Process jobs for up to ``budget_s`` (the job in hand is finished); returns how many."""
        done = 0
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            if self.worker.run_once():
                done += 1
            elif done:
                break
            else:
                time.sleep(self.poll_s)
        return done


def ray_actor_options(cfg: Config, opts: ImportOptions) -> dict[str, float]:
    """Resources each Ray actor asks for: one CPU, and with a GPU provider (``models.provider``
    cuda or tensorrt) one GPU unless ``--ray-gpus-per-actor`` says otherwise (0.5: two actors
    share a GPU). Why ask at all: Ray places an actor on a node with the resources it requests
    and hands it that GPU (``CUDA_VISIBLE_DEVICES``); an actor that asks for none may land on a
    CPU-only node or see no GPU, and the node then refuses to start its models on the CPU."""
    gpus = opts.ray_gpus_per_actor
    if gpus is None:
        gpus = 0.0 if cfg.models.provider == "cpu" else 1.0
    if gpus < 0:
        raise ValueError(f"--ray-gpus-per-actor must be >= 0, got {gpus:g}")
    return {"num_cpus": 1.0, "num_gpus": float(gpus)} if gpus > 0 else {"num_cpus": 1.0}


def _run_ray(cfg: Config, db: Database, opts: ImportOptions, walker: _Walker, progress: Progress) -> None:
    """``--engine ray``: ``--workers`` actors claim jobs from the shared registry. On a cluster
    (``--ray-address``) the registry must be PostgreSQL and storage / results shared paths."""
    import ray  # type: ignore[import-not-found,import-untyped,unused-ignore]

    started_here = not ray.is_initialized()
    if started_here:
        if opts.ray_address:
            ray.init(address=opts.ray_address, log_to_driver=False)
        else:
            # a one-machine Ray on loopback, no dashboard: nothing listens beyond this host
            ray.init(num_cpus=max(opts.workers, 1), include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
    try:
        resources: dict[str, Any] = dict(ray_actor_options(cfg, opts))
        actor_cls: Any = ray.remote(**resources)(RayWorker)
        actors = [actor_cls.remote(cfg, i) for i in range(max(opts.workers, 1))]
        inflight: dict[Any, Any] = {a.work.remote(2.0): a for a in actors}
        policy = RetryPolicy.from_config(cfg.jobs)
        last_sweep = time.monotonic()
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            if time.monotonic() - last_sweep > cfg.jobs.sweep_interval_s:
                last_sweep = time.monotonic()
                with contextlib.suppress(Exception):
                    sweep_stale(db, policy=policy)
            for ref in ready:
                actor = inflight.pop(ref)
                n = int(ray.get(ref))
                with progress.lock:
                    progress.jobs_done += n
                if n == 0 and _finished(walker, db, opts.calling_ae):
                    continue
                inflight[actor.work.remote(2.0)] = actor
        for actor in actors:
            ray.kill(actor)
    finally:
        if started_here:
            ray.shutdown()


# --------------------------------------------------------------------------- summary


def summarise(db: Database, results_root: Path, calling_ae: str, manifest: ImportManifest) -> dict[str, Any]:
    """Counts for the end of an import, from the registry (export rows) and the manifest."""
    from node.export import SIDES, ExportFilter, image_rows

    views: Counter[str] = Counter()
    excluded: Counter[str] = Counter()
    implants: Counter[str] = Counter()
    states: Counter[str] = Counter()
    cups = 0
    for row in image_rows(db, results_root, ExportFilter(calling_ae=calling_ae[:16])):
        states[str(row["state"])] += 1
        if row["state"] == "screened_out" and row["screen_reason"]:
            excluded[str(row["screen_reason"]).split(": ", 1)[0]] += 1
        elif row["state"] == "accepted" and row["view"]:
            views[str(row["view"])] += 1
        for side in SIDES:
            implant = row[f"implant_{side}"]
            if implant is not None:
                implants["implant" if implant == "1" else "native"] += 1
            if row[f"inclination_deg_{side}"] is not None:
                cups += 1
    files = manifest.counts()
    excluded.update(manifest.exclusions())
    with db.session() as s:
        jobs = dict(
            (str(k), int(n)) for k, n in s.execute(
                select(Job.state, func.count()).join(Series, Series.id == Job.series_pk)
                .where(Series.calling_ae == calling_ae[:16]).group_by(Job.state)
            ).all()
        )
    return {
        "files": dict(sorted(files.items())),
        "images": dict(sorted(states.items())),
        "views": dict(sorted(views.items())),
        "excluded": dict(sorted(excluded.items())),
        "hips": dict(sorted(implants.items())),
        "cups_measured": cups,
        "jobs": dict(sorted(jobs.items())),
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    for key in ("files", "images", "views", "excluded", "hips", "jobs"):
        entries = summary.get(key) or {}
        body = ", ".join(f"{k} {v}" for k, v in entries.items()) or "none"
        lines.append(f"{key}: {body}")
    lines.append(f"cups measured: {summary.get('cups_measured', 0)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def run_import(cfg: Config, db: Database, root: Path, opts: ImportOptions) -> dict[str, Any]:
    """Import and analyse ``root``; returns the summary (``format_summary`` prints it)."""
    icfg = import_config(cfg, opts)
    root = Path(root).resolve()
    manifest = ImportManifest(opts.manifest or ImportManifest.default_path(icfg, root))
    progress = Progress()
    released = release_orphans(db)
    if released:
        log.info("import: %d job(s) of a previous importer handed back", released)
    counter = threading.Thread(target=lambda: setattr(progress, "total", count_files(root)),
                               name="import-count", daemon=True)
    counter.start()
    walker = _Walker(icfg, db, root, manifest, opts, progress)
    walk_thread = threading.Thread(target=walker.run, name="import-walk", daemon=True)
    stop_dispatch = threading.Event()
    dispatcher_thread = None
    if opts.send is not None and opts.workers > 0:
        from node.dispatch import Dispatcher

        dispatcher = Dispatcher(icfg, db, results_root=icfg.outputs.root)
        dispatcher_thread = threading.Thread(target=dispatcher.run_forever, args=(stop_dispatch,),
                                             name="import-dispatch", daemon=True)
    log.info("import of %s: %s engine, %d worker(s), priority %d", uid_digest(str(root))[:12],
             opts.engine, opts.workers, opts.priority)
    try:
        with _Bar(progress, opts.progress_interval_s, opts.progress):
            walk_thread.start()
            if dispatcher_thread is not None:
                dispatcher_thread.start()
            if opts.workers > 0:
                (_run_ray if opts.engine == "ray" else _run_local)(icfg, db, opts, walker, progress)
            walk_thread.join()
            if dispatcher_thread is not None:
                _drain_deliveries(db, opts.calling_ae, icfg.dispatch.interval_s)
        if walker.error is not None:
            raise RuntimeError("the archive walk failed") from walker.error
        summary = summarise(db, icfg.outputs.root, opts.calling_ae, manifest)
        summary["stopped_for_space"] = walker.stopped_for_space
        return summary
    finally:
        stop_dispatch.set()
        wake.notify(wake.DELIVERIES)
        if dispatcher_thread is not None and dispatcher_thread.is_alive():
            dispatcher_thread.join(timeout=60)
        manifest.close()


def _drain_deliveries(db: Database, calling_ae: str, interval_s: float, timeout_s: float = 600.0) -> None:
    """Wait (bounded) until the import's results are sent or given up; a destination that is
    down keeps them queued for a running node's dispatcher, as any delivery."""
    from node.domain import DeliveryState
    from node.registry import Delivery, Result

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db.session() as s:
            waiting = s.scalar(
                select(func.count()).select_from(Delivery).join(Result, Result.id == Delivery.result_pk)
                .join(Series, Series.id == Result.series_pk)
                .where(Series.calling_ae == calling_ae[:16],
                       Delivery.state == DeliveryState.PENDING.value)
            )
        if not waiting:
            return
        time.sleep(interval_s)
