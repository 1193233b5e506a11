"""The access store's entries and what they authenticate (`AccessBook`), and the checks on
what operators write into it."""

from __future__ import annotations

import pytest
from dilu.v1 import access_pb2

from services.common.security.access import (
    AccessBook,
    Unauthenticated,
    new_token,
    role_key,
    token_key,
)
from services.common.security.access_store import AccessAdminError, binding_of, checked_principal
from services.common.security.identity import Role


def _book(principal: str = "alice", expires_at: float = 0.0, role: str | None = "deployer",
          namespace: str = "team-a") -> tuple[AccessBook, str]:
    book = AccessBook()
    token = new_token()
    entry = access_pb2.AccessToken(principal=principal)
    if expires_at:
        entry.expires_at.FromNanoseconds(int(expires_at * 1e9))
    book.apply(token_key(token), entry.SerializeToString())
    if role is not None:
        book.apply(role_key(principal), binding_of(role, namespace).SerializeToString())
    return book, token


def test_a_token_authenticates_its_principal_with_the_principals_role():
    book, token = _book()
    caller = book.caller_for_token(token, now=100.0)
    assert (caller.principal, caller.role, caller.namespace, caller.via) == (
        "alice", Role.DEPLOYER, "team-a", "token")


@pytest.mark.parametrize("bad", ["", "nope", "dilu_short", "Bearer dilu_x", "dilu_" + "a" * 42 + "!",
                                 "dilu_" + "a" * 44, "\x00" * 48])
def test_a_malformed_token_proves_nobody(bad: str):
    book, _ = _book()
    with pytest.raises(Unauthenticated, match="malformed"):
        book.caller_for_token(bad, now=0.0)


def test_an_unknown_or_revoked_token_proves_nobody():
    book, token = _book()
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        book.caller_for_token(new_token(), now=0.0)
    book.apply(token_key(token), None)  # revoked: the watch delivers a delete
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        book.caller_for_token(token, now=0.0)


def test_an_expired_token_proves_nobody():
    book, token = _book(expires_at=50.0)
    assert book.caller_for_token(token, now=49.9).role == Role.DEPLOYER
    with pytest.raises(Unauthenticated, match="expired"):
        book.caller_for_token(token, now=50.0)


def test_a_token_whose_role_was_removed_authenticates_a_caller_allowed_nothing():
    book, token = _book()
    book.apply(role_key("alice"), None)
    assert book.caller_for_token(token, now=0.0).role == Role.NONE
    book, token = _book(role=None)
    assert book.caller_for_token(token, now=0.0).role == Role.NONE


def test_an_entry_that_does_not_decode_grants_nothing():
    book, token = _book()
    book.apply(token_key(token), b"\xff\xff not a message")
    with pytest.raises(Unauthenticated):
        book.caller_for_token(token, now=0.0)


def test_certificates_of_dilus_own_identities_are_their_roles():
    book = AccessBook()
    assert book.caller_for_certificate("dilu-scheduler").role == Role.SCHEDULER
    agent = book.caller_for_certificate("dilu-node-agent.n1")
    assert (agent.role, agent.node) == (Role.NODE_AGENT, "n1")
    assert book.caller_for_certificate("dilu-worker.n1").role == Role.WORKER
    assert book.caller_for_certificate("dilu-operator").role == Role.OPERATOR
    assert book.caller_for_certificate("dilu-prometheus").role == Role.NONE


@pytest.mark.parametrize("name", ["dilu-admin", "dilu-node-agent.", "dilu-node-agent.a.b",
                                  "bad name", "", "x" * 81, "a/b"])
def test_a_certificate_of_no_principal_proves_nobody(name: str):
    with pytest.raises(Unauthenticated):
        AccessBook().caller_for_certificate(name)


def test_a_persons_certificate_is_authorized_by_its_binding():
    book = AccessBook()
    assert book.caller_for_certificate("alice").role == Role.NONE
    book.apply(role_key("alice"), binding_of("operator").SerializeToString())
    caller = book.caller_for_certificate("alice")
    assert (caller.role, caller.via) == (Role.OPERATOR, "certificate")


def test_replace_forgets_what_the_store_no_longer_holds():
    book, token = _book()
    book.replace({})
    with pytest.raises(Unauthenticated):
        book.caller_for_token(token, now=0.0)


def test_tokens_are_stored_by_hash_only():
    token = new_token()
    assert token not in token_key(token) and len(token_key(token)) == len("token.") + 64


def test_bindings_are_checked_before_they_are_written():
    assert binding_of("invoker", functions=("resnet",)).functions == ["resnet"]
    for args in [("admin",), ("deployer",), ("invoker",), ("operator", "team-a"),
                 ("deployer", "Team_A"), ("invoker", "", ("Bad!",))]:
        with pytest.raises(AccessAdminError):
            binding_of(*args)  # type: ignore[arg-type]
    with pytest.raises(AccessAdminError):
        checked_principal("dilu-scheduler")
    assert checked_principal("alice") == "alice"
