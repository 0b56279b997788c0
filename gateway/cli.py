"""The ``classguard`` command.

Settings come from flags, then ``CLASSGUARD_*`` environment variables, then a TOML file.
A wrong argument prints a one-line error and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from .cli_redis import redis_url
from .config import ConfigError, Settings, load_settings

AUDIT_FILTERS = ("class", "type", "reason", "student", "ip", "since", "until")
AUDIT_FILTER_HELP = {
    "class": "class id is this", "type": "event type is this (e.g. join.refused)",
    "reason": "reason code is this", "student": "student id is this",
    "ip": "visitor address is this", "since": "time is at or after this (ISO 8601)",
    "until": "time is before this (ISO 8601)",
}
# Lifetimes of API bearer tokens, in days (gateway/staff.py holds them in seconds).
TOKEN_DEFAULT_DAYS = 90
TOKEN_MAX_DAYS = 365


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help shows its default: "(default: ...)" added where argparse
    knows a default the text does not already name (defaults from the settings, which
    argparse cannot see, are written into the text)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default" not in text and action.option_strings
                and action.default not in (None, False, [], argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # one line, exit 2
        sys.stderr.write(f"classguard: error: {message}\n")
        raise SystemExit(2)


def _default(name: str) -> Any:
    """The built-in default of a setting (gateway/config.py)."""
    return Settings.__dataclass_fields__[name].default


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path,
                   help="TOML settings file (flat keys named as the settings; flags and "
                        "CLASSGUARD_* variables win over it) (default: none)")
    p.add_argument("--data-dir", dest="data_dir",
                   help="data folder: keys, embedded Redis, attachments (default: "
                        f"./{_default('data_dir')} in the current folder, or "
                        "CLASSGUARD_DATA_DIR)")
    p.add_argument("--redis-url", dest="redis_url",
                   help="external Redis: redis://, rediss:// or unix:// (default: an "
                        "embedded redis-server in the data folder, or CLASSGUARD_REDIS_URL)")


def _serving(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help=f"address to listen on; 0.0.0.0 for every network "
                                  f"(default: {_default('host')}, or CLASSGUARD_HOST)")
    p.add_argument("--port", type=int,
                   help=f"port to listen on (default: {_default('port')}, or CLASSGUARD_PORT)")
    p.add_argument("--public-url", dest="public_url",
                   help="the address students and staff open, base of every printed link "
                        "(default: http://<host>:<port>, localhost for 0.0.0.0, or "
                        "CLASSGUARD_PUBLIC_URL)")
    p.add_argument("--workers", metavar="N|auto",
                   help="serving processes on the port; auto: one per usable CPU "
                        "(default: 1, or CLASSGUARD_WORKERS)")
    # A process of a supervised group (gateway/workers.py); never typed by hand.
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sequencer-only", action="store_true", dest="sequencer_only",
                   help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="classguard",
                     description="ClassGuard: a safety gateway for online classes")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the gateway")
    demo = sub.add_parser(
        "demo", help="serve with a demo school, teacher and class of five",
        description="serve with a demo school, teacher and class of five; plain http is "
                    "allowed only to loopback or a private network address (a phone on "
                    "the same Wi-Fi: --host 0.0.0.0 --public-url http://<private ip>:8080)")
    for p in (serve, demo):
        _common(p)
        _serving(p)
    serve.add_argument("--tls-cert", dest="tls_cert", type=Path,
                       help="serve https with this PEM certificate chain (needs --tls-key; "
                            "TLS 1.2 or later) (default: plain http, for a proxy in front)")
    serve.add_argument("--tls-key", dest="tls_key", type=Path,
                       help="the PEM private key of --tls-cert (default: none)")

    init = sub.add_parser("init", help="create the data dir, keys, the deployment root org "
                                       "and its first administrator")
    _common(init)
    init.add_argument("--admin", default="admin", help="administrator username")
    init.add_argument("--org", default="root", help="deployment root org slug; set once")
    init.add_argument("--org-name", dest="org_name",
                      help="display name of the root org (default: the slug)")

    user = sub.add_parser("user", help="staff accounts")
    usub = user.add_subparsers(dest="user_command", required=True, parser_class=_Parser)
    add = usub.add_parser("add", help="add a staff account")
    _common(add)
    add.add_argument("name", help="the account's user name")
    add.add_argument("--role", required=True, choices=["teacher", "it", "admin"],
                     help="what the account may do")
    add.add_argument("--org", required=True,
                     help="an existing org, or a new one when --parent is given")
    add.add_argument("--parent",
                     help="create --org under this existing org, e.g. root (default: none; "
                          "--org must exist)")
    add.add_argument("--org-name", dest="org_name",
                     help="display name of a new --org (default: the slug)")
    add.add_argument("--password-stdin", action="store_true", dest="password_stdin",
                     help="read the password from the first line of stdin (default: print "
                          "a one-time password, to be changed at the first sign-in)")
    tok = usub.add_parser(
        "token", help="print a new API bearer token (last word of output); --list, --revoke")
    _common(tok)
    tok.add_argument("name", help="the account's user name")
    tok.add_argument("--expires-days", dest="expires_days", type=int,
                     help=f"lifetime in days, at most {TOKEN_MAX_DAYS} "
                          f"(default: {TOKEN_DEFAULT_DAYS})")
    tok.add_argument("--label", help="what the token is for, shown by --list (default: none)")
    mode = tok.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="list the account's live tokens")
    mode.add_argument("--revoke", metavar="TOKEN_ID",
                      help="revoke one token, by id or the token itself (default: none)")
    reset = usub.add_parser("reset", help="give an account a new one-time password that "
                                          "must be changed at its next sign-in")
    _common(reset)
    reset.add_argument("name", help="the account's user name")

    keys = sub.add_parser("keys", help="join-token and audit keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, parser_class=_Parser)
    _common(ksub.add_parser("list", help="list the join-token keys"))
    _common(ksub.add_parser("rotate", help="make a new active join-token key; links signed "
                                           "with the old one keep working until they expire"))

    policy = sub.add_parser("policy", help="class policies")
    psub = policy.add_subparsers(dest="policy_command", required=True, parser_class=_Parser)
    explain = psub.add_parser("explain", help="which rule decides an attempt, and why")
    _common(explain)
    explain.add_argument("--class", dest="class_id", required=True, help="the class id")
    explain.add_argument("--token", required=True, help="the join token (or the whole link)")
    explain.add_argument("--ip", default="127.0.0.1", help="the visitor's address")
    explain.add_argument("--device-cookie", dest="device_cookie",
                         help="the visitor's device cookie (default: a new device)")

    audit = sub.add_parser("audit", help="the tamper-evident audit log")
    asub = audit.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    _common(asub.add_parser("verify", help="check the whole log against its signed "
                                           "checkpoints (a JSON report; exit 1 on a fault)"))
    _common(asub.add_parser("tail", help="follow new records as they are written, one "
                                         "JSON object a line, until interrupted (Ctrl-C); "
                                         "earlier records: audit search"))
    _common(asub.add_parser("checkpoint", help="print the latest signed checkpoint"))
    search = asub.add_parser("search", help="events newest first, one JSON object a line "
                             "(the next page's cursor on stderr)")
    _common(search)
    for name in AUDIT_FILTERS:
        search.add_argument(f"--{name}", dest=f"filter_{name}",
                            help=f"only events whose {AUDIT_FILTER_HELP[name]} "
                                 "(default: any)")
    search.add_argument("--limit", type=int, default=50, help="events to print (1-1000)")
    search.add_argument("--cursor", help="next_cursor of the previous page (default: the "
                                         "newest events)")
    erase = asub.add_parser("erase", help="carry out an erasure order: remove the personal "
                            "part of audit records (refused under legal hold)")
    _common(erase)
    erase.add_argument("--student", help="every record naming this student id (default: "
                                         "none; name it or --index)")
    erase.add_argument("--index", type=int, action="append", default=[], dest="indexes",
                       help="an audit index, repeatable (default: none; name it or --student)")
    erase.add_argument("--reason", required=True,
                       help="the order's reference or reason (kept in the erasure record)")

    evidence = sub.add_parser("evidence", help="incident evidence bundles")
    esub = evidence.add_subparsers(dest="evidence_command", required=True, parser_class=_Parser)
    exp = esub.add_parser("export", help="build the evidence bundle of an incident")
    _common(exp)
    exp.add_argument("incident_id", help="the incident's id")
    exp.add_argument("-o", "--output", required=True, type=Path, help="the zip file to write")
    exp.add_argument("--lang", choices=["vi", "en"], default="vi", help="report language")
    ver = esub.add_parser("verify", help="check a bundle offline (no server, no Redis)")
    ver.add_argument("file", type=Path, help="the bundle (.zip)")
    ver.add_argument("--key", help="pin the verifier key: the key text or a file holding it "
                                   "(default: the key inside the bundle)")
    ver.add_argument("--lang", choices=["vi", "en"], default="vi", help="summary language")
    ver.add_argument("--json", action="store_true", help="also print the full report as JSON")
    from .oidc_cli import add_parser as add_oidc_parser

    add_oidc_parser(sub, _Parser, _common)
    hook = sub.add_parser("janus-hook", help="event handler credentials of one Janus server")
    _common(hook)
    hook.add_argument("--ws-url", dest="ws_url", required=True,
                      help="the Janus server's ws_url, as classes name it")
    _describe(parser)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser by its full name ("audit tail"), nested ones too."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, child in action.choices.items():
                out[name] = child
                out |= {f"{name} {k}": v for k, v in subcommands(child).items()}
    return out


def _describe(parser: argparse.ArgumentParser) -> None:
    """A subcommand's own --help starts with the line its parent lists it with."""
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for choice in action._choices_actions:  # noqa: SLF001
                child = action.choices[choice.dest]
                if child.description is None:
                    child.description = choice.help
                _describe(child)


