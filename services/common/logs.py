"""One log format for every service, and bounded log files.

Without a log file, records go to stderr (systemd's journal rotates them). With one
(`--log-file`, as `dilu up` and the node agent give their children), the process owns the
file: it rotates it at `max_bytes`, keeps `backups` older files (`x.log.1` newest), and
points its own stderr (and stdout, once nothing else needs it) at the current file, so that
what bypasses logging — a C library's prints, the traceback of a crash — lands in the same
bounded file instead of growing one that never rotates.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys

DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 3


class RotatingProcessLog(logging.handlers.RotatingFileHandler):
    """A rotating log file that also receives the process's raw stderr (and the other file
    descriptors in `redirected_fds`)."""

    def __init__(self, path: str, max_bytes: int, backups: int,
                 redirected_fds: tuple[int, ...] = (2,)) -> None:
        super().__init__(path, maxBytes=max(1024, max_bytes), backupCount=max(1, backups),
                         encoding="utf-8")
        self.redirected_fds = redirected_fds
        self.redirect()

    def redirect(self) -> None:
        """Point every descriptor in `redirected_fds` at the current file."""
        if self.stream is None:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        for fd in self.redirected_fds:
            os.dup2(self.stream.fileno(), fd)

    def doRollover(self) -> None:
        super().doRollover()
        self.redirect()


def setup_logging(service: str, level: str | None = None, log_file: str | None = None,
                  max_bytes: int = DEFAULT_LOG_MAX_BYTES, backups: int = DEFAULT_LOG_BACKUPS,
                  redirected_fds: tuple[int, ...] = (1, 2)) -> RotatingProcessLog | None:
    """Configure the root logger; returns the log file's handler when there is one."""
    handler: logging.Handler
    file_handler = None
    if log_file:
        handler = file_handler = RotatingProcessLog(log_file, max_bytes, backups, redirected_fds)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("DILU_LOG_LEVEL", "INFO")).upper())
    logging.captureWarnings(True)  # warnings go through logging, so they rotate too
    # nats-py logs every reconnect attempt at ERROR; the bus client reports them itself.
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)
    return file_handler
