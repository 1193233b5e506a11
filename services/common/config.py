"""Typed configuration from command-line flags, with environment fallbacks.

Every flag `--some-thing` may also be given as `DILU_SOME_THING`; the flag wins.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from services.common.logs import DEFAULT_LOG_BACKUPS, DEFAULT_LOG_MAX_BYTES, setup_logging
from services.common.security.tls import TlsError, TlsFiles

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

# Fixed default ports, documented in the README; every one is overridable by --port.
DEFAULT_PORTS = {
    "scheduler": 50051,
    "node-agent": 50052,
    "profiler": 50053,
    "scaler": 50054,
}
# Secure mode only: the mutual-TLS listener of each service (services and callers with a
# client certificate); the public port then takes bearer tokens (services/common/security).
DEFAULT_PEER_PORTS = {
    "scheduler": 50061,
    "node-agent": 50062,
    "profiler": 50063,
    "scaler": 50064,
}
# Prometheus `/metrics` ports, one per service so a node running several needs no overrides.
DEFAULT_METRICS_PORTS = {
    "scheduler": 9451,
    "node-agent": 9452,
    "profiler": 9453,
    "scaler": 9454,
}


def env_name(flag: str) -> str:
    """`--node-timeout-s` -> `DILU_NODE_TIMEOUT_S`."""
    return "DILU_" + flag.lstrip("-").replace("-", "_").upper()


class MetricsPort(int):
    """A `--metrics-port` value: a TCP port, 0 (pick a free one) or -1 (off)."""

    def __new__(cls, raw: str | int) -> MetricsPort:
        port = int(raw)
        if not -1 <= port <= 65535:
            raise ValueError(f"{port} is not a port, 0 or -1")
        return super().__new__(cls, port)


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
    # Prometheus endpoint: 0 picks a free port, -1 (METRICS_DISABLED) serves none.
    metrics_port: int = DEFAULT_METRICS_PORTS["scheduler"]
    # Where logs go (None: stderr), rotated at log_max_bytes with log_backups kept.
    log_file: str | None = None
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    log_backups: int = DEFAULT_LOG_BACKUPS
    # Secure mode: this process's CA, certificate and key (None: insecure, plaintext), and
    # the port of its mutual-TLS listener.
    tls: TlsFiles | None = None
    peer_port: int = DEFAULT_PEER_PORTS["scheduler"]


def service_parser(service: str, description: str) -> Parser:
    parser = Parser(prog=f"dilu-{service}", description=description)
    parser.add("--host", default="127.0.0.1", help="address to listen on")
    parser.add("--port", default=DEFAULT_PORTS[service], type=int,
               help="gRPC port; 0 picks a free one")
    parser.add("--nats-url", default=DEFAULT_NATS_URL, help="NATS server URL(s), comma separated")
    parser.add("--ready-file", default=None,
               help="write {address, metrics_address, pid} as JSON here once serving")
    parser.add("--grace-s", default=5.0, type=float,
               help="seconds in-flight RPCs get on shutdown (below systemd's TimeoutStopSec)")
    parser.add("--log-level", default="INFO", help="log level")
    parser.add("--metrics-port", default=DEFAULT_METRICS_PORTS[service], type=MetricsPort,
               help="Prometheus /metrics port (same address as --host); 0 picks a free one, "
                    "-1 turns it off")
    parser.add("--log-file", default=None,
               help="write logs (and stderr) to this file, rotated; unset: stderr")
    parser.add("--log-max-bytes", default=DEFAULT_LOG_MAX_BYTES, type=int,
               help="rotate the log file when it reaches this size")
    parser.add("--log-backups", default=DEFAULT_LOG_BACKUPS, type=int,
               help="rotated log files kept (name.log.1 is the newest)")
    parser.add("--tls-ca", default="",
               help="secure mode: the CA certificate every Dilu certificate chains to (PEM); "
                    "with --tls-cert and --tls-key, gRPC, NATS and /metrics use TLS and every "
                    "call is authenticated (README, Security)")
    parser.add("--tls-cert", default="", help="secure mode: this service's certificate (PEM)")
    parser.add("--tls-key", default="", help="secure mode: this service's private key (PEM)")
    parser.add("--peer-port", default=DEFAULT_PEER_PORTS[service], type=int,
               help="secure mode: the mutual-TLS port (client certificates; services call "
                    "each other here); 0 picks a free one")
    return parser


def server_config(service: str, args: argparse.Namespace,
                  parser: argparse.ArgumentParser | None = None) -> ServerConfig:
    try:
        tls = TlsFiles.from_paths(args.tls_ca, args.tls_cert, args.tls_key)
    except TlsError as error:
        if parser is None:
            raise SystemExit(f"error: {error}") from None
        parser.error(str(error))
    return ServerConfig(
        service=service,
        host=args.host,
        port=args.port,
        nats_url=args.nats_url,
        ready_file=args.ready_file,
        grace_s=args.grace_s,
        log_level=args.log_level,
        metrics_port=int(args.metrics_port),
        log_file=args.log_file,
        log_max_bytes=args.log_max_bytes,
        log_backups=args.log_backups,
        tls=tls,
        peer_port=args.peer_port,
    )


def setup_service_logging(config: ServerConfig) -> None:
    """Logging as the service's flags say (stderr, or a rotated file)."""
    setup_logging(config.service, config.log_level, config.log_file, config.log_max_bytes,
                  config.log_backups)
