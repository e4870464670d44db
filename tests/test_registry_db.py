"""Registry engine settings that protect patients and the receiver (issue 13)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from node.registry import Database
from node.registry.models import Patient
from tests.postgres import any_db, postgres_server, postgres_url  # noqa: F401 - fixtures


def test_a_failing_statement_does_not_log_its_values(any_db: Database) -> None:  # noqa: F811
    """A registry error is logged with its traceback. SQLAlchemy's message lists the bound
    parameters by default, and PostgreSQL's DETAIL quotes the conflicting key (a patient ID):
    the engine hides the parameters and the node's log formatter (``node.logsafe``) scrubs the
    rest, so neither the patient's name, ID nor birth date reaches the log."""
    import logging

    from node.logsafe import SafeFormatter

    with any_db.session() as s:
        s.add(Patient(patient_id="MRN-7731", issuer="", name="DOE^JANE", birth_date="19520417"))
    with pytest.raises(IntegrityError) as caught, any_db.session() as s:
        s.add(Patient(patient_id="MRN-7731", issuer="", name="DOE^JANE", birth_date="19520417"))
    assert "hidden due to hide_parameters" in str(caught.value)
    record = logging.LogRecord("node.receive", logging.ERROR, __file__, 1, "C-STORE failed (0xC011), "
                               "instance %s: registry error", ("ab12",), (type(caught.value), caught.value,
                                                                           caught.value.__traceback__))
    line = SafeFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert "IntegrityError" in line and "registry error" in line
    for value in ("MRN-7731", "DOE^JANE", "19520417"):
        assert value not in line, line


def test_overlong_runs_are_cut_in_every_line() -> None:
    import logging

    from node.logsafe import MAX_RUN, SafeFormatter

    uid = "1." + "2" * 60_000
    record = logging.LogRecord("node.receive", logging.WARNING, __file__, 1, "bad UID %s", (uid,), None)
    line = SafeFormatter("%(message)s").format(record)
    assert len(line) < 2 * MAX_RUN and "60002 characters" in line


def test_a_sqlite_reader_does_not_take_the_write_lock(tmp_path: Path) -> None:
    """A read-only session (status, metrics) begins DEFERRED: it reads while a writer holds
    the write lock, where an IMMEDIATE reader would wait for the writer to commit."""
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    db.migrate()
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with db.session() as s:
            s.add(Patient(patient_id="A1", issuer=""))
            s.flush()
            holding.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    assert holding.wait(10)
    start = time.monotonic()
    with db.read_session() as s:
        assert s.scalars(select(Patient)).all() == []  # the writer has not committed
    waited = time.monotonic() - start
    release.set()
    t.join(10)
    assert waited < 2.0, f"the reader waited {waited:.1f} s for the writer"
    db.dispose()


def test_a_failing_row_detail_is_scrubbed() -> None:
    """PostgreSQL reports a NOT NULL or CHECK violation with the whole row ("Failing row
    contains (...)"), names and birth dates included."""
    from node.logsafe import scrub

    text = ('psycopg2.errors.NotNullViolation: null value in column "issuer"\n'
            "DETAIL:  Failing row contains (7, MRN-7731, null, DOE^JANE, 19520417, F).")
    out = scrub(text)
    assert "MRN-7731" not in out and "DOE^JANE" not in out and "19520417" not in out
    assert "Failing row contains (<redacted>)" in out