def _cmd_janus_hook(args: argparse.Namespace, settings: Settings) -> int:
    """Print the ``janus.eventhandler.sampleevh`` settings of one Janus server."""
    from meeting_adapters import InvalidSettings
    from meeting_adapters.janus import HOOK, hook_credentials

    from .routes.platform_hooks import hook_secret_path, load_or_create_hook_secret

    secret = load_or_create_hook_secret(hook_secret_path(Path(settings.data_dir), HOOK.name))
    try:
        user, password = hook_credentials(secret, args.ws_url)
    except InvalidSettings as exc:
        sys.stderr.write(f"classguard: error: --ws-url {exc.message}\n")
        return 2
    print(f'backend = "{HOOK.url(settings.public_url)}"')
    print(f'backend_user = "{user}"')
    print(f'backend_pwd = "{password}"')
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    flags = {
        k: getattr(args, k, None)
        for k in ("host", "port", "data_dir", "redis_url", "public_url")
        if getattr(args, k, None) is not None
    }
    return load_settings(flags, os.environ, getattr(args, "config", None))


def _staff(client: aioredis.Redis, settings: Settings) -> Any:
    from .services import make_staff

    return make_staff(client, settings, __import__("time").time)


async def _cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    from .keys import JoinKeyring
    from .secretbox import SecretBox

    data = Path(settings.data_dir)
    await asyncio.to_thread(data.mkdir, parents=True, exist_ok=True)
    os.chmod(data, 0o700)
    keys_dir = data / "keys"
    JoinKeyring.load_or_create(keys_dir / "join", clock=__import__("time").time)
    SecretBox.load_or_create(keys_dir / "secretbox.key")
    from audit import AuditSigningKey

    AuditSigningKey.load_or_create(keys_dir / "audit.key", settings.audit_origin)
    from .staff import StaffError

    async with _cli_services(settings) as (staff, auditor):
        try:
            root = await staff.init_root(args.org, name=args.org_name)
        except StaffError as exc:
            print(f"classguard: error: {exc.message}", file=sys.stderr)
            return 2
        if await staff.get_user(args.admin) is not None:
            print(f"data dir {data} is ready (deployment root org {root.slug}); "
                  f"administrator {args.admin!r} already exists")
            return 0
        async with auditor.intended("staff.user_created", actor=_actor(), org=root.slug,
                                    subject=f"user:{args.admin}",
                                    facts={"role": "admin", "via": "cli"}):
            user, otp = await staff.create_user(args.admin, role="admin", org=root.slug,
                                                password=None)
    print(f"data dir: {data}")
    print(f"deployment root org: {root.slug}")
    print(f"administrator: {user.username} (org {user.org})")
    print(f"one-time password: {otp}")
    return 0


