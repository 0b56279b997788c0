"""``classguard audit verify|tail|checkpoint|search|erase``."""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from audit import AuditLog, AuditQuery, AuditSigningKey, LegalHoldError, QueryError, verify_log

from .auditing import Auditor
from .config import Settings


def audit_key(settings: Settings) -> AuditSigningKey:
    return AuditSigningKey.load_or_create(
        Path(settings.data_dir) / "keys" / "audit.key", settings.audit_origin
    )


def cli_actor() -> str:
    """Who runs the command: the operating-system account on this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


async def record_read(log: AuditLog, command: str) -> None:
    """Reading the log is itself an event, from the command line too (docs/audit.md). The
    record is durable in the stream at once; a running gateway's sequencer indexes it."""
    await Auditor(log).record(f"audit.{command}", actor=cli_actor(), facts={"via": "cli"})


def _fail(message: str) -> int:
    print(f"classguard: error: {message}", file=sys.stderr)
    return 2


async def search_command(log: AuditLog, search: dict[str, Any]) -> int:
    """``classguard audit search``: every parameter's shape checked first (exit 2 naming
    the option, nothing read or recorded); the search is recorded as ``audit.read``
    with the student and address searched for in its erasable personal part."""
    try:
        q = AuditQuery.from_params(search)
    except QueryError as exc:
        return _fail(f"--{exc.field}: {exc.message}")
    limit, cursor = search.get("limit", 50), search.get("cursor")
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        return _fail("--limit: must be 1-1000")
    if cursor is not None and (not cursor.isdigit() or len(cursor) > 15):
        return _fail("--cursor: must be the cursor printed by the previous page")
    events, next_cursor = await log.query(q, limit=limit, cursor=cursor,
                                          disclose_personal=True)
    facts, personal = q.read_record()
    await Auditor(log).record("audit.read", actor=cli_actor(),
                              facts={**facts, "via": "cli", "returned": len(events)},
                              personal=personal or None)
    for ev in events:
        print(json.dumps(ev.to_json(), ensure_ascii=False))
    if next_cursor is not None:
        print(f"next page: --cursor {next_cursor}", file=sys.stderr)
    return 0


async def run_audit_command(command: str, settings: Settings, url: str, *,
                            search: dict[str, Any] | None = None) -> int:
    client = aioredis.Redis.from_url(url, decode_responses=False)
    try:
        log = AuditLog(client, prefix=settings.redis_prefix, node_id=settings.node_id,
                       clock=lambda: int(time.time() * 1000))
        if command == "search":
            return await search_command(log, search or {})
        if command in ("verify", "tail"):
            await record_read(log, command)
        if command == "checkpoint":
            cp = await log.latest_checkpoint()
            if cp is None:
                print("classguard: error: no checkpoint yet (is a gateway running?)",
                      file=sys.stderr)
                return 1
            sys.stdout.write(cp)
            return 0
        if command == "verify":
            key = await asyncio.to_thread(audit_key, settings)
            report = await verify_log(client, settings.redis_prefix, key.verifier(),
                                      origin=settings.audit_origin)
            print(json.dumps(report.to_json(), ensure_ascii=False))
            if report.ok:
                print(f"OK: {report.size} records, {report.checkpoints_checked} checkpoints "
                      f"verified", file=sys.stderr)
                return 0
            print(f"FAULT at index {report.first_bad_index}: {report.fault}: {report.message}",
                  file=sys.stderr)
            return 1
        if command == "tail":
            async for ev in log.tail():
                print(json.dumps(ev.to_json(), ensure_ascii=False), flush=True)
            return 0
        print(f"classguard: error: unknown audit command {command}", file=sys.stderr)
        return 2
    finally:
        await client.aclose()


async def run_erase(settings: Settings, url: str, *, student: str | None,
                    indexes: list[int], reason: str) -> int:
    """``classguard audit erase``: an erasure order from the operator's shell, recorded
    like the API's; refused (exit 1, naming the incidents) under legal hold."""
    from .erasure import erase_order

    client = aioredis.Redis.from_url(url, decode_responses=False)
    try:
        log = AuditLog(client, prefix=settings.redis_prefix, node_id=settings.node_id,
                       clock=lambda: int(time.time() * 1000))
        try:
            res = await erase_order(log, Auditor(log), client, settings.redis_prefix,
                                    actor=cli_actor(), org=None, student=student,
                                    indexes=indexes, reason=reason)
        except LegalHoldError as exc:
            print(f"classguard: error: refused: {exc.message}", file=sys.stderr)
            return 1
        print(f"erased the personal data of {res.erased} of {res.asked} records; run "
              "BGREWRITEAOF on Redis so the old bytes leave its append-only file too")
        return 0
    finally:
        await client.aclose()
