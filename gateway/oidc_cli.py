"""``classguard oidc``: an org's OpenID provider, from the command line (gateway/oidc.py).

    classguard oidc set <org> --settings FILE|-   the same JSON as PUT /api/v1/orgs/<org>/oidc
    classguard oidc show <org>                    the settings (never the client secret)
    classguard oidc email <username> <email>      the school email a pre-created account
                                                  links with at its first sign-in
    classguard oidc remove <org>

The settings come from a file or standard input, so the client secret never appears in
the process list or the shell history.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from .config import Settings
from .secretbox import SecretBox
from .staff import StaffError


def add_parser(sub: Any, parser_class: type[argparse.ArgumentParser],
               common: Callable[[argparse.ArgumentParser], Any]) -> None:
    oidc = sub.add_parser("oidc", help="sign-in through an org's OpenID provider "
                                       "(Google, Microsoft Entra, any by discovery URL)")
    osub = oidc.add_subparsers(dest="oidc_command", required=True, parser_class=parser_class)
    s = osub.add_parser("set", help="set an org's provider (JSON as the API takes)")
    common(s)
    s.add_argument("org", help="the org's slug")
    s.add_argument("--settings", required=True,
                   help="a JSON file, or - for standard input (keeps the secret off argv)")
    show = osub.add_parser("show", help="print an org's provider settings (no secret)")
    common(show)
    show.add_argument("org", help="the org's slug")
    rm = osub.add_parser("remove", help="remove an org's provider")
    common(rm)
    rm.add_argument("org", help="the org's slug")
    em = osub.add_parser("email", help="link a pre-created account to its school email")
    common(em)
    em.add_argument("username", help="the account, made with `classguard user add`")
    em.add_argument("email", help="its school email, as the provider vouches for it")


async def run(args: argparse.Namespace, settings: Settings, services: Any,
              actor: str) -> int:
    """``services``: the CLI's (staff store, auditor) context (gateway/cli.py)."""
    from .oidc import OidcStore, parse_settings

    box = await asyncio.to_thread(SecretBox.load_or_create,
                                  Path(settings.data_dir) / "keys" / "secretbox.key")
    async with services as (staff, auditor):
        r: aioredis.Redis = staff.redis_client
        store = OidcStore(r, box, prefix=settings.redis_prefix)
        try:
            if args.oidc_command == "set":
                raw = sys.stdin.read() if args.settings == "-" else await asyncio.to_thread(
                    Path(args.settings).read_text, encoding="utf-8")
                if await staff.get_org(args.org) is None:
                    raise StaffError("unknown_org", f"org {args.org!r} does not exist", "org")
                oidc, secret = parse_settings(args.org, json.loads(raw))
                async with auditor.intended("org.oidc_set", actor=actor, org=args.org,
                                            facts={"provider": oidc.provider,
                                                   "auto_provision": oidc.auto_provision,
                                                   "passwords": oidc.passwords,
                                                   "via": "cli"}):
                    await store.save(oidc, secret)
                print(json.dumps(oidc.public(), indent=2, ensure_ascii=False))
                return 0
            if args.oidc_command == "show":
                found = await store.get(args.org)
                if found is None:
                    raise StaffError("not_found", "this org has no OpenID provider", "org")
                print(json.dumps(found.public(), indent=2, ensure_ascii=False))
                return 0
            if args.oidc_command == "remove":
                async with auditor.intended("org.oidc_removed", actor=actor, org=args.org,
                                            facts={"via": "cli"}):
                    if not await store.delete(args.org):
                        raise StaffError("not_found", "this org has no OpenID provider", "org")
                print(f"{args.org}: OpenID provider removed")
                return 0
            user = await staff.get_user(args.username)
            if user is None:
                raise StaffError("not_found", f"user {args.username!r} not found", "username")
            await store.set_email(user.username, args.email)
            await auditor.record("staff.oidc_email_set", actor=actor, org=user.org,
                                 subject=f"user:{user.username}",
                                 personal={"email": args.email.strip().lower()})
            print(f"{user.username} signs in as {args.email.strip().lower()}")
            return 0
        except (StaffError, ValueError, OSError) as exc:
            message = exc.message if isinstance(exc, StaffError) else str(exc)
            print(f"classguard: error: {message}", file=sys.stderr)
            return 2
