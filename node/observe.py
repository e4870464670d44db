"""Prometheus metrics (``/metrics``) of every node process: receiver, worker, dispatcher.

Why it is shaped this way:

* **Each process serves its own endpoint** (``metrics.port`` for ``hipnode run`` / ``receive``,
  ``metrics.work_port`` for ``hipnode work``): counters live in process memory, and a receiver
  and a worker on one host need two ports. Loopback by default — the labels name calling AEs
  and destinations, which is site information; bind elsewhere only behind a firewall.
* **Counters and histograms are observed where things happen** (one call each in the C-STORE
  handler, the dispatcher and around the pipeline), while **queue depths are read from the
  registry at scrape time** (:class:`RegistryCollector`): the database is the truth shared by
  all processes, so any one endpoint reports the whole queue, and no counter can drift from it.
* **A metrics failure never stops DICOM work**: a port already in use is logged as an error and
  the node runs on (Prometheus then shows the target down); an observation that raises is
  logged at DEBUG and dropped.
* **Bounded label values**: with ``allow_any_calling_ae`` any peer can choose its AE title, so
  calling AEs beyond the configured ones and the first :data:`MAX_DYNAMIC_AES` seen are counted
  as ``other`` — a hostile sender cannot grow the exposition without bound. No label ever holds
  a patient attribute or a UID other than a SOP *class*.
"""

from __future__ import annotations

import functools
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from node import __version__
from node.config import Config
from node.registry.models import Delivery, Job, Result, Series, utcnow

if TYPE_CHECKING:
    from node.pipeline import Models
    from node.registry import Database

log = logging.getLogger(__name__)

#: Distinct unconfigured calling AE titles given their own label before the rest become ``other``.
MAX_DYNAMIC_AES = 32
OTHER = "other"

# Buckets in seconds, chosen per stage: a quiet period is seconds to minutes, a model pass is
# sub-second to minutes on a CPU, the whole round trip up to an hour when a PACS is away.
_WAIT_BUCKETS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800)
_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_SEND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
_E2E_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800, 3600)

INSTANCES_RECEIVED = Counter(
    "hipnode_instances_received",
    "C-STORE instances acknowledged (0x0000), duplicates included",
    ["calling_ae", "sop_class"],
)
BYTES_RECEIVED = Counter(
    "hipnode_received_bytes",
    "Dataset bytes of acknowledged C-STORE instances",
    ["calling_ae", "sop_class"],
)
ASSOCIATIONS_ACCEPTED = Counter(
    "hipnode_associations_accepted", "Associations accepted by the receiver", ["calling_ae"]
)
ASSOCIATIONS_REJECTED = Counter(
    "hipnode_associations_rejected", "Associations rejected by the receiver (A-ASSOCIATE-RJ)", ["reason"]
)
SERIES_QUIET_WAIT = Histogram(
    "hipnode_series_quiet_wait_seconds",
    "Last instance of a series received -> series closed (quiet period plus check latency)",
    buckets=_WAIT_BUCKETS,
)
JOB_QUEUE_WAIT = Histogram(
    "hipnode_job_queue_wait_seconds", "Job queued -> claimed by a worker", buckets=_WAIT_BUCKETS
)
ANALYSIS = Histogram(
    "hipnode_analysis_seconds",
    "Per job: load, screen, decode, inference and measurement (the pipeline minus composition)",
    ["outcome"],
    buckets=_STAGE_BUCKETS,
)
COMPOSITION = Histogram(
    "hipnode_composition_seconds",
    "Per job: SR and Secondary Capture composition, writing and queueing for delivery",
    buckets=_STAGE_BUCKETS,
)
SENDING = Histogram(
    "hipnode_send_seconds", "One C-STORE of a result to a destination and recording its outcome", ["destination"], buckets=_SEND_BUCKETS
)
RECEIVED_TO_STORED = Histogram(
    "hipnode_received_to_stored_seconds",
    "Last instance of the series received -> result accepted by the destination",
    ["destination"],
    buckets=_E2E_BUCKETS,
)
DELIVERY_OUTCOMES = Counter(
    "hipnode_delivery_outcomes",
    "Delivery attempts recorded by this process, by destination and resulting state",
    ["destination", "state"],
)
BUILD_INFO = Gauge("hipnode_build_info", "Always 1; the running hipnode version", ["version"])
BUILD_INFO.labels(version=__version__).set(1)

