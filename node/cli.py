"""``hipnode`` command line: one entry point for every process and tool.

Processes: ``receive`` (SCP only), ``work`` (job worker + dispatcher), ``run`` (both, for a
single-machine install). Tools: ``check-config``, ``status``, ``health``, ``audit``, ``echo``,
``send``, ``import``, operator actions (``requeue``, ``resend``, ``reprocess``, ``pause``,
``resume``), ``retention``, ``web-password``, ``phantom``, ``train``, ``evaluate``. Stage modules are imported lazily so that ``hipnode
check-config`` works even where the heavy optional dependencies are absent.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from node.config import Config, ConfigError, load_config
from node.domain import ModelUnavailable

log = logging.getLogger("node")

DEFAULT_CONFIG = Path("config.yaml")


def _setup_logging(level: str) -> None:
    """The node's log format, with third-party lines made safe (``node.logsafe``)."""
    from node import logsafe

    logsafe.install(level)


def _load(args: argparse.Namespace) -> Config:
    path: Path | None = args.config
    if path is None:
        path = DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"config error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def _database(cfg: Config) -> Any:
    from node.registry import Database

    db = Database(cfg.database.url, echo=cfg.database.echo)
    db.migrate()
    return db


def _stop_event() -> threading.Event:
    """An event set by SIGTERM/SIGINT, so every loop can stop at a safe point."""
    stop = threading.Event()

    def _handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s received: stopping", signal.Signals(signum).name)
        stop.set()
        from node import wake

        wake.notify(wake.JOBS)
        wake.notify(wake.DELIVERIES)

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


# --------------------------------------------------------------------------- processes


def cmd_check_config(args: argparse.Namespace) -> int:
    path: Path = args.config or DEFAULT_CONFIG
    try:
        cfg = load_config(path if path.exists() or args.config else None)
    except ConfigError as exc:
        for line in exc.errors:
            print(line)
        print(f"{len(exc.errors)} error(s) in {path}")
        return 1
    problems = cfg.node.tls.file_problems("node") + [
        line for i, d in enumerate(cfg.destinations) for line in d.tls.file_problems(f"destinations[{i}]")
    ]
    if problems:
        for line in problems:
            print(line)
        print(f"{len(problems)} error(s) in {path}")
        return 1
    print(f"{path if path.exists() else '(embedded defaults)'}: OK")
    print(f"  AE {cfg.node.ae_title} on {cfg.node.host}:{cfg.node.port}, database {cfg.database.url.split('@')[-1]}")
    print(f"  {len(cfg.calling_aes)} calling AE(s), {len(cfg.destinations)} destination(s), {len(cfg.routing)} rule(s)")
    return 0


def _start_receiver(cfg: Config, db: Any) -> Any:
    from node.receive import serve

    return serve(cfg, db, block=False)


def _stop_receiver(server: Any) -> None:
    from node.receive import shutdown

    shutdown(server)


def _start_scheduler(cfg: Config, db: Any) -> Any:
    from node.series import start_series_scheduler

    return start_series_scheduler(db, cfg)


def _build_workers(cfg: Config, db: Any, workers: int) -> list[Any]:
    """Load the models once (shared by all worker threads; onnxruntime sessions are
    thread-safe) — before anything listens, so a missing model fails the start loudly."""
    from node import observe
    from node.pipeline import Models, Pipeline
    from node.worker import Worker

    models = Models(cfg)
    observe.models_loaded(models)

    def factory(c: Config, d: Any) -> Pipeline:
        pipeline: Pipeline = observe.instrument_pipeline(Pipeline(c, d, models), d)
        return pipeline

    host = os.uname().nodename
    return [Worker(cfg, db, pipeline_factory=factory, worker_id=f"{host}:{os.getpid()}:w{i}") for i in range(workers)]


def _start_threads(cfg: Config, db: Any, stop: threading.Event, workers: list[Any]) -> list[threading.Thread]:
    from node.dispatch import Dispatcher
    from node.worker import WORKER_STACK_BYTES

    # worker threads compose SRs (deep highdicom trees); they get the stack the import's workers
    # get (a thread segfaulted there on the default one)
    previous = threading.stack_size(WORKER_STACK_BYTES)
    try:
        threads = [
            threading.Thread(target=w.run_forever, args=(stop,), name=f"worker-{i}", daemon=True)
            for i, w in enumerate(workers)
        ]
    finally:
        threading.stack_size(previous)
    d = Dispatcher(cfg, db)
    threads.append(threading.Thread(target=d.run_forever, args=(stop,), name="dispatcher", daemon=True))
    for t in threads:
        t.start()
    return threads


