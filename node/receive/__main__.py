"""``python -m node.receive [--config FILE]``: run the receiver alone (tests, benchmarks,
systemd). ``hipnode receive`` is the same thing behind the project CLI."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from node import logsafe
from node.config import ConfigError, load_config
from node.receive.scp import Receiver
from node.registry.db import Database


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.receive", description=__doc__)
    parser.add_argument("--config", "-c", help="config.yaml (default: embedded defaults)")
    parser.add_argument("--port", type=int, help="override node.port")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 2
    if args.port is not None:
        cfg = cfg.model_copy(update={"node": cfg.node.model_copy(update={"port": args.port})})
    logsafe.install(cfg.log_level, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    db = Database(cfg.database.url, echo=cfg.database.echo)
    db.migrate()
    receiver = Receiver(cfg, db)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    receiver.start(block=False)
    print(f"READY {receiver.port}", flush=True)
    stop.wait()
    receiver.stop()
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
