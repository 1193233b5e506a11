"""Cached client channels to peer services (node agents, workers, the scheduler), keyed
by address and the identity expected there.

In secure mode every channel is mutual TLS: it presents this process's certificate (its
identity is what the peer authorizes) and accepts only a server whose certificate names the
identity the caller expects (`identity.py`: `dilu-node-agent.<node>` for a node's agent,
`dilu-worker.<node>` for its workers, `dilu-scheduler` ...), whatever address it dials. Dial
a service's peer address (`peer_address`) in secure mode: its public port does not ask for
client certificates.

    channels = ChannelPool(config.tls)
    agent = NodeAgentServiceStub(channels.get(peer_address(node), node_agent_identity(node.id)))
"""

from __future__ import annotations

import json

import grpc
from dilu.v1 import types_pb2

from services.common.security.tls import TlsFiles, channel_credentials

# Node-agent RPCs are idempotent (start/stop are keyed by instance id), so a call that
# finds the agent briefly unreachable is retried by the channel itself.
_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "dilu.v1.NodeAgentService"}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})
_OPTIONS = [
    # A peer restarted on the same address is picked up by the channel's own reconnect
    # backoff; keep that backoff short so recovery is quick.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", _SERVICE_CONFIG),
]


def peer_address(node: types_pb2.Node) -> str:
    """Where a service reaches a node agent: its mutual-TLS listener in secure mode."""
    return node.peer_address or node.address


class ChannelPool:
    """One aio channel per (address, expected identity), reused across calls; closed
    together. Insecure without `tls`."""

    def __init__(self, tls: TlsFiles | None = None) -> None:
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._credentials = channel_credentials(*tls.read()) if tls is not None else None

    @property
    def secure(self) -> bool:
        return self._credentials is not None

    def get(self, address: str, identity: str = "") -> grpc.aio.Channel:
        """A channel to `address`; in secure mode its server must prove `identity`."""
        key = (address, identity if self._credentials is not None else "")
        channel = self._channels.get(key)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(address, options=_OPTIONS)
            else:
                if not identity:
                    raise ValueError(f"a secure channel to {address} needs the identity expected there")
                channel = grpc.aio.secure_channel(
                    address, self._credentials,
                    options=[*_OPTIONS, ("grpc.ssl_target_name_override", identity)])
            self._channels[key] = channel
        return channel

    async def drop(self, address: str) -> None:
        for key in [k for k in self._channels if k[0] == address]:
            await self._channels.pop(key).close()

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()