_lock = threading.Lock()
_known_aes: frozenset[str] = frozenset()
_dynamic_aes: set[str] = set()


def configure(cfg: Config) -> None:
    """Remember the configured calling AEs: they always get their own label."""
    global _known_aes
    with _lock:
        _known_aes = frozenset(ae.ae_title for ae in cfg.calling_aes)


def ae_label(calling_ae: str) -> str:
    """The label for a calling AE title, bounded (see the module docstring)."""
    ae = calling_ae.strip()[:16]
    if ae in _known_aes or ae in _dynamic_aes:
        return ae
    with _lock:
        if len(_dynamic_aes) < MAX_DYNAMIC_AES:
            _dynamic_aes.add(ae)
            return ae
    return OTHER


def _safe(fn: Callable[..., None]) -> Callable[..., None]:
    """An observation must never break the work it observes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.debug("metrics observation %s failed", fn.__name__, exc_info=True)

    return wrapper


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    s = (later - earlier).total_seconds()
    return s if s >= 0 else None


# --------------------------------------------------------------------------- receiver


@_safe
def instance_received(calling_ae: str, sop_class: str, size: int) -> None:
    """One acknowledged C-STORE (called by the handler after the registry commit)."""
    labels = (ae_label(calling_ae), sop_class.strip()[:64])
    INSTANCES_RECEIVED.labels(*labels).inc()
    BYTES_RECEIVED.labels(*labels).inc(size)


#: A-ASSOCIATE-RJ (result source, reason/diagnostic) → label (PS3.8 9.3.4).
REJECT_REASONS: dict[tuple[int, int], str] = {
    (1, 1): "no_reason_given",
    (1, 2): "application_context_not_supported",
    (1, 3): "calling_ae_not_recognised",
    (1, 7): "called_ae_not_recognised",
    (2, 1): "no_reason_given_acse",
    (2, 2): "protocol_version_not_supported",
    (3, 1): "temporary_congestion",
    (3, 2): "local_limit_exceeded",
}


def _reject_reason(assoc: Any) -> str:
    rsp = getattr(assoc.acceptor, "primitive", None)
    key = (int(getattr(rsp, "result_source", 0) or 0), int(getattr(rsp, "diagnostic", 0) or 0))
    return REJECT_REASONS.get(key, "unknown")


@_safe
def _on_requested(event: Any) -> None:
    """Bound after ``AssociationGate``: counts the gate's rejections (which pynetdicom does not
    report as EVT_REJECTED, the gate having rejected inside EVT_REQUESTED)."""
    if event.assoc.is_rejected:
        ASSOCIATIONS_REJECTED.labels(_reject_reason(event.assoc)).inc()


@_safe
def _on_rejected(event: Any) -> None:
    """pynetdicom's own rejections: called AE title, association limit."""
    ASSOCIATIONS_REJECTED.labels(_reject_reason(event.assoc)).inc()


@_safe
def _on_accepted(event: Any) -> None:
    ASSOCIATIONS_ACCEPTED.labels(ae_label(str(event.assoc.requestor.ae_title))).inc()


class StoreStatsCollector(Collector):
    """The C-STORE handler's own outcome counters (stored, duplicate, refused…), read at scrape
    time, so refusals are counted without a metrics call on each of the handler's error paths."""

    def __init__(self) -> None:
        self.handlers: list[Any] = []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "hipnode_store_outcomes", "C-STORE outcomes of this receiver", labels=["outcome"]
        )
        totals = {"stored": 0, "duplicate": 0, "new_version": 0, "rejected": 0, "failed": 0}
        for handler in self.handlers:
            stats = handler.stats
            totals["stored"] += stats.stored
            totals["duplicate"] += stats.duplicates
            totals["new_version"] += stats.versions
            totals["rejected"] += stats.rejected
            totals["failed"] += stats.failed
        for outcome, n in totals.items():
            family.add_metric([outcome], n)
        yield family


_store_stats = StoreStatsCollector()


