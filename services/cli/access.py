"""`dilu certs`, `dilu token` and `dilu role`: certificates, bearer tokens and role bindings.

`dilu token` and `dilu role` edit the access store (the `dilu-access` bucket) over NATS as
the operator: with the `dilu-operator` certificate given by --cert/--key/--ca, or else the
one in `<state dir>/tls` (what `dilu up --secure` made). Changes hold on every service
within seconds, without restarts.

    dilu certs init [--node N]... [--host H]...     CA, service, node and client certificates
    dilu certs issue IDENTITY [--host H]...         one more (a new node: dilu-node-agent.n7)
    dilu certs nats-config [--node N]...            nats-server's TLS and permissions
    dilu token create --role deployer --namespace team-a [--name alice] [--ttl-s S]
    dilu token create --role invoker --function resnet152 [--function bert]
    dilu token revoke alice                         every token of alice: UNAUTHENTICATED
    dilu token list
    dilu role set alice --role invoker --namespace team-a   (a token's, or a certificate's)
    dilu role remove alice                          alice stays known, may do nothing
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dilu.v1 import access_pb2

from services.cli.credentials import StackCredentials, connect_operator, ensure_credentials
from services.common.security.access_store import (
    AccessAdmin,
    AccessAdminError,
    binding_of,
    checked_principal,
    open_bucket,
)
from services.common.security.certs import CertError, DevCa, init_certs
from services.common.security.nats_access import NatsTls, bus_users
from services.common.security.tls import TlsFiles
from services.common.tables import render

DEFAULT_NATS_URL = os.environ.get("DILU_NATS_URL", "nats://127.0.0.1:4222")
_ROLE_NAMES = {v: k for k, v in access_pb2.Role.items()}


def _tls_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir else Path(args.state_dir) / "tls"


def cmd_certs_init(args: argparse.Namespace) -> int:
    directory = _tls_dir(args)
    nodes = args.node or ["local"]
    try:
        credentials, _ = ensure_credentials(directory, nodes, args.host)
        if args.force:
            init_certs(directory, nodes, args.host, force=True)
    except CertError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"development CA and certificates in {directory} (nodes: {', '.join(nodes)})")
    print(f"operator token in {credentials.token_path} (registered by `dilu up --secure`)")
    return 0


def cmd_certs_issue(args: argparse.Namespace) -> int:
    directory = _tls_dir(args)
    try:
        issued = DevCa.open_or_create(directory).issue(args.identity, args.host)
    except CertError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{issued.cert}\n{issued.key}")
    return 0


def cmd_certs_nats_config(args: argparse.Namespace) -> int:
    directory = _tls_dir(args)
    credentials = StackCredentials(directory)
    nodes = args.node or credentials.nodes()
    files = credentials.files("dilu-nats")
    print(NatsTls(files.ca, files.cert, files.key, bus_users(nodes)).config(), end="")
    return 0


def _operator_files(args: argparse.Namespace) -> TlsFiles:
    if args.cert and args.key and args.ca:
        return TlsFiles(Path(args.ca), Path(args.cert), Path(args.key))
    operator = StackCredentials(Path(args.state_dir) / "tls").operator
    if not operator.cert.exists():
        raise AccessAdminError("no operator certificate: give --ca, --cert and --key (the "
                               f"dilu-operator certificate), or run `dilu certs init` ({operator.cert})")
    return operator


def _with_admin(args: argparse.Namespace, action: Callable[[AccessAdmin], Awaitable[int]]) -> int:
    async def run() -> int:
        try:
            nc = await connect_operator(args.nats_url, _operator_files(args))
        except AccessAdminError:
            raise
        except Exception as error:
            raise AccessAdminError(f"cannot reach NATS at {args.nats_url} as the operator: "
                                   f"{error!r}") from None
        try:
            return await action(AccessAdmin(await open_bucket(nc.jetstream(timeout=5.0), 10.0)))
        finally:
            await nc.close()

    try:
        return asyncio.run(run())
    except AccessAdminError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def cmd_token_create(args: argparse.Namespace) -> int:
    binding = binding_of(args.role, args.namespace, tuple(args.function))
    name = args.name or f"{args.role}-{args.namespace or 'all'}-{secrets.token_hex(3)}"
    checked_principal(name)

    async def create(admin: AccessAdmin) -> int:
        token = await admin.create_token(name, binding, ttl_s=args.ttl_s)
        print(token)
        scope = f" in {args.namespace}" if args.namespace else ""
        grants = f" ({', '.join(args.function)})" if args.function else ""
        print(f"token of {name}: {args.role}{scope}{grants}; shown once, keep it "
              "(authorization: Bearer <token>)", file=sys.stderr)
        return 0

    return _with_admin(args, create)


def cmd_token_revoke(args: argparse.Namespace) -> int:
    async def revoke(admin: AccessAdmin) -> int:
        count = await admin.revoke(args.name)
        print(f"revoked {count} token(s) of {args.name}")
        return 0 if count else 1

    return _with_admin(args, revoke)


def cmd_token_list(args: argparse.Namespace) -> int:
    async def show(admin: AccessAdmin) -> int:
        rows = []
        for name, (binding, tokens) in (await admin.read()).principals().items():
            role = _ROLE_NAMES.get(binding.role, "-").removeprefix("ROLE_").lower() if binding else "-"
            rows.append((name, role if role != "unspecified" else "-",
                         binding.namespace if binding else "", ",".join(binding.functions) if binding else "",
                         tokens))
        print(render(("PRINCIPAL", "ROLE", "NAMESPACE", "FUNCTIONS", "TOKENS"), rows))
        return 0

    return _with_admin(args, show)


def cmd_role_set(args: argparse.Namespace) -> int:
    binding = binding_of(args.role, args.namespace, tuple(args.function))

    async def bind(admin: AccessAdmin) -> int:
        await admin.bind(args.name, binding)
        print(f"{args.name}: {args.role}")
        return 0

    return _with_admin(args, bind)


def cmd_role_remove(args: argparse.Namespace) -> int:
    async def unbind(admin: AccessAdmin) -> int:
        removed = await admin.unbind(args.name)
        print(f"{args.name}: {'no role any more' if removed else 'had no role'}")
        return 0

    return _with_admin(args, unbind)


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except AccessAdminError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return run


def _store_flags(parser: argparse.ArgumentParser, state_dir: Path) -> None:
    parser.add_argument("--nats-url", default=DEFAULT_NATS_URL,
                        help="NATS (env DILU_NATS_URL; default %(default)s)")
    parser.add_argument("--state-dir", default=str(state_dir),
                        help="where `dilu up --secure` keeps tls/ (the operator certificate "
                             "used unless --cert/--key/--ca are given)")


def _binding_flags(parser: argparse.ArgumentParser, role_required: bool = True) -> None:
    parser.add_argument("--role", required=role_required, choices=("operator", "deployer", "invoker"))
    parser.add_argument("--namespace", default="",
                        help="deployer: the namespace it manages; invoker: whose functions it "
                             "may invoke")
    parser.add_argument("--function", action="append", default=[],
                        help="invoker: a function it may invoke (repeat for more)")


def add_access_commands(sub: Any, state_dir: Path) -> None:
    """`dilu certs ...`, `dilu token ...`, `dilu role ...`."""
    certs = sub.add_parser("certs", help="a development CA and the certificates of every identity")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser("init", help="the CA, the services', nodes' and clients' "
                                "certificates, and the operator token (missing ones only)")
    init.add_argument("--node", action="append", default=[],
                      help="a node to issue agent and worker certificates for (default: local)")
    init.add_argument("--force", action="store_true", help="issue every certificate anew")
    issue = certs_sub.add_parser("issue", help="issue one certificate: dilu-node-agent.<node>, "
                                 "dilu-worker.<node>, dilu-scheduler, ..., or a person's name")
    issue.add_argument("identity")
    nats_config = certs_sub.add_parser("nats-config", help="print nats-server's tls and "
                                       "authorization blocks for these nodes")
    nats_config.add_argument("--node", action="append", default=[],
                             help="a node agent's user (default: every node certificate there)")
    for parser, run in ((init, cmd_certs_init), (issue, cmd_certs_issue),
                        (nats_config, cmd_certs_nats_config)):
        parser.add_argument("--state-dir", default=str(state_dir))
        parser.add_argument("--dir", default="", help="the certificates' directory "
                            "(default: <state dir>/tls)")
        if parser is not nats_config:
            parser.add_argument("--host", action="append", default=[],
                                help="a host name or IP servers are dialled at, besides "
                                     "localhost (repeat for more)")
        parser.set_defaults(run=run)

    token = sub.add_parser("token", help="bearer tokens of the access store")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="a new token (printed once) and its principal's role")
    _binding_flags(create)
    create.add_argument("--name", default="", help="its principal (default: made up)")
    create.add_argument("--ttl-s", type=float, default=0.0, help="expires after this long (0: never)")
    revoke = token_sub.add_parser("revoke", help="every token of a principal")
    revoke.add_argument("name")
    listing = token_sub.add_parser("list", help="principals, roles and token counts")
    for parser, run in ((create, cmd_token_create), (revoke, cmd_token_revoke),
                        (listing, cmd_token_list)):
        _store_flags(parser, state_dir)
        parser.set_defaults(run=_guarded(run))

    role = sub.add_parser("role", help="role bindings of principals (tokens' and certificates')")
    role_sub = role.add_subparsers(dest="role_command", required=True)
    set_role = role_sub.add_parser("set", help="what a principal may do")
    set_role.add_argument("name")
    _binding_flags(set_role)
    remove = role_sub.add_parser("remove", help="take a principal's role away (its calls get "
                                 "PERMISSION_DENIED)")
    remove.add_argument("name")
    for parser, run in ((set_role, cmd_role_set), (remove, cmd_role_remove)):
        _store_flags(parser, state_dir)
        parser.set_defaults(run=_guarded(run))
