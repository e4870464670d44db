"""The one place that wires the stages together: instances of a series → results.

Workers call ``Pipeline.process(job_pk)``; it raises on a failure worth retrying and returns a
``JobOutcome`` otherwise. It must be idempotent: a job re-run after a worker crash produces the
same output UIDs and does not duplicate Result or Delivery rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from node.config import Config
from node.domain import JobState
from node.registry import Database

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    state: JobState  # DONE or SKIPPED
    reason: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """Stateless between jobs apart from loaded models (loaded once, at construction)."""

    def __init__(self, cfg: Config, db: Database) -> None:
        self.cfg = cfg
        self.db = db

    def process(self, job_pk: int) -> JobOutcome:
        """Analyse the job's series generation; raise to ask for a retry."""
        raise NotImplementedError("integrator wires the stages here")
