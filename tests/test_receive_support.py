"""Shared pieces of the receive tests: an in-process receiver and a raw C-STORE sender.

The raw sender puts exactly the given dataset bytes on the wire (pynetdicom's own
``send_c_store`` would decode and re-encode a dataset), so tests can send malformed data and
compare byte for byte.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE

from node.config import Config, parse_config
from node.receive.scp import Receiver
from node.registry.db import Database
from tests.conftest import free_port


@dataclass
class RunningReceiver:
    cfg: Config
    db: Database
    receiver: Receiver
    root: Path

    @property
    def port(self) -> int:
        return self.receiver.port


def receiver_config(tmp_path: Path, port: int, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "node": {
            "host": "127.0.0.1",
            "port": port,
            "acse_timeout_s": 10,
            "dimse_timeout_s": 20,
            "network_timeout_s": 20,
        },
        "storage": {"root": str(tmp_path / "storage"), "min_free_mb": 1},
        "database": {"url": f"sqlite:///{tmp_path / 'hipnode.db'}"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data)


@contextmanager
def running_receiver(tmp_path: Path, **overrides: Any) -> Iterator[RunningReceiver]:
    cfg = receiver_config(tmp_path, free_port(), **overrides)
    db = Database(cfg.database.url)
    db.migrate()
    receiver = Receiver(cfg, db)
    receiver.start()
    try:
        yield RunningReceiver(cfg=cfg, db=db, receiver=receiver, root=Path(cfg.storage.root))
    finally:
        receiver.stop()
        db.dispose()


def scu_ae(*contexts: tuple[str, list[str]], ae_title: str = "TESTSCU") -> Any:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = 10
    ae.dimse_timeout = 20
    ae.network_timeout = 20
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    return ae


def send_raw(
    assoc: Any,
    sop_class: str,
    sop_instance: str | None,
    dataset: bytes,
    *,
    message_id: int = 1,
    timeout_s: float = 30.0,
) -> int | None:
    """Send one C-STORE with ``dataset`` bytes as they are; the response status, or None if
    the association ended without one."""
    rsp = send_raw_response(
        assoc, sop_class, sop_instance, dataset, message_id=message_id, timeout_s=timeout_s
    )
    return None if rsp is None else int(rsp.Status)


def send_raw_response(
    assoc: Any,
    sop_class: str,
    sop_instance: str | None,
    dataset: bytes,
    *,
    message_id: int = 1,
    timeout_s: float = 30.0,
) -> Any | None:
    """As :func:`send_raw`, but the whole C-STORE-RSP primitive (Status, ErrorComment)."""
    cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class)
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = UID(sop_class)
    if sop_instance is not None:
        req.AffectedSOPInstanceUID = UID(sop_instance)
    req.Priority = 2
    req.DataSet = BytesIO(dataset)
    # As pynetdicom's send_c_store does: pause the requestor's reactor so it does not take
    # our response off the queue.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, cx.context_id)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _, rsp = assoc.dimse.get_msg(block=False)
            if rsp is not None:
                return rsp
            if assoc.acse.is_aborted() or not assoc.dul.is_alive():
                return None
            time.sleep(0.001)
        return None
    finally:
        assoc._reactor_checkpoint.set()