def _start_web(args: argparse.Namespace, cfg: Config, db: Any) -> Any:
    """The status page (``node.web``) of ``hipnode run`` / ``receive``; it re-reads the config
    file it was started with to show what ``check-config`` would say about it now."""
    from node.web.server import serve

    path: Path | None = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    return serve(cfg, db, path)


def _serve(args: argparse.Namespace, *, receiver: bool, workers: int | None) -> int:
    """Run the receiver and/or workers + dispatcher until SIGTERM/SIGINT.

    Series completion and the stale-job sweeper run in every process: both are atomic, so a
    receiver and several workers running them at once still queue one job per generation.
    Each process serves its own ``/metrics`` (``node.observe``): ``metrics.port`` when it
    receives, ``metrics.work_port`` for ``hipnode work``, or ``--metrics-port``. A receiving
    process also serves the status page (``web.port``, ``node.web``). ``workers`` None:
    ``batching.workers`` job threads (more than one, so that inference batches span series).
    """
    from node import observe

    cfg = _load(args)
    _setup_logging(cfg.log_level)
    if workers is None:
        workers = cfg.batching.workers
    if workers and not receiver:  # hipnode work: before the models load (issue 13, memory)
        from node.worker import apply_address_space_limit

        apply_address_space_limit(cfg)
    db = _database(cfg)
    observe.watch_node(cfg, db)
    built = _build_workers(cfg, db, workers) if workers else []
    stop = _stop_event()
    port = getattr(args, "metrics_port", None) or (cfg.metrics.port if receiver else cfg.metrics.work_port)
    metrics = observe.serve(cfg, port=port)
    web = _start_web(args, cfg, db) if receiver else None
    server = _start_receiver(cfg, db) if receiver else None
    if server is not None:
        observe.watch_receiver(server)
    scheduler = _start_scheduler(cfg, db)
    threads = _start_threads(cfg, db, stop, built) if built else []
    parts = ([f"receiver {cfg.node.ae_title} on {cfg.node.host}:{cfg.node.port}"] if receiver else []) + (
        [f"{workers} worker(s) and a dispatcher"] if workers else []
    )
    log.info("hipnode running: %s", ", ".join(parts))
    stop.wait()
    if server is not None:
        _stop_receiver(server)
    scheduler.shutdown(wait=False)
    for t in threads:
        t.join(timeout=cfg.jobs.lease_s)
    observe.stop(metrics)
    if web is not None:
        from node.web.server import stop as stop_web

        stop_web(web)
    db.dispose()
    return 0


def cmd_receive(args: argparse.Namespace) -> int:
    return _serve(args, receiver=True, workers=0)


def cmd_work(args: argparse.Namespace) -> int:
    return _serve(args, receiver=False, workers=args.workers)


def cmd_run(args: argparse.Namespace) -> int:
    return _serve(args, receiver=True, workers=args.workers)


# --------------------------------------------------------------------------- tools


def cmd_status(args: argparse.Namespace) -> int:
    from node.status import collect_status, format_status

    cfg = _load(args)
    db = _database(cfg)
    status = collect_status(cfg, db)
    print(json.dumps(status, indent=2, default=str) if args.json else format_status(status))
    return 0


def _time_window(args: argparse.Namespace, command: str) -> tuple[Any, Any] | None:
    """``--since`` / ``--until`` as the audit parser reads them (``7d``, ISO dates); None, after
    saying why on stderr, when either cannot be read."""
    from node.registry.audit import parse_when

    try:
        return parse_when(args.since), (parse_when(args.until) if args.until else None)
    except ValueError as exc:
        print(f"hipnode {command}: {exc}", file=sys.stderr)
        return None


