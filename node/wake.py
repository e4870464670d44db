"""In-process wake-ups between stages.

Workers and the dispatcher poll the database (that is what makes separate processes work);
when they share a process with the stage that queues their work (``hipnode run``), that stage
also wakes them at once, so a result does not wait a whole poll interval at each hand-off.
A wake-up is only a hint: the database stays the single source of truth.
"""

from __future__ import annotations

import threading

JOBS = "jobs"
DELIVERIES = "deliveries"

_events: dict[str, threading.Event] = {JOBS: threading.Event(), DELIVERIES: threading.Event()}


def notify(topic: str) -> None:
    """Work of ``topic`` was committed: wake whoever waits for it in this process."""
    _events[topic].set()


def wait(topic: str, timeout_s: float) -> bool:
    """Sleep up to ``timeout_s`` or until notified; True when woken by a notification."""
    event = _events[topic]
    woken = event.wait(timeout_s)
    event.clear()
    return woken
