"""One log format for every service."""

from __future__ import annotations

import logging
import os


def setup_logging(service: str, level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("DILU_LOG_LEVEL", "INFO")).upper(),
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
    )
    # nats-py logs every reconnect attempt at ERROR; the bus client reports them itself.
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)
