"""The service manager's end of sd_notify, for tests: a datagram socket that records what
services send to it, with the time each message arrived."""

from __future__ import annotations

import socket
import threading
import time


class NotifySocket:
    """The service manager's end: a datagram socket recording (time, message) pairs."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def messages(self) -> list[str]:
        return [message for _, message in self.received]

    def wait_for_count(self, count: int, timeout_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def wait_for(self, line: str, timeout_s: float) -> float | None:
        """When a message holding `line` arrived, waiting up to `timeout_s` for one."""
        deadline = time.monotonic() + timeout_s
        while True:
            for at, message in list(self.received):
                if line in message.split("\n"):
                    return at
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)

    def wait_for_ping_after(self, after: float, timeout_s: float) -> bool:
        """Whether a `WATCHDOG=1` arrives after monotonic time `after`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(at > after and m == "WATCHDOG=1" for at, m in list(self.received)):
                return True
            time.sleep(0.01)
        return False
