"""NATS in secure mode: which identity may publish and subscribe to what, as the
`nats-server` configuration that enforces it, and the client side of it.

Every client presents its certificate (`verify_and_map`): NATS takes the identity from the
certificate's DNS name and holds the connection to that user's permissions. A permission
NATS refuses is refused by the server itself (it logs `Publish Violation`); the client sees
an asynchronous permissions error, and a refused JetStream publish (a KV put) times out.

- `dilu-node-agent.<node>`: publishes telemetry, QoS and instance events under `<node>`
  only; writes its own key `<node>` of `dilu-nodes` (and reads no other node's);
  reads `dilu-profiles` and `dilu-access`; subscribes to nothing.
- `dilu-scheduler`: publishes scaling decisions; subscribes to instance events; writes
  `dilu-functions`, `dilu-instances` and `dilu-profiles` (the WANTED records that ask the
  profiler for a Deploy's profile); reads `dilu-nodes`, `dilu-access`; keeps the
  `DILU_SCALING` stream.
- `dilu-scaler`: may publish scaling decisions (today the scheduler records those it acts
  on: its ScaleOut/ScaleIn, and the agents' QUOTA_CHANGED events); subscribes to QoS,
  telemetry and scaling decisions; writes and reads `dilu-scaler-lease` (its HA lease)
  and reads `dilu-access`, no other bucket (functions, instances and nodes come from the
  scheduler's `ListFunctions`/`ListNodes`); keeps and replays `DILU_SCALING`.
- `dilu-profiler`: publishes nothing; subscribes to QoS, telemetry and instance events;
  writes `dilu-profiles` (with the scheduler); reads `dilu-functions`, `dilu-instances`, `dilu-nodes`,
  `dilu-access`.
- `dilu-operator`: everything (the CLI's `dilu token`/`dilu role`, `dilu up`, the demo).

Everyone else (workers, people's certificates, the metrics scraper) has no NATS user. Each
client's replies arrive on an inbox of its own (`_INBOX_<identity>`; `inbox_prefix`), the
only one it may subscribe to, so no client reads another's replies. Opening a bucket may
create it (every service opens the buckets it uses and the first creates it) but never
update, purge or delete it; writes are the owners' alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from services.common import subjects
from services.common.security.identity import (
    NATS_IDENTITY,
    OPERATOR_IDENTITY,
    node_agent_identity,
    service_identity,
)


def inbox_prefix(identity: str) -> str:
    """The inbox a client of this identity receives its replies on (one subject token)."""
    return "_INBOX_" + identity.replace(".", "_")


@dataclass(frozen=True, slots=True)
class Access:
    """What one identity may do on the bus."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()  # buckets (or "bucket.key" for one key)
    reads: tuple[str, ...] = ()  # buckets
    streams: tuple[str, ...] = ()  # streams it creates, reads and replays
    everything: bool = False

    def permissions(self, identity: str) -> dict[str, dict[str, list[str]]]:
        """The `permissions` block of this identity's user in nats-server's config."""
        publish = [*self.publish, "$JS.API.INFO"]
        buckets = dict.fromkeys([*(w.split(".", 1)[0] for w in self.writes), *self.reads])
        for bucket in buckets:
            publish += _open_api(f"KV_{bucket}")
            if bucket in self.reads:
                publish += _read_api(f"KV_{bucket}")
        for target in self.writes:
            bucket, _, key = target.partition(".")
            publish.append(f"$KV.{bucket}.{key or '>'}")
        for stream in self.streams:
            publish += _open_api(stream) + _read_api(stream)
        if self.streams:
            publish.append("$JS.API.STREAM.NAMES")  # a replay finds its stream by subject
        return {"publish": {"allow": publish},
                "subscribe": {"allow": [*self.subscribe, f"{inbox_prefix(identity)}.>"]}}


def _open_api(stream: str) -> list[str]:
    """Open a stream or bucket, creating it if missing (never updating or deleting it)."""
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.CREATE.{stream}"]


def _read_api(stream: str) -> list[str]:
    """Read its messages (KV gets), and list, watch or replay it through ordered consumers
    (which need their flow-control replies)."""
    return [f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>", f"$JS.API.CONSUMER.DELETE.{stream}.>",
            f"$JS.FC.{stream}.>"]


def node_agent_access(node: str) -> Access:
    return Access(
        publish=(f"dilu.telemetry.gpu.{node}.>", f"dilu.qos.{node}.>",
                 f"dilu.events.instance.{node}.>"),
        writes=(f"{subjects.NODES_BUCKET}.{node}",),
        reads=(subjects.PROFILES_BUCKET, subjects.ACCESS_BUCKET))


SERVICE_ACCESS = {
    "scheduler": Access(
        publish=(subjects.SCALING_EVENTS_ALL,), subscribe=(subjects.INSTANCE_EVENTS_ALL,),
        # dilu-profiles: the WANTED records that ask for a Deploy's profile.
        writes=(subjects.FUNCTIONS_BUCKET, subjects.INSTANCES_BUCKET, subjects.PROFILES_BUCKET),
        reads=(subjects.FUNCTIONS_BUCKET, subjects.INSTANCES_BUCKET, subjects.NODES_BUCKET,
               subjects.PROFILES_BUCKET, subjects.ACCESS_BUCKET),
        streams=(subjects.SCALING_STREAM,)),
    "scaler": Access(
        publish=(subjects.SCALING_EVENTS_ALL,),
        subscribe=(subjects.QOS_ALL, subjects.TELEMETRY_ALL, subjects.SCALING_EVENTS_ALL),
        writes=(subjects.SCALER_LEASE_BUCKET,),
        reads=(subjects.SCALER_LEASE_BUCKET, subjects.ACCESS_BUCKET),
        streams=(subjects.SCALING_STREAM,)),
    "profiler": Access(
        subscribe=(subjects.QOS_ALL, subjects.TELEMETRY_ALL, subjects.INSTANCE_EVENTS_ALL),
        writes=(subjects.PROFILES_BUCKET,),
        reads=(subjects.FUNCTIONS_BUCKET, subjects.INSTANCES_BUCKET, subjects.NODES_BUCKET,
               subjects.PROFILES_BUCKET, subjects.ACCESS_BUCKET)),
}


def bus_users(nodes: Iterable[str]) -> dict[str, Access]:
    """Every NATS user of a cluster with these nodes."""
    users = {service_identity(s): access for s, access in SERVICE_ACCESS.items()}
    users[OPERATOR_IDENTITY] = Access(everything=True)
    for node in nodes:
        users[node_agent_identity(node)] = node_agent_access(node)
    return users


@dataclass(frozen=True, slots=True)
class NatsTls:
    """The server side: its certificate and the CA its clients' certificates chain to."""

    ca: Path
    cert: Path
    key: Path
    users: dict[str, Access] = field(default_factory=dict)

    def config(self) -> str:
        """`tls` and `authorization` blocks for nats-server's configuration file (JSON
        values are valid in its syntax)."""
        users = []
        for identity, access in sorted(self.users.items()):
            user: dict[str, object] = {"user": identity}
            if not access.everything:
                user["permissions"] = access.permissions(identity)
            users.append(user)
        tls = {"cert_file": str(self.cert), "key_file": str(self.key), "ca_file": str(self.ca),
               "verify_and_map": True, "timeout": 5}
        return (f"# Dilu secure mode: TLS with client certificates mapped to users ({NATS_IDENTITY})\n"
                f"tls: {json.dumps(tls, indent=2)}\n"
                f"authorization: {json.dumps({'users': users}, indent=2)}\n")
