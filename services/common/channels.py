"""Cached client channels to peer services (node agents, workers), keyed by address."""

from __future__ import annotations

import json

import grpc

# Node-agent RPCs are idempotent (start/stop are keyed by instance id), so a call that
# finds the agent briefly unreachable is retried by the channel itself.
_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "dilu.v1.NodeAgentService"}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


class ChannelPool:
    """One insecure aio channel per address, reused across calls; closed together."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            # A peer restarted on the same address is picked up by the channel's own
            # reconnect backoff; keep that backoff short so recovery is quick.
            channel = grpc.aio.insecure_channel(
                address,
                options=[
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 2000),
                    ("grpc.enable_retries", 1),
                    ("grpc.service_config", _SERVICE_CONFIG),
                ],
            )
            self._channels[address] = channel
        return channel

    async def drop(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()
