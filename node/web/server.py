"""The status page: one server-rendered HTML page an IT admin keeps open.

Why it is built this way:

* **Standard library HTTP** (``http.server.ThreadingHTTPServer``), HTML written here, one
  stylesheet inline, no script: it works on an offline host, in any browser, with nothing to
  install or fetch (no CDN), and a Content-Security-Policy of ``'self'`` forbids the page from
  loading anything else even by mistake.
* **Read-only unless logged in.** Without ``web.users`` the page shows state and offers no
  action (POSTs are refused). With users, every request needs a login, and only then the page
  offers the operator actions of :mod:`node.actions` (the CLI's own functions, so both doors
  refuse the same things), as POST forms carrying a CSRF token derived from the session.
* **Loopback by default** (``web.host``); a page bound elsewhere without users is allowed (a
  reverse proxy may authenticate) but logged as a warning at start.
* **No patient data**: study date, a digest of the accession number, UIDs, findings. The page
  never reads the patient table; the SC thumbnails are the node's own overlays (which carry no
  burned-in demographics).
* A port already in use is logged and the node runs on (as ``/metrics`` does): the page is a
  window, not a part of the data path.
"""

from __future__ import annotations

import hashlib
import html
import io
import ipaddress
import logging
import shutil
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import desc, func, select

from node.config import Config, ConfigError, load_config
from node.registry import Database, Delivery, Event, Job, Result, Series, Study
from node.web.auth import COOKIE, Session, Sessions

log = logging.getLogger(__name__)

_CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_MAX_FORM_BYTES = 16 * 1024
_THUMB_PX = 192
_ACTION_EVENTS = ("requeued", "resend", "reprocess", "paused", "resumed", "purged")


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(value: datetime | None) -> str:
    return "—" if value is None else f"{value:%Y-%m-%d %H:%M:%S}Z"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:10] if text else "—"


def _short_uid(uid: str) -> str:
    return f'<span class="uid" title="{esc(uid)}">…{esc(uid[-16:])}</span>'


# --------------------------------------------------------------------------- page data


@dataclass(frozen=True)
class Viewer:
    """Who is looking: ``session`` is ``None`` on a read-only page."""

    session: Session | None
    csrf: str = ""

    @property
    def can_act(self) -> bool:
        return self.session is not None


def config_problems(path: Path | None) -> list[str]:
    """What ``hipnode check-config`` prints for the file on disk now (an edit since the node
    started shows up here before a restart would fail on it)."""
    if path is None:
        return []
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return list(exc.errors)
    return cfg.node.tls.file_problems("node") + [
        line for i, d in enumerate(cfg.destinations) for line in d.tls.file_problems(f"destinations[{i}]")
    ]


def _findings_html(payload: dict[str, Any] | None) -> str:
    """The SR's measured values (``Result.payload``) as a short list per image and hip."""
    if not payload:
        return '<span class="muted">no SR</span>'
    items = []
    for image in payload.get("images", []):
        if image.get("screened_out"):
            items.append(f'<li class="muted">image screened out: {esc(image["screened_out"])}</li>')
            continue
        hips = []
        for h in image.get("hips", []):
            parts = [f"<b>{esc(h.get('side'))}</b>"]
            if h.get("implant"):
                parts.append("implant")
                if h.get("inclination_deg") is not None:
                    parts.append(f"inclination {h['inclination_deg']:.1f}°")
                if h.get("anteversion_deg") is not None:
                    parts.append(f"anteversion {h['anteversion_deg']:.1f}°")
                if h.get("refusal"):
                    parts.append(f"cup not measured: {esc(h['refusal'])}")
                elif h.get("inclination_deg") is None and h.get("anteversion_deg") is None:
                    parts.append("cup not measured")
            else:
                parts.append("no implant")
            if h.get("lce_deg") is not None:
                parts.append(f"LCE {h['lce_deg']:.1f}°")
            flags = [name for name, p in (h.get("morphology") or {}).items() if p >= 0.5]
            if flags:
                parts.append("flags: " + ", ".join(esc(f) for f in flags))
            hips.append(" ".join(parts))
        view = esc((image.get("view") or "?").replace("_", " "))
        low = ' <span class="warn">low confidence</span>' if image.get("low_confidence") else ""
        items.append(f"<li>{view}{low}: " + ("; ".join(hips) or "no hip found") + "</li>")
    return '<ul class="findings">' + "".join(items) + "</ul>"


