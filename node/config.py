"""Configuration: ``config.yaml`` validated by pydantic.

Loaded once at start-up and passed explicitly to every stage (no global re-reads): a node that
changes behaviour mid-run because somebody edited a file is harder to reason about than one that
needs a restart. Every field has a default, so an empty file (or none) gives the embedded
defaults that ``make run`` uses: SQLite + storage under ``./var``, AE ``HIPNODE`` on 11112.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from node.domain import View

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash/control


def _check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be 1-65535")
    return value


def _check_ae(value: str) -> str:
    if not value.strip() or not _AE_RE.match(value):
        raise ValueError("must be 1-16 printable characters without backslash")
    return value.strip()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TLSConfig(_Strict):
    """TLS for the SCP (server side) or an SCU destination (client side)."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    # SCP: require and verify client certificates (default: no). SCU (a destination): verify the
    # PACS's certificate (default: yes, against ca_file or the system's CAs; false is an explicit
    # opt-out, logged at every start)
    verify_peer: bool | None = None

    @model_validator(mode="after")
    def _need_files(self) -> TLSConfig:
        if self.enabled and self.verify_peer is True and self.ca_file is None:
            raise ValueError("ca_file is required when verify_peer is true")
        return self

    def file_problems(self, where: str) -> list[str]:
        """Certificate, key and CA files that are named but missing or unreadable (check-config:
        a node must not learn at its first association that its TLS cannot start)."""
        if not self.enabled:
            return []
        out = []
        for name in ("cert_file", "key_file", "ca_file"):
            path = getattr(self, name)
            if path is not None and not (Path(path).is_file() and os.access(path, os.R_OK)):
                out.append(f"{where}.tls.{name}: {path} is not a readable file")
        return out


class NodeTLSConfig(TLSConfig):
    """The SCP's TLS: as :class:`TLSConfig`, plus a bound on the handshake, which runs in the
    connection's own thread (never in the accept loop) and is abandoned after this long."""

    handshake_timeout_s: float = Field(10.0, gt=0)


#: The largest PDU we offer and accept by default (1 MiB): a P-DATA-TF PDU is read into memory
#: whole, so this bounds the memory one association can make us allocate at once, while being
#: 8x what DCMTK sends (128 KiB), so throughput does not depend on it.
DEFAULT_MAX_PDU = 1024 * 1024
#: Upper bound for ``node.max_pdu``.
MAX_PDU_LIMIT = 16 * 1024 * 1024


class NodeConfig(_Strict):
    ae_title: str = "HIPNODE"
    host: str = "0.0.0.0"
    port: int = 11112
    max_pdu: int = Field(
        DEFAULT_MAX_PDU,
        ge=0,
        description="largest P-DATA PDU offered and accepted, bytes (4096-16 MiB); 0 = the default "
        "(PDUs are never unlimited: a longer announced PDU aborts the association unread)",
    )
    max_associations: int = Field(16, ge=1, le=1000)
    max_connections: int | None = Field(
        None,
        ge=1,
        description="TCP connections open at once (associations, and connections still in TLS or "
        "negotiation); more are closed on accept. Default 4 x max_associations",
    )
    acse_timeout_s: float = Field(
        30.0, gt=0, description="a connection must complete its A-ASSOCIATE-RQ within this, or is closed"
    )
    dimse_timeout_s: float = Field(60.0, gt=0)
    network_timeout_s: float = Field(
        60.0,
        gt=0,
        description="an association that completes no PDU for this long (silent, or trickling bytes) is aborted",
    )
    max_dataset_mb: float = Field(
        2048.0, gt=0, description="larger C-STORE datasets are discarded as they arrive and answered 0xA700"
    )
    max_inflated_mb: float = Field(
        256.0, gt=0, description="a deflated dataset inflating beyond this is refused (0xA700)"
    )
    max_buffered_mb: float = Field(
        64.0,
        gt=0,
        description="per association, received dataset bytes not yet written; beyond it reading "
        "pauses (TCP slows the sender)",
    )
    tls: NodeTLSConfig = NodeTLSConfig()
    require_called_ae: bool = False  # reject associations not addressed to ae_title

    _ae = field_validator("ae_title")(_check_ae)
    _port = field_validator("port")(_check_port)

    @property
    def connection_limit(self) -> int:
        """``max_connections``, or its default: room for every association plus as many
        connections again three times over still handshaking or negotiating."""
        return self.max_connections or 4 * self.max_associations

    @model_validator(mode="after")
    def _connections(self) -> NodeConfig:
        if self.max_connections is not None and self.max_connections < self.max_associations:
            raise ValueError("max_connections must be at least max_associations")
        return self

    @field_validator("max_pdu")
    @classmethod
    def _pdu(cls, v: int) -> int:
        if v == 0:
            return DEFAULT_MAX_PDU  # older configs said 0 for "unlimited"; that is no longer offered
        if not 4096 <= v <= MAX_PDU_LIMIT:
            raise ValueError(f"must be 0 (the default, {DEFAULT_MAX_PDU}) or 4096-{MAX_PDU_LIMIT}")
        return v


