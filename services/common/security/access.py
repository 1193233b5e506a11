"""Bearer tokens and role bindings: who a credential is, and what that principal may do.

The access store is the JetStream KV bucket `dilu-access` (`protos/dilu/v1/access.proto`):

    token.<sha256 hex of the token>   AccessToken   principal, created, expires
    role.<principal>                  RoleBinding   role, namespace, functions

Operators write it (`dilu token create|revoke|list`, `dilu role set|remove`, with the
`dilu-operator` certificate's NATS user); every service watches it, so a change holds on
every port within a second or two (the watch), well inside 10 s, without restarts.
Tokens are `dilu_` and 43 URL-safe base64 characters (32 random bytes); only their hashes
are stored. A principal authenticated by a token or by a client certificate that is not one
of Dilu's own identities is authorized by its binding; without one it may do nothing.

`AccessBook` is the pure part: the entries as the watch delivered them and the decisions
on them, with time as an argument.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from dilu.v1 import access_pb2

from services.common.security.identity import (
    Caller,
    Role,
    builtin_caller,
    is_person_name,
    reserved,
)

TOKEN_PREFIX = "dilu_"
TOKEN_PATTERN = re.compile(r"^dilu_[A-Za-z0-9_-]{43}$")
TOKEN_KEY = "token."
ROLE_KEY = "role."
_ROLES = {access_pb2.ROLE_OPERATOR: Role.OPERATOR, access_pb2.ROLE_DEPLOYER: Role.DEPLOYER,
          access_pb2.ROLE_INVOKER: Role.INVOKER}
ROLE_NAMES = {role.value: number for number, role in _ROLES.items()}


class Unauthenticated(Exception):
    """The credential proves nobody (malformed, unknown, revoked, expired)."""


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_key(token: str) -> str:
    """The store key of a token: its SHA-256, never the token itself."""
    return TOKEN_KEY + hashlib.sha256(token.encode()).hexdigest()


def role_key(principal: str) -> str:
    return ROLE_KEY + principal


@dataclass(frozen=True, slots=True)
class _Token:
    principal: str
    expires_at: float  # wall seconds; 0: never


class AccessBook:
    """The access store's entries, kept current by `apply`; read by `caller_for_*`."""

    def __init__(self) -> None:
        self._tokens: dict[str, _Token] = {}
        self._bindings: dict[str, access_pb2.RoleBinding] = {}

    def apply(self, key: str, value: bytes | None) -> None:
        """One entry as stored (None: deleted). Entries that do not decode are ignored, as
        if absent: a broken entry grants nothing."""
        if key.startswith(TOKEN_KEY):
            self._tokens.pop(key, None)
            if value:
                token = _decode(access_pb2.AccessToken, value)
                if token is not None and token.principal:
                    expires = token.expires_at.ToNanoseconds() / 1e9 if token.HasField("expires_at") else 0.0
                    self._tokens[key] = _Token(token.principal, expires)
        elif key.startswith(ROLE_KEY):
            principal = key.removeprefix(ROLE_KEY)
            self._bindings.pop(principal, None)
            if value:
                binding = _decode(access_pb2.RoleBinding, value)
                if binding is not None:
                    self._bindings[principal] = binding

    def replace(self, entries: dict[str, bytes]) -> None:
        """Everything anew (a full read of the store)."""
        self._tokens.clear()
        self._bindings.clear()
        for key, value in entries.items():
            self.apply(key, value)

    def caller_for_token(self, token: str, now: float) -> Caller:
        """The caller a bearer token authenticates; `Unauthenticated` when it proves
        nobody. A token whose principal has no binding is a caller of role NONE."""
        if not TOKEN_PATTERN.match(token):
            raise Unauthenticated("malformed bearer token (expected dilu_ and 43 characters)")
        entry = self._tokens.get(token_key(token))
        if entry is None:
            raise Unauthenticated("unknown or revoked token")
        if entry.expires_at and now >= entry.expires_at:
            raise Unauthenticated(f"the token of {entry.principal} has expired")
        return self._bound(entry.principal, "token")

    def caller_for_certificate(self, identity: str) -> Caller:
        """The caller a verified client certificate names: one of Dilu's own identities,
        or a person or tool authorized by its binding. `Unauthenticated` for a name of
        neither kind (a `dilu-` name that is not an identity, a name that is not safe)."""
        builtin = builtin_caller(identity)
        if builtin is not None:
            return builtin
        if reserved(identity) or not is_person_name(identity):
            raise Unauthenticated(f"certificate name {identity[:80]!r} is no Dilu principal")
        return self._bound(identity, "certificate")

    def _bound(self, principal: str, via: str) -> Caller:
        binding = self._bindings.get(principal)
        role = _ROLES.get(binding.role) if binding is not None else None
        if binding is None or role is None:
            return Caller(principal, Role.NONE, via)
        return Caller(principal, role, via, namespace=binding.namespace,
                      functions=frozenset(binding.functions))

    def principals(self) -> dict[str, tuple[access_pb2.RoleBinding | None, int]]:
        """Every principal with its binding and how many tokens it has (`dilu token list`)."""
        counts: dict[str, int] = {}
        for token in self._tokens.values():
            counts[token.principal] = counts.get(token.principal, 0) + 1
        names = sorted(set(counts) | set(self._bindings))
        return {name: (self._bindings.get(name), counts.get(name, 0)) for name in names}

    def token_keys_of(self, principal: str) -> list[str]:
        return sorted(k for k, t in self._tokens.items() if t.principal == principal)


def _decode(message_type: type, value: bytes):  # type: ignore[no-untyped-def]
    message = message_type()
    try:
        message.ParseFromString(value)
    except Exception:
        return None
    return message