class StatusPage:
    """Renders the page from the registry and the configuration."""

    def __init__(self, cfg: Config, db: Database, config_path: Path | None) -> None:
        self.cfg = cfg
        self.db = db
        self.config_path = config_path

    def render(self, viewer: Viewer, message: str = "") -> str:
        from node.actions import paused_destinations
        from node.status import collect_status

        status = collect_status(self.cfg, self.db)
        paused = paused_destinations(self.db)
        who = (
            f'logged in as <b>{esc(viewer.session.user)}</b> {self._form("/logout", "Log out", viewer)}'
            if viewer.session is not None
            else "read-only"
        )
        body = [
            f'<header><h1>hipnode <small>{esc(status["node"])}</small></h1><div class="who">{who}</div></header>',
            f'<p class="msg" role="status">{esc(message)}</p>' if message else "",
            self._health(status),
            self._queue(viewer),
            self._studies(viewer),
            self._destinations(status, paused, viewer),
            self._configuration(),
            self._actions(),
        ]
        return _document("hipnode status", "".join(body))

    # ---------------------------------------------------------------- sections

    def _health(self, status: dict[str, Any]) -> str:
        free_mb = None
        try:
            probe = Path(self.cfg.storage.root)
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            free_mb = shutil.disk_usage(probe).free / (1024 * 1024)
        except OSError:
            pass
        low = free_mb is not None and free_mb < self.cfg.storage.min_free_mb
        disk = "unknown" if free_mb is None else f"{free_mb:,.0f} MB free (refuses below {self.cfg.storage.min_free_mb:,.0f} MB)"
        rows = [
            ("registry", '<span class="ok">up</span>'),
            ("storage", f'<span class="{"bad" if low else "ok"}">{esc(disk)}</span>'),
            ("last image", esc(_when(status["last_instance_received_at"]))),
            ("queue", f"{status['queue_depth']} ready, {status['jobs_waiting_retry']} waiting to retry"),
        ]
        for key in ("instances", "series", "jobs", "deliveries"):
            rows.append((key, esc(", ".join(f"{k} {v}" for k, v in sorted(status[key].items())) or "none")))
        rows.append(("results", esc(status["results"])))
        return _section("Health", "health", _table(["", ""], [[f"<th>{k}</th>", v] for k, v in rows], raw_cells=True))

    def _queue(self, viewer: Viewer) -> str:
        with self.db.sessionmaker() as s:
            jobs = s.execute(
                select(Job.id, Job.series_pk, Job.generation, Job.state, Job.attempts, Job.max_attempts,
                       Job.reason, Job.created_at)
                .where(Job.state != "done")
                .order_by(desc(Job.id))
                .limit(30)
            ).all()  # fmt: skip
        rows = []
        for j in jobs:
            action = ""
            if viewer.can_act and j.state in ("failed", "skipped"):
                action = self._form("/action/requeue", "Re-queue", viewer, job=j.id)
            rows.append([
                f'<span id="job-{j.id}">{j.id}</span>', esc(j.series_pk), esc(j.generation),
                f'<span class="state {esc(j.state)}">{esc(j.state)}</span>', f"{j.attempts}/{j.max_attempts}",
                esc((j.reason or "")[:160]), esc(_when(j.created_at)), action,
            ])  # fmt: skip
        table = _table(["job", "series", "gen.", "state", "attempts", "reason", "queued", ""], rows, raw_cells=True)
        return _section("Queue (jobs not done)", "queue", table if rows else "<p>nothing queued, running or failed</p>")

    def _studies(self, viewer: Viewer) -> str:
        limit = self.cfg.web.recent_studies
        with self.db.sessionmaker() as s:
            series = s.execute(
                select(Series.id, Series.series_uid, Series.modality, Series.calling_ae, Series.state,
                       Series.generation, Series.last_received_at, Study.study_uid, Study.study_date,
                       Study.accession_number)
                .join(Study, Study.id == Series.study_pk)
                .order_by(desc(Series.last_received_at), desc(Series.id))
                .limit(limit)
            ).all()  # fmt: skip
            pks = [r.id for r in series]
            results = s.execute(
                select(Result.id, Result.series_pk, Result.kind, Result.payload, Result.purged_at, Job.generation)
                .join(Job, Job.id == Result.job_pk)
                .where(Result.series_pk.in_(pks))
                .order_by(Result.id)
            ).all()
            latest_job = dict(
                s.execute(
                    select(Job.series_pk, Job.state)
                    .where(Job.series_pk.in_(pks))
                    .order_by(Job.series_pk, Job.generation)
                ).all()
            )
            deliveries = s.execute(
                select(Result.series_pk, Delivery.destination, Delivery.state, func.count())
                .join(Result, Result.id == Delivery.result_pk)
                .where(Result.series_pk.in_(pks))
                .group_by(Result.series_pk, Delivery.destination, Delivery.state)
            ).all()
        sr: dict[int, Any] = {}
        thumbs: dict[int, list[tuple[int, bool]]] = {}
        for r in results:
            if r.kind == "sr":
                sr[r.series_pk] = r.payload  # the newest SR of the series (ordered by id)
            elif r.kind == "sc":
                thumbs.setdefault(r.series_pk, []).append((r.id, r.purged_at is not None))
        sent: dict[int, list[str]] = {}
        for series_pk, dest, state, n in deliveries:
            sent.setdefault(series_pk, []).append(f"{esc(dest)}: {n} {esc(state)}")
        cards = []
        for r in series:
            images = "".join(
                '<span class="muted">SC removed by retention</span>' if purged else
                f'<img class="thumb" src="/thumb/{pk}.png" alt="Secondary Capture {pk}" width="{_THUMB_PX}">'
                for pk, purged in thumbs.get(r.id, [])[-4:]
            )  # fmt: skip
            action = ""
            if viewer.can_act and r.state == "complete":
                action = self._form("/action/reprocess", "Re-process", viewer, series=r.series_uid)
            cards.append(
                f'<article class="study" data-series="{esc(r.series_uid)}">'
                f'<div class="thumbs">{images}</div><div class="meta">'
                f"<h3>study {esc(_study_date(r.study_date))} · accession #{esc(_digest(r.accession_number))}</h3>"
                f"<p>study {_short_uid(r.study_uid)} · series {_short_uid(r.series_uid)} · "
                f"{esc(r.modality or '?')} from {esc(r.calling_ae or '?')} · series {esc(r.state)}, generation "
                f"{esc(r.generation)}, job {esc(latest_job.get(r.id, '—'))} · last image {esc(_when(r.last_received_at))}</p>"
                f"{_findings_html(sr.get(r.id))}"
                f'<p class="deliveries">{"; ".join(sent.get(r.id, [])) or "no deliveries"}</p>{action}</div></article>'
            )
        return _section("Recent studies", "studies", "".join(cards) or "<p>no images received yet</p>")

    def _destinations(self, status: dict[str, Any], paused: dict[str, Any], viewer: Viewer) -> str:
        rows = []
        for d in self.cfg.destinations:
            h = status["destinations"].get(d.name, {})
            p = paused.get(d.name)
            if p is not None:
                state = (f'<span class="state paused">paused</span> by {esc(p.changed_by)} since {esc(_when(p.changed_at))}'
                         + (f" ({esc(p.reason)})" if p.reason else ""))  # fmt: skip
                action = self._form("/action/resume", "Resume", viewer, destination=d.name)
            else:
                state = '<span class="state active">active</span>'
                action = self._form("/action/pause", "Pause", viewer, destination=d.name)
            counts = ", ".join(f"{k} {h.get(k, 0)}" for k in ("pending", "retrying", "sent", "visible", "failed"))
            error = ""
            if h.get("last_error"):
                error = f'{esc(h["last_error"])[:200]} <span class="muted">({esc(_when(h.get("last_error_at")))})</span>'
            resend = ""
            if viewer.can_act and h.get("failed"):
                resend = self._form("/action/resend-failed", "Re-send failed", viewer, destination=d.name)
            rows.append([
                f'<span id="dest-{esc(d.name)}">{esc(d.name)}</span>', esc(f"{d.ae_title}@{d.host}:{d.port}"), state,
                esc(counts), esc(_when(h.get("last_success_at"))), error,
                (action + resend) if viewer.can_act else "",
            ])  # fmt: skip
        head = ["name", "address", "state", "deliveries", "last success", "last error", ""]
        return _section("Destinations", "destinations", _table(head, rows, raw_cells=True) if rows else "<p>none configured</p>")

    def _configuration(self) -> str:
        cfg = self.cfg
        aes = [[esc(a.ae_title), esc(a.host or "any"), esc(a.quiet_period_s or cfg.series.quiet_period_s),
                esc(a.priority), esc("routing rules" if a.destinations is None else ", ".join(a.destinations) or "none")]
               for a in cfg.calling_aes]  # fmt: skip
        rules = []
        for i, rule in enumerate(cfg.routing):
            match = ", ".join(f"{k} = {v}" for k, v in rule.match.model_dump().items() if v is not None) or "anything"
            rules.append([esc(i), esc(match), esc(", ".join(rule.destinations)), esc("yes" if rule.stop else "no")])
        problems = config_problems(self.config_path)
        where = esc(self.config_path) if self.config_path else "embedded defaults"
        check = (
            f'<p class="ok">check-config: {where}: OK</p>'
            if not problems
            else f'<p class="bad">check-config: {len(problems)} error(s) in {where}</p><ul class="errors">'
            + "".join(f"<li>{esc(p)}</li>" for p in problems)
            + "</ul>"
        )
        policy = "any calling AE" if cfg.allow_any_calling_ae else "only the calling AEs listed"
        return _section(
            "Configuration",
            "configuration",
            f"<p>AE <b>{esc(cfg.node.ae_title)}</b> on {esc(cfg.node.host)}:{esc(cfg.node.port)}; accepts {policy}</p>"
            + check
            + "<h3>Calling AE titles</h3>"
            + (_table(["AE title", "host", "quiet period s", "priority", "destinations"], aes) if aes else "<p>none listed</p>")
            + "<h3>Routing rules</h3>"
            + (_table(["#", "match", "destinations", "stop"], rules) if rules else "<p>no rules: results go nowhere</p>"),
        )

    def _actions(self) -> str:
        with self.db.sessionmaker() as s:
            events = s.execute(
                select(Event.at, Event.entity, Event.entity_pk, Event.kind, Event.detail)
                .where(Event.kind.in_(_ACTION_EVENTS))
                .order_by(desc(Event.id))
                .limit(15)
            ).all()
        rows = []
        for e in events:
            detail = e.detail or {}
            what = f"{e.entity} {e.entity_pk}" if e.entity_pk is not None else str(detail.get("destination", e.entity))
            rows.append([_when(e.at), e.kind, what, detail.get("actor", "")])
        return _section("Recent operator actions", "actions", _table(["at", "action", "on", "by"], rows) if rows else "<p>none</p>")

    @staticmethod
    def _form(action: str, label: str, viewer: Viewer, **fields: object) -> str:
        if not viewer.can_act:
            return ""
        hidden = "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in fields.items())
        return (
            f'<form method="post" action="{esc(action)}" class="inline">{hidden}'
            f'<input type="hidden" name="csrf" value="{esc(viewer.csrf)}"><button>{esc(label)}</button></form>'
        )


