"""The access store on the bus: every service's live copy of `dilu-access` (a watch), and
the operators' edits of it (`dilu token`, `dilu role`, `dilu up --secure`).

The copy is read in full when a service starts (before it serves) and then follows the
bucket's watch, so a new token, a revocation or a removed binding holds within a second or
two; after a quiet `resync_s` the copy is read again in full, which also recovers from a
watch the bus lost. While NATS is away the last copy stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from dilu.v1 import access_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js import errors as js_errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from services.common import limits, subjects
from services.common.security.access import (
    ROLE_NAMES,
    AccessBook,
    new_token,
    role_key,
    token_key,
)
from services.common.security.identity import is_person_name

log = logging.getLogger(__name__)


async def open_bucket(js: JetStreamContext, timeout_s: float = 30.0) -> KeyValue:
    """The access bucket, created when missing (retried while JetStream comes up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            try:
                return await js.key_value(subjects.ACCESS_BUCKET)
            except js_errors.BucketNotFoundError:
                return await js.create_key_value(js_api.KeyValueConfig(
                    bucket=subjects.ACCESS_BUCKET, history=1))
        except (js_errors.BucketNotFoundError, js_errors.NotFoundError):
            raise
        except Exception as error:  # JetStream not up yet, a timeout: try again
            if time.monotonic() > deadline:
                raise TimeoutError(f"cannot open the access store: {error!r}") from error
            await asyncio.sleep(0.2)


class AccessStore:
    """A service's live `AccessBook`."""

    def __init__(self, js: JetStreamContext, resync_s: float = 60.0) -> None:
        self._js = js
        self.book = AccessBook()
        self._resync_s = resync_s
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()

    async def start(self, timeout_s: float = 30.0) -> None:
        """Read the store in full, then follow it."""
        bucket = await open_bucket(self._js, timeout_s)
        self._task = asyncio.create_task(self._follow(bucket), name="access store")
        await asyncio.wait_for(self._loaded.wait(), timeout_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _follow(self, bucket: KeyValue) -> None:
        while True:
            watcher = None
            try:
                watcher = await bucket.watchall()
                entries: dict[str, bytes] = {}
                while (entry := await watcher.updates(timeout=10.0)) is not None:
                    if entry.operation not in (KV_DEL, KV_PURGE) and entry.value:
                        entries[entry.key] = entry.value
                    else:
                        entries.pop(entry.key, None)
                self.book.replace(entries)
                self._loaded.set()
                while True:
                    try:
                        entry = await watcher.updates(timeout=self._resync_s)
                    except Exception:
                        break  # quiet for resync_s (or the watch broke): read it all again
                    if entry is None:
                        continue
                    deleted = entry.operation in (KV_DEL, KV_PURGE)
                    self.book.apply(entry.key, None if deleted else entry.value)
                    log.info("access store: %s %s", "removed" if deleted else "set",
                             _shown_key(entry.key))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("access store watch interrupted (%r); the last copy holds", error)
                await asyncio.sleep(1.0)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()


def _shown_key(key: str) -> str:
    """A key for the log: a token's hash shortened (it is not the token, but need not be
    printed whole)."""
    return key[:18] + "…" if key.startswith("token.") else key


# ---- operators' edits ---------------------------------------------------------------------


class AccessAdminError(ValueError):
    """A bad argument to a `dilu token`/`dilu role` command."""


def binding_of(role: str, namespace: str = "", functions: tuple[str, ...] = ()) -> access_pb2.RoleBinding:
    """A checked role binding: deployers need a namespace; invokers a namespace or
    functions; namespaces and functions are names."""
    if role not in ROLE_NAMES:
        raise AccessAdminError(f"--role must be one of {', '.join(ROLE_NAMES)}, got {role!r}")
    if namespace:
        _checked(limits.check_name, "--namespace", namespace)
    for function in functions:
        _checked(limits.check_name, "--function", function)
    if role == "deployer" and not namespace:
        raise AccessAdminError("a deployer needs --namespace (the namespace it manages)")
    if role == "invoker" and not (namespace or functions):
        raise AccessAdminError("an invoker needs --namespace or --function (what it may invoke)")
    if role == "operator" and (namespace or functions):
        raise AccessAdminError("an operator may do everything: no --namespace or --function")
    binding = access_pb2.RoleBinding(role=ROLE_NAMES[role], namespace=namespace,  # type: ignore[arg-type]
                                     functions=sorted(set(functions)))
    binding.updated_at.GetCurrentTime()
    return binding


def _checked(check, flag: str, value: str) -> None:  # type: ignore[no-untyped-def]
    try:
        check(flag, value)
    except Exception as error:
        raise AccessAdminError(str(error)) from None


def checked_principal(name: str) -> str:
    if not is_person_name(name):
        raise AccessAdminError(f"{name!r} must be 1-80 letters, digits, '_' or '-', starting "
                               "with a letter or digit, and not start with 'dilu-' (reserved "
                               "to Dilu's own identities)")
    return name


class AccessAdmin:
    """Edits of the access store (an operator's NATS connection)."""

    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket

    async def bind(self, principal: str, binding: access_pb2.RoleBinding) -> None:
        await self._bucket.put(role_key(checked_principal(principal)), binding.SerializeToString())

    async def unbind(self, principal: str) -> bool:
        return await self._delete(role_key(checked_principal(principal)))

    async def create_token(self, principal: str, binding: access_pb2.RoleBinding | None, *,
                           ttl_s: float = 0.0, token: str | None = None) -> str:
        """A new token for `principal` (binding it too when `binding` is given); returns
        the token, which is stored nowhere else."""
        checked_principal(principal)
        token = token or new_token()
        entry = access_pb2.AccessToken(principal=principal)
        entry.created_at.GetCurrentTime()
        if ttl_s > 0:
            entry.expires_at.CopyFrom(_timestamp(time.time() + ttl_s))
        if binding is not None:
            await self.bind(principal, binding)
        await self._bucket.put(token_key(token), entry.SerializeToString())
        return token

    async def revoke(self, principal: str) -> int:
        """Delete every token of `principal`; returns how many."""
        book = await self.read()
        keys = book.token_keys_of(checked_principal(principal))
        for key in keys:
            await self._delete(key)
        return len(keys)

    async def read(self) -> AccessBook:
        """The store as it is now."""
        book = AccessBook()
        try:
            keys = await self._bucket.keys()
        except js_errors.NoKeysError:
            return book
        entries = {}
        for key in keys:
            with contextlib.suppress(js_errors.KeyNotFoundError):
                entry = await self._bucket.get(key)
                if entry.value:
                    entries[key] = entry.value
        book.replace(entries)
        return book

    async def _delete(self, key: str) -> bool:
        try:
            await self._bucket.get(key)
        except js_errors.KeyNotFoundError:
            return False
        await self._bucket.purge(key)
        return True


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