def cmd_audit(args: argparse.Namespace) -> int:
    """Who sent what and what was sent where (``node.registry.audit``), as CSV or JSON."""
    from node.registry.audit import audit_rows, write_csv, write_json

    cfg = _load(args)
    window = _time_window(args, "audit")
    if window is None:
        return 2
    since, until = window
    rows = audit_rows(_database(cfg), since, until)
    out = args.out.open("w", encoding="utf-8", newline="") if args.out else sys.stdout
    try:
        (write_csv if args.format == "csv" else write_json)(rows, out)
    finally:
        if args.out:
            out.close()
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Liveness of a running ``receive`` / ``work`` / ``run`` process on this host, for container
    healthchecks: its ``/metrics`` answers and its registry query succeeded (``hipnode_registry_up
    1``), and a receiver's DICOM port accepts a connection (closed at once: logged at DEBUG only,
    unlike a C-ECHO association, so a check every few seconds adds nothing to the log)."""
    import socket
    import urllib.request

    cfg = _load(args)
    receiver = args.role in ("receive", "run")

    def local(host: str) -> str:
        return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host

    problems = []
    if not cfg.metrics.enabled:
        problems.append("metrics.enabled is false: nothing to ask the process")
    else:
        port = cfg.metrics.port if receiver else cfg.metrics.work_port
        url = f"http://{local(cfg.metrics.host)}:{port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as rsp:
                body = rsp.read().decode("utf-8", "replace")
            if "\nhipnode_registry_up 1.0\n" not in f"\n{body}":
                problems.append(f"{url}: the registry did not answer")
        except OSError as exc:
            problems.append(f"{url}: {exc}")
    if receiver:
        try:
            socket.create_connection((local(cfg.node.host), cfg.node.port), timeout=args.timeout).close()
        except OSError as exc:
            problems.append(f"DICOM port {cfg.node.port}: {exc}")
    for line in problems:
        print(f"unhealthy: {line}", file=sys.stderr)
    return 1 if problems else 0


def _actor() -> str:
    """Who an action is recorded as: the login running the command (no patient data, and the
    audit trail can tell a person from the page's logins, ``web:<user>``)."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _act(args: argparse.Namespace, do: Callable[[Config, Any, str], Any]) -> int:
    """Run an operator action (``node.actions``): print what it did; exit 1 when it refused all."""
    from node.actions import ActionOutcome, ActionRefused

    cfg = _load(args)
    db = _database(cfg)
    try:
        outcome = do(cfg, db, _actor())
    except ActionRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    if isinstance(outcome, ActionOutcome):
        for line in outcome.lines():
            print(line)
        if not outcome.done and not outcome.refused:
            print("nothing to do")
        return 1 if outcome.refused and not outcome.done else 0
    print(outcome)
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    from node import actions

    if args.failed:
        return _act(args, lambda cfg, db, who: actions.requeue_failed(db, who))
    return _act(args, lambda cfg, db, who: actions.requeue_job(db, args.job, who))


def cmd_resend(args: argparse.Namespace) -> int:
    from node import actions

    if args.failed:
        return _act(args, lambda cfg, db, who: actions.resend_failed(db, who, destination=args.destination))
    return _act(args, lambda cfg, db, who: actions.resend_delivery(db, args.delivery, who))


def cmd_reprocess(args: argparse.Namespace) -> int:
    from node import actions

    if args.series:
        return _act(args, lambda cfg, db, who: actions.reprocess_series(db, cfg, args.series, who))
    window = _time_window(args, "reprocess")
    if window is None:
        return 2
    since, until = window
    return _act(args, lambda cfg, db, who: actions.reprocess_range(db, cfg, since, until, who))


def cmd_pause(args: argparse.Namespace) -> int:
    from node import actions

    paused = args.command == "pause"
    return _act(
        args, lambda cfg, db, who: actions.set_paused(db, cfg, args.destination, paused, who, reason=args.reason)
    )


def cmd_retention(args: argparse.Namespace) -> int:
    """Print what the ``retention:`` policy removes; remove it unless ``--dry-run``."""
    from node import retention
    from node.registry import utcnow

    cfg = _load(args)
    if not args.dry_run:
        _setup_logging(cfg.log_level)
    db = _database(cfg)
    now = utcnow()
    try:
        items = retention.plan(cfg, db, now=now)
        if args.dry_run:
            for d in items:
                print(f"would remove {d.line(now)}")
            print(f"dry run: {len(items)} item(s), {sum(d.size for d in items) / 1e6:.1f} MB would be removed")
            return 0
        report = retention.apply(db, items, _actor(), now=now)
    finally:
        db.dispose()
    for d in report.removed:
        print(f"removed {d.line(now)}")
    for d in report.kept_busy:
        print(f"kept (became busy) {d.line(now)}")
    print(f"{len(report.removed)} item(s) removed, {report.bytes / 1e6:.1f} MB; {len(report.kept_busy)} kept because busy")
    return 1 if report.orphaned_files else 0


def cmd_web_password(args: argparse.Namespace) -> int:
    """Print a ``web.users[].password_hash`` for a password read from the terminal (or stdin)."""
    import getpass

    from node.web.auth import hash_password

    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("hipnode web-password: at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from node.dispatch import echo

    cfg = _load(args)
    try:
        dest = cfg.destination(args.destination)
    except KeyError:
        print(f"unknown destination {args.destination!r}; configured: {[d.name for d in cfg.destinations]}")
        return 2
    ok, message = echo(dest, cfg.dispatch.calling_ae_title or cfg.node.ae_title)
    print(f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port}): {message}")
    return 0 if ok else 1


def cmd_send(args: argparse.Namespace) -> int:
    from node.dispatch import Verdict, classify_status, send_files

    cfg = _load(args)
    try:
        dest = cfg.destination(args.destination)
    except KeyError:
        print(f"unknown destination {args.destination!r}; configured: {[d.name for d in cfg.destinations]}")
        return 2
    files: list[Path] = []
    for f in args.files:
        files.extend(sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f])
    results = send_files(files, dest, cfg.dispatch.calling_ae_title or cfg.node.ae_title)
    failed = 0
    for path, status in results:
        ok = status is not None and classify_status(status) is Verdict.SENT
        failed += not ok
        print(f"{path}: {f'0x{status:04X}' if status is not None else 'not sent'}")
    print(f"{len(results) - failed} sent, {failed} failed")
    return 0 if failed == 0 else 1