class StorageConfig(_Strict):
    root: Path = Path("var/storage")
    min_free_mb: float = Field(512.0, ge=0, description="below this free space C-STORE answers 0xA700")
    fsync: bool = True


class DatabaseConfig(_Strict):
    url: str = "sqlite:///var/hipnode.db"
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not (v.startswith("sqlite") or v.startswith("postgresql")):
            raise ValueError("must be a sqlite:// or postgresql:// URL")
        return v


class CallingAE(_Strict):
    """A modality or PACS allowed to send to us, with its own settings."""

    ae_title: str
    host: str | None = None  # optional: only accept this AE from this address
    quiet_period_s: float | None = Field(None, gt=0)
    priority: int = 0  # larger runs first
    destinations: list[str] | None = None  # overrides routing rules when set
    # View-aware completion (node.series, node.viewhint): once every view named here has arrived
    # in a study (by header hints), its open series from this AE complete without waiting out
    # the quiet period.
    expected_views: list[str] = []
    # view name -> regular expression (case-insensitive) over SeriesDescription / ProtocolName,
    # tried before the built-in header rules; may name views of its own
    view_patterns: dict[str, str] = {}
    # quiet period = clamp(3 x typical gap between instances of one series, series.adaptive_min_s,
    # quiet_period_s), the gap measured from this AE's recent series in the registry
    adaptive_quiet: bool = False

    _ae = field_validator("ae_title")(_check_ae)

    @field_validator("view_patterns")
    @classmethod
    def _patterns_compile(cls, v: dict[str, str]) -> dict[str, str]:
        for view, rx in v.items():
            try:
                re.compile(rx)
            except re.error as exc:
                raise ValueError(f"{view}: not a regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _known_views(self) -> CallingAE:
        builtin = {v.value for v in View if v is not View.OTHER}  # as node.viewhint.BUILTIN_VIEWS
        unknown = [v for v in self.expected_views if v not in builtin | set(self.view_patterns)]
        if unknown:
            raise ValueError(
                f"expected_views: unknown view(s) {unknown}: use {sorted(builtin)} or a view_patterns name"
            )
        return self


class SeriesConfig(_Strict):
    quiet_period_s: float = Field(10.0, gt=0)
    check_interval_s: float = Field(1.0, gt=0)
    # the shortest quiet period adaptive_quiet (per calling AE) may choose
    adaptive_min_s: float = Field(2.0, gt=0)


class JobsConfig(_Strict):
    lease_s: float = Field(120.0, gt=0)
    heartbeat_s: float = Field(15.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    retry_backoff_s: float = Field(10.0, ge=0)
    retry_backoff_max_s: float = Field(600.0, ge=0)
    poll_interval_s: float = Field(0.5, gt=0)
    sweep_interval_s: float = Field(10.0, gt=0)
    # A job still running after this long is stopped and counted as a failed attempt, and its
    # lease is no longer renewed: a hung job must not hold its series for ever.
    max_job_s: float = Field(900.0, gt=0)
    # ``hipnode work`` only: the process's address space (RLIMIT_AS), so that an allocation no
    # screening foresaw fails with MemoryError in the job that made it instead of waking the
    # kernel's OOM killer. Off by default; not applied with a GPU provider (CUDA reserves far
    # more address space than memory) nor by ``hipnode run`` (it would cap the receiver too).
    max_address_space_mb: float | None = Field(
        None, ge=1024, description="hipnode work: RLIMIT_AS of the process, MiB (null: no limit)"
    )

    @model_validator(mode="after")
    def _lease(self) -> JobsConfig:
        if self.heartbeat_s >= self.lease_s:
            raise ValueError("heartbeat_s must be shorter than lease_s")
        return self


OutputKind = Literal["sr", "sc", "gsps"]


class Destination(_Strict):
    name: str
    ae_title: str
    host: str
    port: int
    tls: TLSConfig = TLSConfig()
    verify_with_cfind: bool = False  # read back each result by C-FIND ("visible in PACS")
    timeout_s: float = Field(30.0, gt=0)
    # which results this destination receives; None: those on in `outputs` (sr, sc, gsps)
    outputs: list[OutputKind] | None = None

    _ae = field_validator("ae_title")(_check_ae)
    _port = field_validator("port")(_check_port)

    @field_validator("outputs")
    @classmethod
    def _unique_outputs(cls, value: list[OutputKind] | None) -> list[OutputKind] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("must not name an output twice")
        return value


class RouteMatch(_Strict):
    """All given fields must match (case-insensitive; ``*`` and ``?`` wildcards allowed)."""

    calling_ae: str | None = None
    modality: str | None = None
    body_part: str | None = None
    view: str | None = None


class RouteRule(_Strict):
    match: RouteMatch = RouteMatch()
    destinations: list[str]
    stop: bool = True  # first matching rule wins unless stop is false


class DispatchConfig(_Strict):
    backoff_s: float = Field(5.0, gt=0)
    backoff_max_s: float = Field(600.0, gt=0)
    # A delivery is retried until this long after it was queued (or re-sent), however many
    # attempts that takes: a PACS down over a long weekend must still get its results.
    give_up_after_s: float = Field(7 * 24 * 3600.0, gt=0)
    max_attempts: int | None = Field(
        None, ge=1, description="optional cap on attempts as well (none by default)"
    )
    interval_s: float = Field(1.0, gt=0)
    calling_ae_title: str | None = None  # defaults to node.ae_title


class ScreeningConfig(_Strict):
    modalities: list[str] = ["CR", "DX", "RG", "DR", "OT"]
    reject_image_types: list[str] = ["LOCALIZER", "DERIVED\\SECONDARY"]
    min_size_px: int = Field(256, ge=16)
    max_size_px: int = Field(8192, ge=256)
    min_bits: int = Field(8, ge=1)
    max_bits: int = Field(16, le=32)
    # What decoding one image may allocate, estimated from the header before any decoder runs
    # (Rows x Columns x SamplesPerPixel x BitsAllocated x frames decoded: the first frame
    # only); a larger image is excluded with the estimate as its reason, the rest of its
    # series is analysed. Working copies (float32, colour) cost several times this.
    max_decoded_mb: float = Field(
        256.0, gt=0, description="largest decoded frame one image may need, MiB (header estimate, before decoding)"
    )


ProviderName = Literal["cpu", "cuda", "tensorrt"]
# Which extra views of each image the triage model reads at inference, averaged with the image's
# own outputs (node.infer.triage): none; the mirror image; or the mirror, the image with a few per
# cent of each border cut off, and that crop's mirror.
TestTimeViews = Literal["none", "flip", "flip_crop"]


class ModelsConfig(_Strict):
    root: Path = Path("models")
    provider: ProviderName = "cpu"
    intra_op_threads: int = Field(0, ge=0, description="0 = onnxruntime default")
    inter_op_threads: int = Field(0, ge=0)
    batch_size: int = Field(8, ge=1)
    # one name, or several: an ensemble whose probabilities are averaged (node.infer.triage).
    # 2.3.0 lives under its own name so that "triage" (its newest version) stays the better
    # single model, 2.2.0, for configs that name it alone
    triage: str | list[str] | None = ["triage/2.2.0", "triage-styles/2.3.0"]
    # pinned like triage: a bare "detector" would take the newest version folder found, so a
    # trial model dropped into models/detector/ would silently become the default
    detector: str | None = "detector/2.1.0"
    morphology: list[str] = ["morphology", "morphology-seed1"]
    # the triage model also reads each image mirrored and cropped, and its outputs are averaged
    # (node.infer.triage.TriageModel); "none" reads the image alone
    triage_test_time: TestTimeViews = "flip_crop"
    min_view_probability: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="below this, the triage's most likely view is not trusted: the image is treated as not a hip radiograph",
    )

    @property
    def triage_names(self) -> list[str]:
        """The configured triage model(s) as a list (empty when triage is off)."""
        if self.triage is None:
            return []
        return [self.triage] if isinstance(self.triage, str) else list(self.triage)


class BatchingConfig(_Strict):
    """Inference batches across series (``node.infer.batcher``): the jobs in flight in one
    process share each model's runs. A batch starts when it holds ``max_batch`` images, when its
    oldest request has waited ``max_wait_ms`` (the latency budget), or at once when every job in
    flight is waiting on a model; live jobs' images go before imported ones. ``instances``: runs
    of one model at once; with one, two jobs' runs of the detector queue behind each other, which
    cost 8-22 % of inference throughput on a 2-core CPU (``benchmarks/bench_infer.py``), with two
    about none. ``workers`` is the default of ``--workers`` for ``hipnode run`` / ``work`` /
    ``import``: with one job in flight per process no batch can span series."""

    enabled: bool = True
    max_batch: int = Field(32, ge=1, le=4096, description="images per model run at most")
    max_wait_ms: float = Field(5.0, ge=0.0, le=10000.0, description="longest a request is held to fill a batch")
    instances: int = Field(2, ge=1, le=16, description="runs of one model at once, each batching what piled up")
    workers: int = Field(2, ge=1, le=256, description="job threads per process when --workers is not given")


class OutputsConfig(_Strict):
    """Which results are composed, and sent to every destination without its own ``outputs``
    list (a destination's list replaces these for it; a kind only it names is composed for it)."""

    sr: bool = True
    sc: bool = True
    gsps: bool = False  # Grayscale Softcopy Presentation State: annotations over the original
    sc_compression: Literal["jpeg2000-lossless", "jpeg-baseline", "none"] = "jpeg2000-lossless"
    root: Path = Path("var/results")
    manufacturer: str = "hipnode"


class MetricsConfig(_Strict):
    """Prometheus ``/metrics`` of each node process (``node.observe``). Loopback by default: the
    labels name calling AEs and destinations. ``hipnode run`` and ``hipnode receive`` listen on
    ``port``, ``hipnode work`` on ``work_port``, so a receiver and a worker fit on one host."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9464
    work_port: int = 9465

    _port = field_validator("port", "work_port")(_check_port)


class WebUser(_Strict):
    """A login of the status page. Only a salted PBKDF2 hash is kept (``hipnode web-password``
    makes one): ``pbkdf2_sha256$<iterations>$<salt, base64>$<hash, base64>``."""

    name: str = Field(min_length=1, max_length=64)
    password_hash: str

    @field_validator("password_hash")
    @classmethod
    def _hash_format(cls, v: str) -> str:
        parts = v.split("$")
        if (
            len(parts) != 4
            or parts[0] != "pbkdf2_sha256"
            or not parts[1].isdigit()
            or int(parts[1]) < 100_000
        ):
            raise ValueError(
                "must be pbkdf2_sha256$<iterations >= 100000>$<salt>$<hash> (hipnode web-password)"
            )
        return v


class WebConfig(_Strict):
    """The status page (``node.web``), served by ``hipnode run`` and ``hipnode receive``.

    Loopback by default and read-only: anyone who can reach it sees state, none can change
    it. With ``users`` it asks for a login first, and only then offers the operator actions
    (re-queue, re-send, re-process, pause / resume), each form carrying a CSRF token."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8480
    users: list[WebUser] = []
    session_hours: float = Field(12.0, gt=0, description="a login lasts this long")
    cookie_secure: bool = False  # true when a TLS proxy fronts the page: the cookie then never goes over http
    recent_studies: int = Field(20, ge=1, le=500)

    _port = field_validator("port")(_check_port)

    @field_validator("users")
    @classmethod
    def _unique_users(cls, v: list[WebUser]) -> list[WebUser]:
        names = [u.name for u in v]
        if len(set(names)) != len(names):
            raise ValueError("user names must be unique")
        return v


class RetentionConfig(_Strict):
    """What ``hipnode retention`` removes (``node.retention``); every rule is off by default
    (``null``: kept for ever). Nothing is removed while a job of its series is queued or
    running, the series is still receiving, or a delivery of its results is pending or retrying
    (a paused destination's included)."""

    instances_days: float | None = Field(None, gt=0, description="received instances older than this")
    superseded_days: float | None = Field(
        None, ge=0, description="superseded instance versions and superseded SRs older than this"
    )
    results_days: float | None = Field(None, gt=0, description="result files (SR, SC, GSPS) older than this")
    min_free_mb: float | None = Field(
        None,
        gt=0,
        description="free-space target under storage.root: the oldest removable instances go until it is met",
    )


class Config(_Strict):
    node: NodeConfig = NodeConfig()
    storage: StorageConfig = StorageConfig()
    database: DatabaseConfig = DatabaseConfig()
    allow_any_calling_ae: bool = True
    calling_aes: list[CallingAE] = []
    series: SeriesConfig = SeriesConfig()
    jobs: JobsConfig = JobsConfig()
    destinations: list[Destination] = []
    routing: list[RouteRule] = []
    dispatch: DispatchConfig = DispatchConfig()
    screening: ScreeningConfig = ScreeningConfig()
    models: ModelsConfig = ModelsConfig()
    batching: BatchingConfig = BatchingConfig()
    outputs: OutputsConfig = OutputsConfig()
    metrics: MetricsConfig = MetricsConfig()
    web: WebConfig = WebConfig()
    retention: RetentionConfig = RetentionConfig()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _references(self) -> Config:
        names = [d.name for d in self.destinations]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"destination names must be unique: {sorted(dupes)}")
        known = set(names)
        for i, rule in enumerate(self.routing):
            for d in rule.destinations:
                if d not in known:
                    raise ValueError(f"routing[{i}].destinations: unknown destination {d!r}")
        for i, ae in enumerate(self.calling_aes):
            for d in ae.destinations or []:
                if d not in known:
                    raise ValueError(f"calling_aes[{i}].destinations: unknown destination {d!r}")
        return self

    def calling_ae(self, ae_title: str) -> CallingAE | None:
        for ae in self.calling_aes:
            if ae.ae_title == ae_title.strip():
                return ae
        return None

    def quiet_period_for(self, ae_title: str | None) -> float:
        ae = self.calling_ae(ae_title) if ae_title else None
        if ae is not None and ae.quiet_period_s is not None:
            return ae.quiet_period_s
        return self.series.quiet_period_s

    def destination(self, name: str) -> Destination:
        for d in self.destinations:
            if d.name == name:
                return d
        raise KeyError(name)