def _actor() -> str:
    from .audit_cli import cli_actor

    return cli_actor()


@contextlib.asynccontextmanager
async def _cli_services(settings: Settings) -> AsyncIterator[tuple[Any, Any]]:
    """(staff store, auditor) on the configured Redis, for commands that change accounts:
    every change is an audit event, from the command line too. The records are durable
    in the log's stream at once; a running gateway's sequencer indexes them."""
    from audit import AuditLog

    from .auditing import Auditor

    async with redis_url(settings) as url:
        r = aioredis.Redis.from_url(url, decode_responses=True)
        rb = aioredis.Redis.from_url(url, decode_responses=False)
        try:
            log = AuditLog(rb, prefix=settings.redis_prefix, node_id=settings.node_id,
                           clock=lambda: int(__import__("time").time() * 1000))
            yield _staff(r, settings), Auditor(log)
        finally:
            await r.aclose()
            await rb.aclose()


async def _cmd_user(args: argparse.Namespace, settings: Settings) -> int:
    from .staff import StaffError

    async with _cli_services(settings) as (staff, auditor):
        try:
            if args.user_command == "add":
                return await _user_add(args, staff, auditor)
            if args.user_command == "reset":
                target = await staff.get_user(args.name)
                async with auditor.intended(
                        "staff.password_reset", actor=_actor(),
                        org=target.org if target is not None else None,
                        subject=f"user:{args.name}", facts={"via": "cli"}):
                    user, otp = await staff.reset_password(args.name)
                print(f"password of {user.username} reset; all their sessions ended")
                print(f"one-time password: {otp}")
                return 0
            return await _user_token(args, staff, auditor)
        except StaffError as exc:
            print(f"classguard: error: {exc.message}", file=sys.stderr)
            return 2


