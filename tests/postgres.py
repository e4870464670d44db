"""A real PostgreSQL server for tests, started and stopped by the tests themselves.

Why a real server: ``SELECT … FOR UPDATE SKIP LOCKED``, row locks between processes and the
Alembic migrations behave differently from SQLite, and a mock would prove none of it.

Use from a test module::

    from tests.postgres import any_db, postgres_server, postgres_url  # noqa: F401

* ``postgres_server`` (session): one server per test session on a free loopback port, data in a
  temporary directory owned by the ``postgres`` user (PostgreSQL refuses to run as root), with
  fsync off (test data only). Stopped and removed at the end of the session.
* ``postgres_url`` (function): a fresh, empty database on that server for one test, dropped after.
* ``any_db`` (function, parametrised ``sqlite`` / ``postgresql``): a migrated ``Database`` on
  either back-end, so one test body runs against both.

A missing PostgreSQL installation is a test *failure*, never a skip (see ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.registry import Database
from tests.conftest import free_port

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_USER = "postgres"


def _pg_bin() -> Path:
    """Newest installed PostgreSQL binary folder (Debian layout)."""
    candidates = sorted(Path("/").glob(PG_BIN_GLOB.lstrip("/")), key=lambda p: int(p.parent.name))
    candidates = [c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()]
    if not candidates:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are not installed", pytrace=False)
    return candidates[-1]


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL will not run as root: drop to the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail("running as root but `runuser` is missing: cannot start PostgreSQL", pytrace=False)
    return [runuser, "-u", PG_USER, "--", *argv]


@dataclass
class PostgresServer:
    """One running ``postgres`` process; ``url(dbname)`` gives a SQLAlchemy URL for a database."""

    bin_dir: Path
    root: Path
    port: int
    user: str = PG_USER

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, argv: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _as_postgres(argv), capture_output=True, text=True, timeout=timeout_s, check=False, cwd=self.root
        )

    def start(self) -> None:
        mkdir = self._run(["mkdir", "-p", "-m", "0700", str(self.socket_dir)])
        if mkdir.returncode != 0:
            raise RuntimeError(f"cannot create socket directory: {mkdir.stderr.strip()}")
        initdb = self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-U", self.user,
                "--auth=trust",  # loopback-only throwaway server
                "--no-sync",
                "-E", "UTF8",
                "--locale=C",
            ],
            timeout_s=120,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stderr.strip()}")
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        started = self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D", str(self.data_dir),
                "-l", str(self.root / "server.log"),
                "-o", options,
                "-w", "-t", "60",
                "start",
            ],
            timeout_s=90,
        )  # fmt: skip
        if started.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()}\n{log}")
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        isready = str(self.bin_dir / "pg_isready")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = self._run([isready, "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user], 10)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL on port {self.port} not ready after {timeout_s}s")

    def stop(self) -> None:
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], 60)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        r = self._run(
            [str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
             "-d", dbname, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
        )  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr.strip()}")
        return r.stdout

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (starting one costs a few seconds)."""
    bin_dir = _pg_bin()
    # Not under pytest's tmp_path: its parents are 0700 root, which the postgres user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="hipnode-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user=PG_USER, group=PG_USER)
    server = PostgresServer(bin_dir=bin_dir, root=root, port=free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database for one test; dropped (connections forced off) afterwards."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated registry on SQLite (WAL file in ``tmp_path``) or on the session's PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    db = Database(url)
    db.migrate()
    try:
        yield db
    finally:
        db.dispose()
