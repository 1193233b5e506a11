"""Typed configuration from command-line flags, with environment fallbacks.

Every flag `--some-thing` may also be given as `DILU_SOME_THING`; the flag wins.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

# Fixed default ports, documented in the README; every one is overridable by --port.
DEFAULT_PORTS = {
    "scheduler": 50051,
    "node-agent": 50052,
    "profiler": 50053,
    "scaler": 50054,
}


def env_name(flag: str) -> str:
    """`--node-timeout-s` -> `DILU_NODE_TIMEOUT_S`."""
    return "DILU_" + flag.lstrip("-").replace("-", "_").upper()


class Parser(argparse.ArgumentParser):
    """argparse with `DILU_*` environment fallbacks for every option."""

    def add(self, flag: str, *, default: object, help: str, type: type = str) -> None:
        name = env_name(flag)
        raw = os.environ.get(name)
        try:
            value = type(raw) if raw is not None else default
        except ValueError:
            self.error(f"{name}={raw!r} is not a valid {type.__name__}")
        self.add_argument(flag, default=value, type=type,
                          help=f"{help} (env {name}; default {default})")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What every service needs: where to listen, where the bus is, how to stop."""

    service: str
    host: str
    port: int
    nats_url: str
    ready_file: str | None
    grace_s: float
    log_level: str


def service_parser(service: str, description: str) -> Parser:
    parser = Parser(prog=f"dilu-{service}", description=description)
    parser.add("--host", default="127.0.0.1", help="address to listen on")
    parser.add("--port", default=DEFAULT_PORTS[service], type=int,
               help="gRPC port; 0 picks a free one")
    parser.add("--nats-url", default=DEFAULT_NATS_URL, help="NATS server URL(s), comma separated")
    parser.add("--ready-file", default=None,
               help="write {address, pid} as JSON here once serving")
    parser.add("--grace-s", default=5.0, type=float,
               help="seconds in-flight RPCs get on shutdown (below systemd's TimeoutStopSec)")
    parser.add("--log-level", default="INFO", help="log level")
    return parser


def server_config(service: str, args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        service=service,
        host=args.host,
        port=args.port,
        nats_url=args.nats_url,
        ready_file=args.ready_file,
        grace_s=args.grace_s,
        log_level=args.log_level,
    )
