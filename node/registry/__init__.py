"""Registry: the database both the receiver and the workers share."""

from node.registry.db import Database
from node.registry.events import record_event
from node.registry.models import (
    Base,
    Delivery,
    DestinationState,
    Event,
    Instance,
    Job,
    Measurement,
    Patient,
    Result,
    Series,
    Study,
    utcnow,
)

__all__ = [
    "Base",
    "Database",
    "Delivery",
    "DestinationState",
    "Event",
    "Instance",
    "Job",
    "Measurement",
    "Patient",
    "Result",
    "Series",
    "Study",
    "record_event",
    "utcnow",
]
