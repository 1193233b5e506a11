"""One worker process as the node agent sees it: its files, its start, readiness, exit and
drain. The agent owns policy; this module only knows how to drive a process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import BinaryIO

from dilu.v1 import types_pb2

from services.common import limits
from services.common.lifetime import PARENT_PID_ENV
from services.node_agent.isolation import Isolation, WorkerUser
from services.node_agent.pages import Control, ControlPageWriter, StatsReader, create_stats_page

log = logging.getLogger(__name__)


class WorkerFailed(Exception):
    """The worker exited, or never became ready; the message says why."""


class WorkerProcess:
    """`user`: the uid it runs as (None: the agent's own); `isolation` gives its files
    their owners and modes (`services.node_agent.isolation`); `python`: the interpreter
    (default: the agent's own)."""

    def __init__(self, instance_id: str, spec: types_pb2.FunctionSpec, runtime_dir: Path,
                 control: Control, env: dict[str, str], *, user: WorkerUser | None = None,
                 isolation: Isolation | None = None, python: str = "") -> None:
        self.instance_id = instance_id
        self._env = env
        self._python = python or sys.executable
        self.user = user
        self._isolation = isolation or Isolation(None)
        base = runtime_dir / instance_id
        self.control_path = base.with_suffix(".ctl")
        self.stats_path = base.with_suffix(".stats")
        self.spec_path = base.with_suffix(".spec")
        self.log_path = base.with_suffix(".log")
        self.write_spec(spec)
        self.control = ControlPageWriter(self.control_path, control)
        create_stats_page(self.stats_path)
        self.stats = StatsReader(self.stats_path)
        self._isolation.hand_over(user, read_only=(self.control_path, self.spec_path),
                                  shared=(self.stats_path,))
        self._process: asyncio.subprocess.Process | None = None
        self._log: BinaryIO | None = None  # the agent's own descriptor of the worker's log

    def write_spec(self, spec: types_pb2.FunctionSpec) -> None:
        """The spec the worker will read when it starts (the file is the agent's, read-only
        to the worker: replaced, not rewritten)."""
        tmp = self.spec_path.with_suffix(".spec.tmp")
        tmp.unlink(missing_ok=True)
        tmp.write_bytes(spec.SerializeToString())
        if self.spec_path.exists():
            os.chown(tmp, self.spec_path.stat().st_uid, self.spec_path.stat().st_gid)
            tmp.chmod(self.spec_path.stat().st_mode & 0o777)
        tmp.replace(self.spec_path)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def spawn(self) -> None:
        env = {**os.environ, **self._env,
               "DILU_INSTANCE_ID": self.instance_id, "DILU_SPEC": str(self.spec_path),
               "DILU_CONTROL": str(self.control_path), "DILU_STATS": str(self.stats_path),
               "DILU_AGENT_PID": str(os.getpid()), "DILU_LOG_FILE": str(self.log_path)}
        env.pop(PARENT_PID_ENV, None)  # the worker's parent is this agent, not ours
        # Opened (and kept) before it is handed to the worker's uid: the agent writes to it
        # through this descriptor only.
        self._log = self.log_path.open("ab")
        Isolation.hand_over_log(self.user, self._log.fileno())
        switch = {}
        if self.user is not None:
            switch = {"user": self.user.uid, "group": self.user.gid,
                      "extra_groups": list(self.user.groups)}
        self._process = await asyncio.create_subprocess_exec(
            self._python, "-m", "services.node_agent.worker",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=self._log, env=env, **switch)  # type: ignore[arg-type]

    async def ready(self, timeout_s: float) -> str:
        """Wait for the worker's READY line; returns its endpoint ('' for training). Other
        stdout lines before it go to the log; the worker sends later output to stderr."""
        assert self._process is not None and self._process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = await asyncio.wait_for(self._process.stdout.readline(),
                                              max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise WorkerFailed(f"worker not ready within {timeout_s:.0f} s") from None
            except ValueError:  # a line longer than the stream's limit
                raise WorkerFailed("worker wrote an over-long line on stdout before READY") from None
            if not line:  # stdout closed: the worker is exiting
                try:
                    code = await asyncio.wait_for(self._process.wait(), 5.0)
                except TimeoutError:
                    raise WorkerFailed("worker closed stdout without becoming ready") from None
                raise WorkerFailed(self.exit_reason(code))
            text = line.decode(errors="replace").strip()
            if text.startswith("READY"):
                endpoint = text.removeprefix("READY").strip()
                if len(endpoint) > limits.ADDRESS_MAX:  # it goes into every heartbeat
                    raise WorkerFailed(f"worker announced an endpoint of {len(endpoint)} "
                                       f"characters, more than {limits.ADDRESS_MAX}")
                return endpoint
            if self._log is not None:
                self._log.write(f"[stdout] {text}\n".encode())
                self._log.flush()

    async def wait(self) -> int:
        assert self._process is not None
        return await self._process.wait()

    def exit_reason(self, code: int) -> str:
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        last = self.log_tail()
        return limits.bounded_message(f"worker {how}" + (f": {last}" if last else ""))

    def log_tail(self, limit: int = 4096) -> str:
        """The last line of the log (read from its end: logs can be long)."""
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(max(0, log_file.seek(0, os.SEEK_END) - limit))
                lines = log_file.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][-300:] if lines else ""

    async def stop(self, drain_s: float) -> int | None:
        """SIGTERM (the worker drains), SIGKILL after `drain_s`; returns the exit code."""
        process = self._process
        if process is None or process.returncode is not None:
            return process.returncode if process else None
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), drain_s)
        except TimeoutError:
            log.warning("worker %s did not drain within %.1f s; killing it", self.instance_id, drain_s)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return await process.wait()

    def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    def remove_files(self, keep_log: bool) -> None:
        """Remove the instance's files; a failed worker's log is kept for the operator."""
        self.control.close()
        self.stats.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        paths = [self.control_path, self.stats_path, self.spec_path]
        if not keep_log:  # the log and the files it rotated into
            paths += [self.log_path, *self.log_path.parent.glob(f"{self.log_path.name}.*")]
        for path in paths:
            path.unlink(missing_ok=True)
