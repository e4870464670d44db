"""No patient name, ID or birth date in the log, even when a library quotes one.

The libraries' own messages are the leak: highdicom warns about a one-component Patient Name by
quoting it, pydicom warns *and* logs a malformed element's value. The checks run the node's
composer and reader in a child process with the node's logging (``node.logsafe.install``), as
``hipnode run`` does, because pytest's own warning capture would hide what reaches stderr.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from node import logsafe

REPO = Path(__file__).resolve().parents[1]

NAME = "Patient 747598"  # one component: highdicom warns, quoting it
BIRTH = "1950-02-31"  # not a DA: pydicom warns and logs, quoting it
PID = "PID\\747598"  # a backslash makes two values of an LO: pydicom quotes it

_CHILD = r"""
import io, sys
import pydicom
from pydicom import config
from node import logsafe
from node.compose.sr import build_sr
from tests.test_compose_data import MODELS, full_series

logsafe.install("INFO")
findings, sources = full_series()
config.settings.writing_validation_mode = config.IGNORE  # a modality wrote these, not us
for s in sources:
    s.PatientName = sys.argv[1]
    s.PatientBirthDate = sys.argv[2]
    s.PatientID = sys.argv[3]
config.settings.writing_validation_mode = config.WARN
# read back as the worker reads a received file, so the values are parsed (and checked) again
reread = []
for s in sources:
    buf = io.BytesIO()
    s.save_as(buf, enforce_file_format=True)
    reread.append(pydicom.dcmread(io.BytesIO(buf.getvalue())))
sr = build_sr(findings, reread, models=MODELS)
print("SR built:", sr.SOPInstanceUID)
"""


def test_library_warnings_reach_the_log_with_values_redacted() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, NAME, BIRTH, PID],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SR built:" in proc.stdout
    out = proc.stdout + proc.stderr
    for value in ("747598", BIRTH, "1950"):
        assert value not in out, f"{value!r} reached the log:\n{out[-3000:]}"
    # the explanation survives, in the node's log format, with the value taken out
    assert "Invalid value for VR DA" in proc.stderr, proc.stderr[-3000:]
    assert logsafe.REDACTED in proc.stderr


def test_redact_keeps_the_sentence_and_drops_quoted_values() -> None:
    assert logsafe.redact("Invalid value for VR DA: '1950-02-31'.") == "Invalid value for VR DA: '<redacted>'."
    assert logsafe.redact('The string "Doe John" is odd') == 'The string "<redacted>" is odd'
    assert logsafe.redact("no quotes here") == "no quotes here"
    # an apostrophe alone is not a quoted run
    assert logsafe.redact("the node's queue") == "the node's queue"


def test_filter_rewrites_records_of_third_party_loggers() -> None:
    logsafe.protect()
    try:
        record = logging.LogRecord("pydicom", logging.WARNING, __file__, 1, "bad value %r", ("Doe^John",), None)
        assert logging.getLogger("pydicom").filter(record)
        assert record.getMessage() == "bad value '<redacted>'"
        mine = logging.LogRecord("node.worker", logging.INFO, __file__, 1, "AE %r", ("PACS",), None)
        assert logging.getLogger("node.worker").filter(mine)
        assert mine.getMessage() == "AE 'PACS'", "the node's own lines are not rewritten"
    finally:
        logging.captureWarnings(False)


def _record(name: str, level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord(name, level, __file__, 1, msg, None, exc_info)


def test_library_chatter_is_kept_for_debug_and_child_loggers_are_redacted() -> None:
    """Quiet logs (issue 13): at INFO a library's INFO lines and pynetdicom's / APScheduler's
    routine warnings and errors are dropped by the handler filter; the node's own lines, other
    libraries' warnings and anything with a traceback stay; at DEBUG everything passes."""
    info = logsafe.LibraryChatter(logging.INFO)
    assert not info.filter(_record("pynetdicom.association", logging.ERROR, "Network timeout reached"))
    assert not info.filter(_record("pynetdicom.acse", logging.ERROR, "Association Rejected"))
    assert not info.filter(_record("apscheduler.scheduler", logging.WARNING, "Execution of job skipped"))
    assert not info.filter(_record("openjpeg.encode", logging.INFO, "tile number 1 / 1"))
    assert not info.filter(_record("alembic.runtime.migration", logging.INFO, "Context impl SQLiteImpl."))
    assert info.filter(_record("pynetdicom.dul", logging.ERROR, "Exception in DUL.run()", exc=True))
    assert info.filter(_record("node.receive.scp", logging.INFO, "association from 'CR1'"))
    child = _record("highdicom.sr.value_types", logging.WARNING, "odd name 'Doe^John'")
    assert info.filter(child) and child.getMessage() == f"odd name '{logsafe.REDACTED}'"
    debug = logsafe.LibraryChatter(logging.DEBUG)
    assert debug.filter(_record("pynetdicom.association", logging.ERROR, "Network timeout reached"))
    assert debug.filter(_record("openjpeg.encode", logging.INFO, "tile number 1 / 1"))