async def _user_add(args: argparse.Namespace, staff: Any, auditor: Any) -> int:
    from .staff import validate_slug

    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            print("classguard: error: empty password on stdin", file=sys.stderr)
            return 2
    validate_slug(args.org)
    org = await staff.get_org(args.org)
    if args.parent is not None:
        if await staff.get_org(args.parent) is None:
            print(f"classguard: error: parent org {args.parent!r} does not exist",
                  file=sys.stderr)
            return 2
        if org is None:
            async with auditor.intended("staff.org_created", actor=_actor(), org=args.org,
                                        facts={"parent": args.parent, "via": "cli"}):
                org = await staff.ensure_org(args.org, name=args.org_name, parent=args.parent)
        elif org.parent != args.parent:
            print(f"classguard: error: org {args.org!r} already exists under "
                  f"{org.parent or 'no parent'!s}", file=sys.stderr)
            return 2
    elif org is None:
        root = await staff.deployment_root()
        hint = f" --parent {root}" if root else " --parent <org> (run `classguard init` first)"
        print(f"classguard: error: org {args.org!r} does not exist; create it under an "
              f"existing one with{hint}", file=sys.stderr)
        return 2
    async with auditor.intended("staff.user_created", actor=_actor(), org=args.org,
                                subject=f"user:{args.name}",
                                facts={"role": args.role, "via": "cli"}):
        user, otp = await staff.create_user(args.name, role=args.role, org=args.org,
                                            password=password)
    print(f"user {user.username} ({user.role}, org {user.org}) created")
    if otp:
        print(f"one-time password: {otp}")
    return 0