class ConfigError(Exception):
    """Raised with every problem found, each as ``key.path: message``."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


def _reference_errors(data: dict[str, Any]) -> list[str]:
    """Cross-references checked on the raw mapping, so they are reported together with field
    errors (pydantic runs whole-model validators only once every field is valid)."""
    dests = data.get("destinations") or []
    known = {d.get("name") for d in dests if isinstance(d, dict)}
    errors = []
    for section in ("routing", "calling_aes"):
        items = data.get(section) or []
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            names = item.get("destinations") if isinstance(item, dict) else None
            if isinstance(names, list):
                errors += [
                    f"{section}[{i}].destinations: unknown destination {n!r}" for n in names if n not in known
                ]
    return errors


def parse_config(data: dict[str, Any] | None) -> Config:
    data = data or {}
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors: list[str] = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            line = msg if not err["loc"] and ": " in msg else f"{_loc(tuple(err['loc']))}: {msg}"
            if line not in errors:
                errors.append(line)
        for line in _reference_errors(data):
            if line not in errors:
                errors.append(line)
        raise ConfigError(errors) from None


def load_config(path: Path | str | None) -> Config:
    """Load and validate ``path``; ``None`` or a missing default file gives embedded defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"(file): cannot read {p}: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"(file): not valid YAML: {exc}"]) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(["(root): must be a mapping"])
    return parse_config(data)
