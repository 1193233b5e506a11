"""Children that die with the process that started them.

A supervisor (`dilu up`, the node agent) that is killed outright cannot stop its children;
left running, they keep ports, GPU memory and the JetStream store while the next stack
starts beside them. On Linux a child can ask the kernel for a signal when its parent dies
(`PR_SET_PDEATHSIG`): Python children call `die_with_parent()` at start, and other programs
(nats-server) are started through `python -m services.common.lifetime -- program ...`, which
asks for the signal and then becomes the program (exec keeps the request).

The parent passes its pid in `DILU_PARENT_PID` (the node agent passes `DILU_AGENT_PID` to
its workers), so a child whose parent died before the request took effect exits at once.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

PARENT_PID_ENV = "DILU_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent(pid_env: str = PARENT_PID_ENV, sig: signal.Signals = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when the parent named in `pid_env` dies.
    Does nothing when the variable is unset (e.g. under systemd) or off Linux."""
    parent = int(os.environ.get(pid_env, "0") or 0)
    if not parent or not sys.platform.startswith("linux"):
        return
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig)) != 0:
        log.warning("cannot ask to die with the parent: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(1)


def main(argv: list[str]) -> None:
    """`python -m services.common.lifetime -- program args...`: exec `program` so that it
    gets SIGTERM when the process that started this one dies."""
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit("usage: python -m services.common.lifetime -- program [args...]")
    die_with_parent()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