def cmd_import(args: argparse.Namespace) -> int:
    """Walk, record and analyse an archive (``node.importer``); ``--workers 0`` only records."""
    from node.importer import ImportOptions, format_summary, run_import

    if args.ray_gpus_per_actor is not None and args.ray_gpus_per_actor < 0:
        print(f"--ray-gpus-per-actor must be >= 0, got {args.ray_gpus_per_actor:g}", file=sys.stderr)
        return 2
    cfg = _load(args)
    _setup_logging(cfg.log_level)
    db = _database(cfg)
    opts = ImportOptions(
        calling_ae=args.calling_ae, workers=cfg.batching.workers if args.workers is None else args.workers,
        engine=args.engine, ray_address=args.ray_address, ray_gpus_per_actor=args.ray_gpus_per_actor,
        out=args.out, send=args.send, priority=args.priority, manifest=args.manifest,
        progress=not args.no_progress,
    )
    try:
        summary = run_import(cfg, db, args.folder, opts)
    except KeyError:
        print(f"unknown destination {args.send!r}; configured: {[d.name for d in cfg.destinations]}",
              file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 1 if summary["files"].get("refused") or summary["jobs"].get("failed") or summary["stopped_for_space"] else 0


def cmd_export(args: argparse.Namespace) -> int:
    """One row per image for research (``node.export``), CSV or Parquet."""
    from node.export import export

    cfg = _load(args)
    try:
        rows = export(_database(cfg), args.results or Path(cfg.outputs.root), args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"hipnode export: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        print(f"{rows} row(s) written to {args.out}", file=sys.stderr)
    return 0


def _delegate(module: str) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
    mod = importlib.import_module(module)
    return mod.add_arguments, mod.main


def _lazy_subcommand(sub: Any, name: str, module: str, help_text: str) -> None:
    """Register a subcommand whose arguments live in a module that may need optional extras."""
    p = sub.add_parser(name, help=help_text, add_help=True)
    try:
        add_args, main = _delegate(module)
    except ImportError as exc:
        missing = str(exc)

        def _missing(_args: argparse.Namespace) -> int:
            print(f"hipnode {name} is unavailable: {missing}", file=sys.stderr)
            return 2

        p.set_defaults(func=_missing)
        return
    add_args(p)
    p.set_defaults(func=main)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hipnode", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", "-c", type=Path, default=None, help="config.yaml (default: ./config.yaml if present)")
    # Accept --config after the subcommand too (``hipnode run --config x.yaml``).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", type=Path, default=argparse.SUPPRESS, help="config.yaml")
    sub = parser.add_subparsers(dest="command", required=True)
    _add = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("check-config", help="validate the configuration and print every error with its key path")
    p.set_defaults(func=cmd_check_config)
    metrics_help = "port of this process's /metrics (default: metrics.port, or metrics.work_port for work)"
    p = sub.add_parser("receive", help="run the DICOM receiver (C-ECHO, C-STORE) and series completion")
    p.add_argument("--metrics-port", type=int, default=None, help=metrics_help)
    p.set_defaults(func=cmd_receive)
    for name, func, text in (
        ("work", cmd_work, "run job workers and the dispatcher"),
        ("run", cmd_run, "run receiver, worker(s) and dispatcher in one process"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--workers", type=int, default=None,
                       help="job threads sharing one set of models (default: batching.workers, 2)")
        p.add_argument("--metrics-port", type=int, default=None, help=metrics_help)
        p.set_defaults(func=func)
    p = sub.add_parser("status", help="counts by state, queue depth, destination health")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("audit", help="who sent what, what was sent where (from the event table)")
    p.add_argument("--since", required=True, help="ISO 8601 (2026-03-01, 2026-03-01T08:00Z) or a span (24h, 7d)")
    p.add_argument("--until", default=None, help="same forms; default now")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("health", help="exit 0 when this host's receive/work/run process answers (healthchecks)")
    p.add_argument("role", choices=("receive", "work", "run"))
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_health)
    p = sub.add_parser("requeue", help="queue a failed job again (an event records who)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("job", type=int, nargs="?", help="job id (hipnode status --json, the status page)")
    g.add_argument("--failed", action="store_true", help="every failed job (newest generation of its series)")
    p.set_defaults(func=cmd_requeue)
    p = sub.add_parser("resend", help="send a delivery again (an event records who)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("delivery", type=int, nargs="?", help="delivery id")
    g.add_argument("--failed", action="store_true", help="every failed delivery")
    p.add_argument("--destination", default=None, help="with --failed: only this destination's")
    p.set_defaults(func=cmd_resend)
    p = sub.add_parser("reprocess", help="analyse again as a new generation (amended SR after a model upgrade)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--series", help="Series Instance UID")
    g.add_argument("--since", help="series first received from (ISO 8601 or a span: 24h, 7d)")
    p.add_argument("--until", default=None, help="with --since: received before this (default now)")
    p.set_defaults(func=cmd_reprocess)
    for name, text in (("pause", "stop sending to a destination (results stay queued)"),
                       ("resume", "send to a paused destination again")):
        p = sub.add_parser(name, help=text)
        p.add_argument("destination")
        p.add_argument("--reason", default=None, help="kept with the pause (shown on the status page)")
        p.set_defaults(func=cmd_pause)
    p = sub.add_parser("retention", help="remove old images / superseded versions / results by the retention policy")
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    p.set_defaults(func=cmd_retention)
    p = sub.add_parser("web-password", help="hash a status page password (for web.users[].password_hash)")
    p.set_defaults(func=cmd_web_password)
    p = sub.add_parser("echo", help="C-ECHO a configured destination")
    p.add_argument("destination")
    p.set_defaults(func=cmd_echo)
    p = sub.add_parser("send", help="C-STORE files or folders to a configured destination")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("destination")
    p.set_defaults(func=cmd_send)
    p = sub.add_parser("import", help="import and analyse an archive folder (same ingest and job path as received images)")
    p.add_argument("folder", type=Path)
    p.add_argument("--calling-ae", default="IMPORT")
    p.add_argument("--workers", type=int, default=None,
                   help="analysis threads (or Ray actors; default: batching.workers, 2); 0: record only")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="ray: actors on a Ray cluster (extra 'ray')")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a local one)")
    p.add_argument("--ray-gpus-per-actor", type=float, default=None,
                   help="GPUs each Ray actor asks for (default: 1 with models.provider cuda or tensorrt, else 0; "
                        "0.5 puts two actors on one GPU)")
    p.add_argument("--out", type=Path, default=None, help="write SR / SC here instead of outputs.root")
    p.add_argument("--send", default=None, metavar="DEST", help="queue the results for this configured destination")
    p.add_argument("--priority", type=int, default=-10, help="job priority (live traffic: 0; larger runs first)")
    p.add_argument("--manifest", type=Path, default=None, help="resume file (default: under storage.root/.import/)")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("export", help="one row per image (CSV or Parquet), optionally pseudonymised")
    from node.export import add_arguments as export_arguments

    export_arguments(p)
    p.set_defaults(func=cmd_export)
    _lazy_subcommand(sub, "phantom", "node.phantom.cli", "write synthetic hip radiographs with exact ground truth")
    _lazy_subcommand(sub, "train", "node.train.cli", "train triage / detector / morphology models (train extra)")
    _lazy_subcommand(sub, "evaluate", "node.evaluate", "metrics of predictions against labels")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ModelUnavailable as exc:
        log.error("%s", exc)
        print(f"hipnode: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