def _study_date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else (value or "date unknown")


def _section(title: str, anchor: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{content}</section>'


def _table(head: list[str], rows: list[list[Any]], *, raw_cells: bool = False) -> str:
    cell: Callable[[Any], str] = (lambda v: str(v)) if raw_cells else esc
    out = ["<table>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(v if str(v).startswith("<th>") else f"<td>{cell(v)}</td>" for v in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 2em;color:#1b1f24;background:#f6f7f9}
header{display:flex;justify-content:space-between;align-items:center;border-bottom:2px solid #2b5797}
h1{font-size:1.4em;color:#2b5797}h1 small{font-weight:normal;color:#555;font-size:.7em}
h2{font-size:1.15em;margin:1.2em 0 .4em;color:#2b5797}h3{font-size:1em;margin:.3em 0}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:.4em 1em .8em;margin-top:1em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #eceff3;vertical-align:top}
.ok{color:#1e7b34}.bad,.warn{color:#b3261e}.muted{color:#777}.uid{font-family:monospace;font-size:.9em}
.state{padding:0 .4em;border-radius:3px;background:#e8eaed}.state.failed{background:#f9d6d5}.state.paused{background:#ffe8b3}
.state.active{background:#d4f0dc}.state.queued,.state.running{background:#dbe7fb}
.study{display:flex;gap:1em;border-top:1px solid #eceff3;padding:.6em 0}.thumbs{display:flex;gap:.4em;min-width:200px}
.thumb{border:1px solid #ccd;background:#000;height:auto}.findings{margin:.3em 0;padding-left:1.2em}
form.inline{display:inline;margin-right:.3em}button{cursor:pointer}.msg{background:#e6f4ea;padding:.5em 1em;border-radius:4px}
.login{max-width:22em;margin:4em auto}.login input{display:block;width:100%;margin:.3em 0 .8em}
"""


def _document(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>'
        f"<body>{body}</body></html>"
    )


def login_page(message: str = "") -> str:
    msg = f'<p class="bad" role="alert">{esc(message)}</p>' if message else ""
    return _document(
        "hipnode login",
        f'<section class="login"><h2>hipnode status — log in</h2>{msg}<form method="post" action="/login">'
        '<label>user <input name="name" autocomplete="username" required></label>'
        '<label>password <input name="password" type="password" autocomplete="current-password" required></label>'
        "<button>Log in</button></form></section>",
    )


# --------------------------------------------------------------------------- thumbnails


class Thumbnails:
    """PNG thumbnails of SC results, made on first request and kept (a few hundred, LRU)."""

    def __init__(self, db: Database, results_root: Path, size: int = 200) -> None:
        self.db = db
        self.results_root = results_root
        self.size = size
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def png(self, result_pk: int) -> bytes | None:
        with self._lock:
            if result_pk in self._cache:
                self._cache.move_to_end(result_pk)
                return self._cache[result_pk]
        with self.db.sessionmaker() as s:
            row = s.execute(
                select(Result.path, Result.kind, Result.purged_at).where(Result.id == result_pk)
            ).first()
        if row is None or row.kind != "sc" or row.purged_at is not None:
            return None
        data = self._render(self.results_root / row.path)
        if data is not None:
            with self._lock:
                self._cache[result_pk] = data
                while len(self._cache) > 300:
                    self._cache.popitem(last=False)
        return data

    def _render(self, path: Path) -> bytes | None:
        import numpy as np
        import pydicom
        from PIL import Image

        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as exc:  # a broken file must not break the page
            log.warning("thumbnail of %s: %s", path.name[-24:], type(exc).__name__)
            return None
        if pixels.ndim == 2:
            lo, hi = float(pixels.min()), float(pixels.max())
            pixels = ((pixels - lo) / max(hi - lo, 1.0) * 255.0).astype(np.uint8)
            if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
                pixels = 255 - pixels
        image = Image.fromarray(np.ascontiguousarray(pixels).astype(np.uint8))
        image.thumbnail((self.size * 2, self.size * 2))
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=True)
        return out.getvalue()


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server: _WebServer
    server_version = "hipnode"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("web %s %s", self.address_string(), format % args)

    # ---------------------------------------------------------------- plumbing

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _html(self, text: str, status: HTTPStatus = HTTPStatus.OK, headers: dict[str, str] | None = None) -> None:
        self._send(status, text.encode("utf-8"), "text/html; charset=utf-8", headers)

    def _redirect(self, location: str, headers: dict[str, str] | None = None) -> None:
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": location, **(headers or {})})

    def _cookie(self) -> str | None:
        raw = self.headers.get("Cookie")
        if not raw:
            return None
        try:
            jar: SimpleCookie = SimpleCookie(raw)
        except CookieError:
            return None
        morsel = jar.get(COOKIE)
        return morsel.value if morsel is not None else None

    def _session(self) -> Session | None:
        sessions = self.server.sessions
        return sessions.check(self._cookie()) if sessions is not None else None

    def _form_data(self) -> dict[str, str] | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return None
        if not 0 <= length <= _MAX_FORM_BYTES:
            return None
        raw = self.rfile.read(length).decode("utf-8", "replace")
        return {k: v[0] for k, v in urllib.parse.parse_qs(raw, max_num_fields=20).items()}

    def _set_cookie(self, value: str, max_age: int) -> dict[str, str]:
        secure = "; Secure" if self.server.cfg.web.cookie_secure else ""
        return {"Set-Cookie": f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"}

    # ---------------------------------------------------------------- routes

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        login_on = self.server.sessions is not None
        session = self._session()
        if url.path == "/login":
            if login_on:
                self._html(login_page())
            else:
                self._redirect("/")
            return
        if login_on and session is None:
            self._redirect("/login")
            return
        try:
            if url.path == "/":
                query = urllib.parse.parse_qs(url.query)
                viewer = Viewer(session, self.server.sessions.csrf_token(session) if session and self.server.sessions else "")
                self._html(self.server.page.render(viewer, (query.get("msg") or [""])[0][:300]))
            elif url.path.startswith("/thumb/") and url.path.endswith(".png"):
                pk = url.path[len("/thumb/"):-len(".png")]
                data = self.server.thumbnails.png(int(pk)) if pk.isdigit() else None
                if data is None:
                    self._send(HTTPStatus.NOT_FOUND, b"no such thumbnail", "text/plain")
                else:
                    self._send(HTTPStatus.OK, data, "image/png", {"Cache-Control": "private, max-age=3600"})
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
        except Exception:
            log.exception("status page failed")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"the status page failed; see the node's log", "text/plain")

    def do_POST(self) -> None:
        sessions = self.server.sessions
        if sessions is None:
            self._send(HTTPStatus.FORBIDDEN, b"read-only: the page takes no actions without web.users", "text/plain")
            return
        url = urllib.parse.urlsplit(self.path)
        form = self._form_data()
        if form is None:
            self._send(HTTPStatus.BAD_REQUEST, b"bad form", "text/plain")
            return
        if url.path == "/login":
            cookie = sessions.login(form.get("name", ""), form.get("password", ""))
            if cookie is None:
                log.warning("status page: failed login from %s", self.client_address[0])
                self._html(login_page("wrong user or password"), HTTPStatus.UNAUTHORIZED)
                return
            log.info("status page: %s logged in from %s", form.get("name", "")[:64], self.client_address[0])
            self._redirect("/", self._set_cookie(cookie, int(sessions.lifetime_s)))
            return
        session = self._session()
        if session is None:
            self._redirect("/login")
            return
        if not sessions.check_csrf(session, form.get("csrf")):
            self._send(HTTPStatus.FORBIDDEN, b"stale or missing form token: reload the page", "text/plain")
            return
        if url.path == "/logout":
            self._redirect("/login", self._set_cookie("", 0))
            return
        message = self.server.act(url.path, form, f"web:{session.user}")
        self._redirect("/?" + urllib.parse.urlencode({"msg": message}))


class _WebServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cfg: Config, db: Database, config_path: Path | None) -> None:
        self.cfg = cfg
        self.db = db
        self.page = StatusPage(cfg, db, config_path)
        self.thumbnails = Thumbnails(db, Path(cfg.outputs.root), _THUMB_PX)
        self.sessions = Sessions(cfg.web.users, cfg.web.session_hours * 3600.0) if cfg.web.users else None
        super().__init__((cfg.web.host, cfg.web.port), _Handler)

    def act(self, path: str, form: dict[str, str], actor: str) -> str:
        """Run the operator action a form asked for; returns the sentence to show."""
        from node import actions

        try:
            if path == "/action/requeue":
                return actions.requeue_job(self.db, int(form["job"]), actor)
            if path == "/action/reprocess":
                return actions.reprocess_series(self.db, self.cfg, form["series"], actor)
            if path in ("/action/pause", "/action/resume"):
                return actions.set_paused(self.db, self.cfg, form["destination"], path.endswith("pause"), actor)
            if path == "/action/resend":
                return actions.resend_delivery(self.db, int(form["delivery"]), actor)
            if path == "/action/resend-failed":
                out = actions.resend_failed(self.db, actor, destination=form["destination"])
                return f"{len(out.done)} deliveries to {form['destination']} queued again" + (
                    f", {len(out.refused)} not" if out.refused else ""
                )
        except actions.ActionRefused as exc:
            return f"refused: {exc}"
        except (KeyError, ValueError):
            return "refused: the form was incomplete"
        return "refused: no such action"


@dataclass
class WebHandle:
    server: _WebServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(cfg: Config, db: Database, config_path: Path | None = None) -> WebHandle | None:
    """Start the page on ``web.host:web.port`` in a daemon thread; ``None`` when switched off
    or the port is taken (logged: the node runs on without its page)."""
    if not cfg.web.enabled:
        return None
    if not _loopback(cfg.web.host) and not cfg.web.users:
        log.warning(
            "status page on %s without web.users: anyone who reaches it sees the node's state (read-only)",
            cfg.web.host,
        )
    try:
        server = _WebServer(cfg, db, config_path)
    except OSError as exc:
        log.warning("status page not started on %s:%d: %s", cfg.web.host, cfg.web.port, exc.strerror)
        return None
    thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    thread.start()
    log.info(
        "status page on http://%s:%d/ (%s)",
        cfg.web.host, server.server_address[1], "login required" if cfg.web.users else "read-only",
    )  # fmt: skip
    return WebHandle(server, thread)


def stop(handle: WebHandle | None) -> None:
    if handle is not None:
        handle.server.shutdown()
        handle.server.server_close()
        handle.thread.join(timeout=5)
