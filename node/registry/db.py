"""Engine and session factory: created once per process, shared by every handler and thread.

SQLite runs in WAL mode with a busy timeout so the receiver and workers (separate processes)
can write concurrently; ``synchronous=FULL`` because an acknowledged instance must survive a
power cut. PostgreSQL is selected by URL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)


READ_ONLY = "hipnode_read_only"  # execution option of ``Database.read_session`` connections


class SessionGuard(Protocol):
    """Wraps every session of one thread (``node.worker``: the per-job time limit is an
    asynchronous exception, and must not land inside SQLAlchemy)."""

    def section(self) -> AbstractContextManager[None]: ...


_guards = threading.local()


def guard_sessions(guard: SessionGuard | None) -> None:
    """Install ``guard`` around the sessions this thread opens from now on (None: remove it)."""
    _guards.current = guard


@contextmanager
def _guarded() -> Iterator[None]:
    guard: SessionGuard | None = getattr(_guards, "current", None)
    if guard is None:
        yield
    else:
        with guard.section():
            yield


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, echo: bool = False) -> Engine:
    """Create the process-wide engine; makes the SQLite parent folder if needed."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: a failing statement's message (logged with its traceback) must not carry
        # the bound values - patient names, IDs and birth dates are among them
        engine = create_engine(url, echo=echo, hide_parameters=True,
                               connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's BEGIN be the real transaction start (pysqlite's implicit one
            # defers locking and breaks "BEGIN IMMEDIATE" claims).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # IMMEDIATE takes the write lock at BEGIN: no deadlock-prone lock upgrades between
            # the receiver and workers, and claims are atomic. A read-only session (status,
            # metrics, the web page) begins DEFERRED: in WAL mode it then never waits for, nor
            # blocks, the receiver's writes.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, echo=echo, hide_parameters=True, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    """Engine + session factory. One per process."""

    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, echo=echo)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self.read_sessionmaker = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}),
                                              expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: commits on success, rolls back on any exception."""
        with _guarded(), self.sessionmaker() as s, s.begin():
            yield s

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A transaction for reading only: on SQLite it begins DEFERRED instead of IMMEDIATE, so
        readers (status, metrics, web page) do not take the write lock the receiver and the
        workers queue on."""
        with _guarded(), self.read_sessionmaker() as s, s.begin():
            yield s

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        from node.registry.migrate import upgrade

        upgrade(self.engine)

    def has_schema(self) -> bool:
        return inspect(self.engine).has_table("instance")

    def dispose(self) -> None:
        self.engine.dispose()