async def _user_token(args: argparse.Namespace, staff: Any, auditor: Any) -> int:
    import time
    from datetime import UTC, datetime

    from .staff_secrets import is_token_id, parse_api_token

    def token_id_of(token: str) -> str:
        parsed = parse_api_token(token)
        assert parsed is not None
        return parsed[0]

    def when(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")

    user = await staff.get_user(args.name)
    if user is None:
        print(f"classguard: error: user {args.name!r} not found", file=sys.stderr)
        return 2
    if args.list:
        for tok in await staff.list_api_tokens(user.username):
            print(f"{tok.token_id}  created {when(tok.created)}  expires {when(tok.expires)}"
                  f"  {tok.label or ''}".rstrip())
        return 0
    if args.revoke is not None:
        parsed = parse_api_token(args.revoke.strip())
        token_id = parsed[0] if parsed else args.revoke.strip()
        if not is_token_id(token_id):
            print(f"classguard: error: {user.username} has no live token {token_id[:40]!r}",
                  file=sys.stderr)
            return 2
        try:
            async with auditor.intended("staff.token_revoked", actor=_actor(), org=user.org,
                                        subject=f"user:{user.username}",
                                        facts={"token": token_id, "via": "cli"}):
                if not await staff.revoke_api_token(token_id, username=user.username):
                    raise _NoSuchToken
        except _NoSuchToken:
            print(f"classguard: error: {user.username} has no live token {token_id[:40]!r}",
                  file=sys.stderr)
            return 2
        print(f"token {token_id} of {user.username} revoked")
        return 0
    days = TOKEN_DEFAULT_DAYS if args.expires_days is None else args.expires_days
    if not 1 <= days <= TOKEN_MAX_DAYS:
        print(f"classguard: error: --expires-days must be 1-{TOKEN_MAX_DAYS}", file=sys.stderr)
        return 2
    async with auditor.intended("staff.token_issued", actor=_actor(), org=user.org,
                                subject=f"user:{user.username}",
                                facts={"days": days, "via": "cli"}) as out:
        token = await staff.create_api_token(user.username, label=args.label,
                                             expires_in_s=days * 86400)
        token_id = token_id_of(token)
        out.facts["token"] = token_id
    print(f"expires {when(time.time() + days * 86400)} (id {token_id}; revoke with "
          f"`classguard user token {user.username} --revoke={token_id}`)", file=sys.stderr)
    print(f"API token for {user.username}: {token}")
    return 0


class _NoSuchToken(Exception):
    code = "not_found"


async def _rotate_key(ring: Any, settings: Settings) -> str:
    """Rotate the join-token key, its intent recorded first (``keys.rotated``)."""
    async with _cli_services(settings) as (_staff_store, auditor), \
            auditor.intended("keys.rotated", actor=_actor(), facts={"via": "cli"}) as out:
        kid: str = ring.rotate(settings.join_token_default_lifetime_s)
        out.facts["kid"] = kid
    return kid


def _cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from .keys import JoinKeyring, KeyringError

    try:
        ring = JoinKeyring.load_or_create(Path(settings.data_dir) / "keys" / "join",
                                          clock=time.time)
        if args.keys_command == "rotate":
            kid = asyncio.run(_rotate_key(ring, settings))
            print(f"new active join-token key: {kid}")
    except KeyringError as exc:
        print(f"classguard: error: {exc.message} ({exc.code})", file=sys.stderr)
        return 2
    for k in ring.list():
        print(json.dumps(_key_info(k), ensure_ascii=False))
    return 0


def _key_info(k: Any) -> dict[str, Any]:
    try:
        import dataclasses

        return dataclasses.asdict(k)
    except TypeError:
        return {"kid": str(k)}


async def _cmd_policy(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from .joinflow import JoinFlow
    from .metrics import Metrics
    from .presence import Reconciler
    from .services import Foundation, make_templates, open_services
    from .stores import device_hash

    token = args.token.rsplit("/j/", 1)[-1].strip()
    found = Foundation(settings=settings, clock=time.time, metrics=Metrics.create(),
                       templates=make_templates())
    async with redis_url(settings) as url, open_services(
            found, reconciler=Reconciler, url=url, background=False) as svc:
        dev = device_hash(args.device_cookie) if args.device_cookie else None
        out = await JoinFlow(svc).explain_token(token, ip=args.ip, device=dev)
    cls = out.get("class_id")
    if cls is not None and cls != args.class_id:
        print(f"note: the token is for class {cls}, not {args.class_id}", file=sys.stderr)
    for step in out.get("steps", []):
        outcome = step.get("outcome")
        mark = "pass" if outcome == "pass" else json.dumps(outcome, ensure_ascii=False)
        print(f"  {step.get('rule', '?'):<20} {mark}  {step.get('text', '')}")
    d = out.get("decision", {})
    print(f"decision: {d.get('action')} ({d.get('reason')}) by rule {d.get('rule')}")
    return 0


async def _cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from .audit_cli import run_audit_command

    search = None
    if args.audit_command == "search":
        search = {name: getattr(args, f"filter_{name}") for name in AUDIT_FILTERS
                  if getattr(args, f"filter_{name}") is not None}
        search |= {"limit": args.limit, "cursor": args.cursor}
    if args.audit_command == "erase":
        from .audit_cli import run_erase

        if not args.student and not args.indexes:
            print("classguard: error: name --student or at least one --index", file=sys.stderr)
            return 2
        if any(i < 0 for i in args.indexes):
            print("classguard: error: --index must be a non-negative audit index",
                  file=sys.stderr)
            return 2
        if not args.reason.strip():
            print("classguard: error: --reason must not be empty", file=sys.stderr)
            return 2
        async with redis_url(settings) as url:
            return await run_erase(settings, url, student=args.student,
                                   indexes=args.indexes, reason=args.reason.strip()[:1000])
    async with redis_url(settings) as url:
        return await run_audit_command(args.audit_command, settings, url, search=search)


# Young-generation threshold of the cyclic garbage collector for a serving process
# (CPython's default is 700 container allocations).
GC_YOUNG_THRESHOLD = 20_000


def _settle_heap() -> None:
    """Keep the collector off the request path once the process is set up.

    NOTE: a full collection walks every tracked object, and a serving process holds
    about 105,000 of them from its imports and set-up alone (functions, classes, the
    app), all alive until it exits. Measured with tests/bench/join.py on a 2-core
    machine: 6 full collections in a run, 0.55-0.6 s in all and up to 100-250 ms each,
    the event loop stopped meanwhile for every request in flight; 750 young collections
    besides. Set aside (gc.freeze) and with a young threshold that lets a request's
    short-lived containers die first: no full collection while serving and 9 young
    ones in about 30 ms. ``classguard_gc_pause_seconds`` shows it on a running process."""
    gc.collect()
    gc.freeze()
    _, mid, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, mid, old)


class TLSError(Exception):
    """The certificate or key given to ``serve`` cannot be used (one line for the user)."""


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server context of ``--tls-cert``/``--tls-key``: TLS 1.2 or later, Python's
    default ciphers; ``TLSError`` names the file at fault."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            with path.open("rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise TLSError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSError(f"--tls-key {key} is not the key of --tls-cert {cert}") from None
        try:
            ssl.create_default_context().load_verify_locations(cafile=str(cert))
        except ssl.SSLError:
            raise TLSError(f"--tls-cert {cert} holds no PEM certificate") from None
        raise TLSError(f"--tls-key {key} holds no usable PEM private key "
                       f"(unencrypted, matching --tls-cert): {exc.reason or exc}") from None
    return ctx


def _tls(args: argparse.Namespace, settings: Settings) -> tuple[ssl.SSLContext | None,
                                                               Settings]:
    """The TLS context of ``serve`` (``None`` for plain http) and the settings to serve
    with: with TLS, a public URL derived from host and port says https."""
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if cert is None and key is None:
        return None, settings
    if cert is None or key is None:
        raise TLSError("--tls-cert and --tls-key go together")
    ctx = tls_context(cert, key)
    if settings.public_url.startswith("http://"):
        if getattr(args, "public_url", None) or os.environ.get("CLASSGUARD_PUBLIC_URL"):
            raise TLSError(f"--public-url {settings.public_url} must be https:// when the "
                           "gateway serves TLS itself")
        settings = dataclasses.replace(
            settings, public_url="https://" + settings.public_url.removeprefix("http://"))
    return ctx, settings


def _serve(args: argparse.Namespace, settings: Settings, *, demo: bool) -> int:
    from .workers import WorkersError, parse_workers

    try:
        tls, settings = _tls(args, settings)
    except TLSError as exc:
        sys.stderr.write(f"classguard: error: {exc}\n")
        return 2
    warning = None
    if demo:
        from .demo import demo_settings

        try:
            settings, warning = demo_settings(settings)
        except ConfigError as exc:
            sys.stderr.write(f"classguard: error: {exc}\n")
            return 2

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # fontTools (under fpdf2) narrates every font subset at INFO: noise to an operator.
    logging.getLogger("fontTools").setLevel(max(logging.WARNING, logging.root.level))
    if args.sequencer_only:
        from .workers import run_sequencer_process

        return asyncio.run(run_sequencer_process(settings))
    if args.worker is not None:
        # One worker of a supervised group: the port is shared, the sequencer is not ours.
        return _serve_one(settings, demo=demo and args.worker == 0, demo_routes=demo,
                          worker=args.worker, warning=warning, tls=tls)
    try:
        n = parse_workers(args.workers if args.workers is not None
                          else os.environ.get("CLASSGUARD_WORKERS"))
    except WorkersError as exc:
        sys.stderr.write(f"classguard: error: {exc}\n")
        return 2
    if n == 1:
        return _serve_one(settings, demo=demo, demo_routes=demo, worker=None,
                          warning=warning, tls=tls)
    return _supervise(args, settings, n, demo=demo)


def _forwarded(args: argparse.Namespace) -> list[str]:
    """The user's serve flags, for the group's processes."""
    out: list[str] = []
    for flag, name in (("--config", "config"), ("--data-dir", "data_dir"),
                       ("--redis-url", "redis_url"), ("--host", "host"), ("--port", "port"),
                       ("--public-url", "public_url"), ("--tls-cert", "tls_cert"),
                       ("--tls-key", "tls_key")):
        value = getattr(args, name, None)
        if value is not None:
            out += [flag, str(value)]
    return out


def _supervise(args: argparse.Namespace, settings: Settings, n: int, *, demo: bool) -> int:
    from .workers import Supervisor

    base = [sys.executable, "-m", "gateway.cli", "demo" if demo else "serve", *_forwarded(args)]
    sup = Supervisor(settings, n, worker_argv=base,
                     sequencer_argv=[*base, "--sequencer-only"], env=dict(os.environ))
    return asyncio.run(sup.run())


def _serve_one(settings: Settings, *, demo: bool, demo_routes: bool, worker: int | None,
               warning: str | None = None, tls: ssl.SSLContext | None = None) -> int:
    from aiohttp import web

    from . import i18n
    from .app import create_app
    from .conn_guard import ConnectionGuard, GuardedTCPSite
    from .services import FOUNDATION
    from .workers import report_ready

    app = create_app(settings, sequencer=worker is None)
    if demo_routes:
        from .demo import add_demo

        add_demo(app, setup=demo, warning=warning)

    async def _run() -> None:
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        try:
            await runner.setup()
        except BaseException:
            # Set-up failed half way: stop what it started (the demo's Janus, the
            # embedded Redis) before the error ends the process.
            await runner.cleanup()
            raise
        # NOTE: `serve` may face phones directly (no proxy): slow-loris guard and a
        # per-address connection cap (gateway.conn_guard).
        metrics = app[FOUNDATION].metrics
        guard = ConnectionGuard(
            header_timeout_s=settings.header_read_timeout_s,
            body_timeout_s=settings.body_read_timeout_s,
            max_per_address=settings.max_connections_per_address,
            refusal_text=i18n.t(settings.default_lang, "error.too_many_connections"),
            on_close=lambda reason: metrics.connections_closed.labels(reason).inc())
        # NOTE: SO_REUSEPORT only in a group: a lone gateway must fail on a port in use.
        site = GuardedTCPSite(runner, settings.host, settings.port, guard=guard,
                              ssl_context=tls, reuse_port=worker is not None,
                              access_log=None)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise _ListenError(f"cannot listen on {settings.host}:{settings.port}: "
                               f"{exc.strerror or exc}") from exc
        # NOTE: after listening, not before: what set-up printed (the demo's links) may
        # be opened at once, and a connection made meanwhile waits in the kernel's
        # backlog for the one collection below instead of being refused.
        _settle_heap()
        if demo_routes:
            from .demo import announcement

            text = announcement(app)  # sign-in and links: only now that they work
            if text is not None:
                print(text, flush=True)
        if worker is None:
            print(f"ClassGuard listening on {settings.public_url}", flush=True)
        else:
            logging.getLogger("classguard").info("worker %d (pid %d) listening on %s",
                                                 worker, os.getpid(), settings.public_url)
        report_ready()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    try:
        asyncio.run(_run())
    except _ListenError as exc:
        sys.stderr.write(f"classguard: error: {exc}\n")
        return 1
    return 0


class _ListenError(Exception):
    """The port could not be bound (in use, not allowed)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "evidence" and args.evidence_command == "verify":
        # Needs nothing but the file: no settings, no data dir, no Redis.
        from .evidence_cli import verify_command

        return verify_command(args.file, key=args.key, lang=args.lang, as_json=args.json)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        sys.stderr.write(f"classguard: error: {exc}\n")
        return 2
    try:
        if args.command == "serve":
            return _serve(args, settings, demo=False)
        if args.command == "demo":
            return _serve(args, settings, demo=True)
        if args.command == "init":
            return asyncio.run(_cmd_init(args, settings))
        if args.command == "user":
            return asyncio.run(_cmd_user(args, settings))
        if args.command == "keys":
            return _cmd_keys(args, settings)
        if args.command == "policy":
            return asyncio.run(_cmd_policy(args, settings))
        if args.command == "audit":
            return asyncio.run(_cmd_audit(args, settings))
        if args.command == "oidc":
            from .oidc_cli import run as oidc_run

            return asyncio.run(oidc_run(args, settings, _cli_services(settings), _actor()))
        if args.command == "janus-hook":
            return _cmd_janus_hook(args, settings)
        if args.command == "evidence":
            from .evidence_cli import export_command

            return asyncio.run(export_command(args.incident_id, args.output, args.lang,
                                              settings))
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
