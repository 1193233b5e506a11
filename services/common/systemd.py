"""systemd's service notification protocol (sd_notify), without libsystemd.

Under a `Type=notify` unit systemd passes `NOTIFY_SOCKET`, the path of a datagram socket
(a leading `@` names an abstract socket); a service sends newline-separated `KEY=VALUE`
assignments to it: `READY=1` once it serves, `STOPPING=1` when it begins to shut down,
`STATUS=...` for `systemctl status`, and `WATCHDOG=1` at least once per `WATCHDOG_USEC`
microseconds when the unit sets `WatchdogSec=`. Outside systemd none of this is set and
every call here does nothing.

The watchdog is fed by a task on the service's asyncio loop, never by a thread: a blocked
loop (a handler stuck in a blocking call, a busy loop) starves the task, the pings stop,
and systemd kills and restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _address(raw: str) -> str | None:
    if raw.startswith("@"):
        return "\0" + raw[1:]  # Linux abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # e.g. vsock: addresses systemd may pass that this service cannot use


def watchdog_interval_s(env: Mapping[str, str], pid: int) -> float | None:
    """How often to ping: half the unit's `WatchdogSec=` (as sd_watchdog_enabled advises,
    so one late ping is not yet fatal), or None when no watchdog is asked of this process."""
    raw = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not raw or (owner and owner != str(pid)):
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    return usec / 2e6 if usec > 0 else None


class Notifier:
    """Sends notifications to the service manager; a no-op when there is none."""

    def __init__(self, socket_path: str | None, watchdog_s: float | None = None) -> None:
        self._address = _address(socket_path) if socket_path else None
        self.watchdog_s = watchdog_s if self._address else None
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(cls, env: MutableMapping[str, str] | None = None) -> Notifier:
        """Read and remove systemd's variables, so child processes (the node agent's
        workers) do not inherit a socket that is not theirs."""
        env = os.environ if env is None else env
        notifier = cls(env.get("NOTIFY_SOCKET"), watchdog_interval_s(env, os.getpid()))
        for name in _ENV:
            env.pop(name, None)
        return notifier

    @property
    def active(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str) -> bool:
        """Send `KEY=VALUE` lines (keyword names are upper-cased). Never raises."""
        if self._address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode(), self._address)
            return True
        except OSError as error:
            log.warning("could not notify the service manager (%s): %s", message, error)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify(ready="1", **({"status": status} if status else {}))

    def stopping(self, status: str = "") -> bool:
        return self.notify(stopping="1", **({"status": status} if status else {}))

    def ping(self) -> bool:
        return self.notify(watchdog="1")

    async def feed_watchdog(self) -> None:
        """Ping every `watchdog_s` until cancelled; returns at once when no watchdog is set."""
        if self.watchdog_s is None:
            return
        while True:
            self.ping()
            await asyncio.sleep(self.watchdog_s)

    def start_watchdog(self) -> asyncio.Task[None] | None:
        """The feeding task on the running loop, or None when no watchdog is set."""
        if self.watchdog_s is None:
            return None
        log.info("feeding the systemd watchdog every %.3f s", self.watchdog_s)
        return asyncio.create_task(self.feed_watchdog(), name="systemd watchdog")

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None
