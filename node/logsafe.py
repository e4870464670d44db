"""Logging that never carries a patient's name, ID or birth date, whoever writes the line.

Why: our own log lines name instances by UID digest only, but the libraries we call do not know
what is personal. highdicom warns about a one-component Patient Name by quoting it ("The string
"Patient 747598" is unlikely to represent..."), pydicom quotes the offending value of a
malformed element ("Invalid value for VR DA: '1950131'"), and Python prints warnings to stderr,
which systemd writes to the journal. Two measures:

* ``logging.captureWarnings(True)``: warnings go through logging (logger ``py.warnings``) instead
  of straight to stderr, so they pass the filter below and keep the node's log format;
* ``RedactQuoted`` on the third-party loggers: every quoted value in their messages (``'…'``,
  ``"…"``) is replaced by ``<redacted>``. The sentence that explains the problem stays; only the
  value, which is where personal data would be, goes. The node's own loggers are not filtered:
  their lines quote AE titles and reasons, never patient data.

APScheduler logs every run of every job at INFO (the worker's poll runs every 0.2 s) and
highdicom every module it copies; both are kept to warnings and above so the log stays readable.

Quiet logs (issue 13): at INFO the steady state is one line per association, series completion,
job and delivery, each written by the node. ``LibraryChatter``, on the node's log handlers,
keeps every other library's chatter for DEBUG: its INFO lines (openjpeg's "tile number 1 / 1"
per encoded SC, Alembic's plugins at every start), and pynetdicom's per-association WARNING and
ERROR lines ("Network timeout reached", "Association Rejected", "Association Aborted", "DIMSE
timeout reached"...), whose event the node logs itself with its reason (the receiver's line
per association, the dispatcher's per delivery), and APScheduler's warning that a tick was
skipped because the previous one still ran. Lines with a traceback, and every other
library's warnings, still show. Being on the handlers, it sees the records of child loggers
(``pynetdicom.association``...), which a filter on a parent logger never does; so it also
redacts their quoted values.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

# quoted runs, shortest match, up to a line: '...' or "..." (the quote characters kept)
_QUOTED = re.compile(r"""(['"])(?:(?!\1)[^\n]){1,200}\1""")
REDACTED = "<redacted>"
# loggers whose messages may quote values read from a DICOM file
THIRD_PARTY_LOGGERS: tuple[str, ...] = ("py.warnings", "pydicom", "highdicom", "pynetdicom")
# one-component Patient Names are what modalities send; copying them is not our error
_PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


def redact(text: str) -> str:
    """``text`` with the content of every quoted run replaced by ``<redacted>``."""
    return _QUOTED.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(1)}", text)


class RedactQuoted(logging.Filter):
    """Rewrites a record's message with its quoted values redacted (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        safe = redact(message)
        if safe != message:
            record.msg, record.args = safe, None
        return True


_FILTER = RedactQuoted()

# what a database error carries back from the server or the driver: "Key (patient_id, issuer)=
# (MRN-1, )" in PostgreSQL's DETAIL, and SQLAlchemy's "[parameters: ...]" (hidden by the engine
# anyway, see node.registry.db)
_DB_KEY = re.compile(r"(Key \([^)\n]*\)=\()[^\n]*?(\)\s+(?:already exists|is not present|conflicts))")
_DB_PARAMETERS = re.compile(r"\[parameters: [^\n]*\]")
_DB_ROW = re.compile(r"(Failing row contains \()[^\n]*(\))")
# a run without spaces longer than this is cut (a 60,000-character "UID" must not fill the log)
MAX_RUN = 256
_LONG_RUN = re.compile(r"\S{" + str(MAX_RUN + 1) + ",}")


def scrub(text: str) -> str:
    """``text`` safe to log: database key values and parameters, quoted values and overlong
    runs removed. For tracebacks, whose messages come from libraries that quote what they read."""
    text = _DB_KEY.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)
    text = _DB_PARAMETERS.sub(f"[parameters: {REDACTED}]", text)
    text = _DB_ROW.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)
    return cut_long(redact(text))


def cut_long(text: str) -> str:
    return _LONG_RUN.sub(lambda m: f"{m.group(0)[:64]}…({len(m.group(0))} characters)", text)


class SafeFormatter(logging.Formatter):
    """The log format with tracebacks scrubbed (``scrub``) and overlong runs cut everywhere."""

    def formatException(self, ei: Any) -> str:
        return scrub(super().formatException(ei))

    def format(self, record: logging.LogRecord) -> str:
        return cut_long(super().format(record))


# libraries whose warnings and errors without a traceback are routine events, not news
_CHATTY = ("pynetdicom", "apscheduler")


def _is_ours(name: str) -> bool:
    return name == "node" or name.startswith("node.") or name == "__main__"


class LibraryChatter(logging.Filter):
    """On a log handler: third-party records get their quoted values redacted, and their
    chatter is kept for DEBUG (see the module's docstring). ``level`` is the node's log level:
    at DEBUG everything passes."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_ours(record.name):
            return True
        _FILTER.filter(record)
        if self.level <= logging.DEBUG:
            return True
        if record.levelno < logging.WARNING:
            return False  # a library's INFO is its chatter
        # pynetdicom's per-association chatter (the node logs the event in its own words) and
        # APScheduler's "skipped: maximum number of running instances reached" when a tick runs
        # long (the next one runs soon enough): without a traceback, not news
        return not (record.name.startswith(_CHATTY) and record.levelno < logging.CRITICAL and not record.exc_info)


def install(level: str | int = logging.INFO, fmt: str | None = None) -> None:
    """Configure the root logger once and make every third-party line safe to keep."""
    lvl = getattr(logging, level, logging.INFO) if isinstance(level, str) else level
    fmt = fmt or "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
    logging.basicConfig(level=lvl, format=fmt)
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, SafeFormatter):
            handler.setFormatter(SafeFormatter(fmt))
        for old in [f for f in handler.filters if isinstance(f, LibraryChatter)]:
            handler.removeFilter(old)
        handler.addFilter(LibraryChatter(lvl))
    protect()
    # pynetdicom logs every PDU at INFO; keep it for warnings and above.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, lvl))
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, lvl))
    # highdicom says "copy attributes of module …" at INFO for every object it builds
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, lvl))


def protect() -> None:
    """Route warnings through logging and redact quoted values on the third-party loggers
    (idempotent; used by every entry point that configures logging)."""
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", message=_PERSON_NAME_WARNING, category=UserWarning)
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