def watch_receiver(server: Any) -> None:
    """Bind the association counters to a running receiver (``node.receive.serve``) and expose
    its C-STORE outcome counters."""
    from pynetdicom import evt

    server.bind(evt.EVT_REQUESTED, _on_requested)
    server.bind(evt.EVT_REJECTED, _on_rejected)
    server.bind(evt.EVT_ACCEPTED, _on_accepted)
    receiver = getattr(server, "hipnode_receiver", None)
    handler = getattr(receiver, "store_handler", None)
    if handler is not None:
        _store_stats.handlers.append(handler)
        _register(_store_stats)


# --------------------------------------------------------------------------- worker


def instrument_pipeline(pipeline: Any, db: Database) -> Any:
    """Time a pipeline's jobs without touching its code: the instance's ``process`` and
    ``_compose_and_store`` are wrapped (the stage code stays free of metrics calls).
    Analysis is the job's time minus its composition; the series' quiet wait and the job's
    queue wait are read from the registry once per job."""
    process = pipeline.process
    compose = getattr(pipeline, "_compose_and_store", None)
    spent: threading.local = threading.local()

    def timed_compose(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return compose(*args, **kwargs) if compose is not None else None
        finally:
            spent.compose = getattr(spent, "compose", 0.0) + (time.monotonic() - started)

    def timed_process(job_pk: int) -> Any:
        _job_waits(db, job_pk)
        spent.compose = 0.0
        started = time.monotonic()
        outcome = process(job_pk)
        total = time.monotonic() - started
        composed = float(getattr(spent, "compose", 0.0))
        state = getattr(outcome, "state", "unknown")
        _job_timed(str(getattr(state, "value", state)), total - composed, composed)
        return outcome

    pipeline.process = timed_process
    if compose is not None:
        pipeline._compose_and_store = timed_compose
    return pipeline


@_safe
def _job_timed(state: str, analysis_s: float, composition_s: float) -> None:
    ANALYSIS.labels(state).observe(max(analysis_s, 0.0))
    if composition_s > 0:
        COMPOSITION.observe(composition_s)


@_safe
def _job_waits(db: Database, job_pk: int) -> None:
    with db.read_sessionmaker() as s:
        row = s.execute(
            select(Job.created_at, Job.started_at, Series.last_received_at, Series.completed_at)
            .join(Series, Series.id == Job.series_pk)
            .where(Job.id == job_pk)
        ).first()
    if row is None:
        return
    quiet = _seconds(row.completed_at, row.last_received_at)
    if quiet is not None:
        SERIES_QUIET_WAIT.observe(quiet)
    queued = _seconds(row.started_at, row.created_at)
    if queued is not None:
        JOB_QUEUE_WAIT.observe(queued)


# --------------------------------------------------------------------------- dispatcher


@_safe
def delivery_recorded(db: Database, result_pk: int, destination: str, state: Any, send_s: float) -> None:
    """One C-STORE of a result and the delivery state it led to (called by the dispatcher)."""
    value = str(getattr(state, "value", state))
    SENDING.labels(destination).observe(send_s)
    DELIVERY_OUTCOMES.labels(destination, value).inc()
    if value != "sent":
        return
    with db.read_sessionmaker() as s:
        last_received = s.scalar(
            select(Series.last_received_at).join(Result, Result.series_pk == Series.id).where(Result.id == result_pk)
        )
    waited = _seconds(utcnow(), last_received)
    if waited is not None:
        RECEIVED_TO_STORED.labels(destination).observe(waited)


# --------------------------------------------------------------------------- scrape-time state


class RegistryCollector(Collector):
    """Queue depth by state (series, jobs, deliveries per destination), read from the registry
    when Prometheus scrapes: the same numbers from every process, never drifting."""

    def __init__(self) -> None:
        self.db: Database | None = None

    def collect(self) -> Iterator[Metric]:
        db = self.db
        if db is None:
            return
        up = GaugeMetricFamily("hipnode_registry_up", "1 when the registry answered this scrape")
        try:
            with db.read_sessionmaker() as s:
                series = s.execute(select(Series.state, func.count()).group_by(Series.state)).all()
                jobs = s.execute(select(Job.state, func.count()).group_by(Job.state)).all()
                deliveries = s.execute(
                    select(Delivery.destination, Delivery.state, func.count()).group_by(
                        Delivery.destination, Delivery.state
                    )
                ).all()
        except Exception:
            log.warning("metrics: registry query failed", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        fam = GaugeMetricFamily("hipnode_series", "Series in the registry by state", labels=["state"])
        for state, n in series:
            fam.add_metric([str(state)], int(n))
        yield fam
        fam = GaugeMetricFamily("hipnode_jobs", "Jobs in the registry by state (queue depth)", labels=["state"])
        for state, n in jobs:
            fam.add_metric([str(state)], int(n))
        yield fam
        fam = GaugeMetricFamily(
            "hipnode_deliveries", "Deliveries in the registry by destination and state", labels=["destination", "state"]
        )
        for dest, state, n in deliveries:
            fam.add_metric([str(dest), str(state)], int(n))
        yield fam


class DiskCollector(Collector):
    """Free space of the storage and results file systems against the watermark below which
    C-STORE answers 0xA700 (``storage.min_free_mb``)."""

    def __init__(self) -> None:
        self.paths: dict[str, Path] = {}
        self.min_free_bytes = 0.0

    def collect(self) -> Iterator[Metric]:
        free = GaugeMetricFamily("hipnode_disk_free_bytes", "Free bytes where the node writes", labels=["area"])
        size = GaugeMetricFamily("hipnode_disk_size_bytes", "Size of that file system", labels=["area"])
        for area, path in self.paths.items():
            probe = path
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            try:
                usage = shutil.disk_usage(probe)
            except OSError:
                continue
            free.add_metric([area], usage.free)
            size.add_metric([area], usage.total)
        yield free
        yield size
        yield GaugeMetricFamily(
            "hipnode_disk_min_free_bytes",
            "Watermark: below this free space on storage, C-STORE answers 0xA700",
            value=self.min_free_bytes,
        )


class ModelCollector(Collector):
    """The loaded model versions and the execution provider each session really runs on."""

    def __init__(self) -> None:
        self.models: list[tuple[str, str, str]] = []

    def collect(self) -> Iterator[Metric]:
        fam = GaugeMetricFamily(
            "hipnode_model_info", "Always 1 per loaded model", labels=["model", "version", "provider"]
        )
        for name, version, provider in self.models:
            fam.add_metric([name, version, provider], 1)
        yield fam


_registry_collector = RegistryCollector()
_disk_collector = DiskCollector()
_model_collector = ModelCollector()
_registered: set[int] = set()


def _register(collector: Collector) -> None:
    with _lock:
        if id(collector) not in _registered:
            REGISTRY.register(collector)
            _registered.add(id(collector))


def models_loaded(models: Models) -> None:
    """Expose the sessions of a worker's :class:`node.pipeline.Models`."""
    sessions = (models.triage.sessions if models.triage is not None else []) + (
        [models.detector.model] if models.detector is not None else []
    )
    if models.morphology is not None:
        sessions += [member.model for member in models.morphology.models]
    _model_collector.models = [(s.manifest.name, s.manifest.version, s.provider) for s in sessions]
    _register(_model_collector)


def watch_node(cfg: Config, db: Database) -> None:
    """Scrape-time collectors for one process: registry queue depths and disk space."""
    configure(cfg)
    _registry_collector.db = db
    _disk_collector.paths = {"storage": Path(cfg.storage.root), "results": Path(cfg.outputs.root)}
    _disk_collector.min_free_bytes = cfg.storage.min_free_mb * 2**20
    _register(_registry_collector)
    _register(_disk_collector)


def serve(cfg: Config, *, port: int) -> Any | None:
    """Start ``/metrics`` on ``cfg.metrics.host:port`` in a daemon thread; returns the server
    (stop it with :func:`stop`), or ``None`` when disabled or the port cannot be bound."""
    if not cfg.metrics.enabled:
        return None
    try:
        server, _thread = start_http_server(port, addr=cfg.metrics.host)
    except OSError as exc:
        log.error(
            "metrics endpoint not started on %s:%d: %s (the node runs on without it)",
            cfg.metrics.host,
            port,
            exc.strerror or exc,
        )
        return None
    log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, port)
    return server


def stop(server: Any | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()
