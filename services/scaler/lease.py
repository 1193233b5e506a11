"""High availability: only the holder of a lease in JetStream KV acts.

The lease is the key `holder` of the bucket `dilu-scaler-lease`, whose entries expire
after `ttl_s` (3 s). The holder renews it every `renew_s` (0.5 s) with a compare-and-set
on its last revision; a standby tries to create it at the same pace, which succeeds only
once the key has expired. So when the holder dies its standby acts within `ttl_s +
renew_s` (≤ 3.5 s), and two scalers never both believe they hold it for longer than one
renewal: a holder whose renewal fails (the key expired, another took it, NATS is away)
stops acting at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.js import api as js_api
from nats.js import errors as js_errors
from nats.js.kv import KeyValue

from services.common import subjects
from services.common.bus import Bus

log = logging.getLogger(__name__)
LEASE_BUCKET = subjects.SCALER_LEASE_BUCKET
LEASE_KEY = "holder"


class LeaseKeeper:
    def __init__(self, bus: Bus, identity: str, on_change: Callable[[bool], None], *,
                 ttl_s: float = 3.0, renew_s: float = 0.5) -> None:
        self._bus = bus
        self._identity = identity.encode()
        self._on_change = on_change
        self._ttl_s = ttl_s
        self._renew_s = renew_s
        self._revision: int | None = None
        self._kv: KeyValue | None = None

    @property
    def held(self) -> bool:
        return self._revision is not None

    async def _store(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._bus.js.key_value(LEASE_BUCKET)
            except js_errors.BucketNotFoundError:
                try:
                    self._kv = await self._bus.js.create_key_value(js_api.KeyValueConfig(
                        bucket=LEASE_BUCKET, ttl=self._ttl_s, history=1))
                except js_errors.Error:  # the other scaler created it first
                    self._kv = await self._bus.js.key_value(LEASE_BUCKET)
        return self._kv

    async def step(self) -> bool:
        """Renew or try to take the lease once; returns whether it is held."""
        was = self.held
        try:
            kv = await self._store()
            if self._revision is not None:
                self._revision = await kv.update(LEASE_KEY, self._identity, last=self._revision)
            else:
                self._revision = await kv.create(LEASE_KEY, self._identity)
                log.info("took the scaler lease")
        except (js_errors.KeyWrongLastSequenceError, js_errors.KeyValueError) as error:
            if was:
                log.warning("lost the scaler lease: %s", error)
            self._revision = None
        except Exception as error:  # NATS away: nobody can renew, so do not act
            if was:
                log.warning("lost the scaler lease (the bus is away): %s", error)
            self._revision = None
        if self.held != was:
            self._on_change(self.held)
        return self.held

    async def run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self._renew_s)

    async def release(self) -> None:
        """Give the lease up on a clean stop, so a standby takes over at once."""
        if self._revision is None or self._kv is None:
            return
        try:
            await self._kv.delete(LEASE_KEY, last=self._revision)
        except Exception as error:
            log.debug("lease not released: %s", error)
        self._revision = None
