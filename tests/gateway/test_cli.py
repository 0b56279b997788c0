"""The command line as an operator uses it: init, demo, keys, argument errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.i18n import catalogue

from .test_cli_e2e import free_port

CLI = [sys.executable, "-m", "gateway.cli"]


def _env(tmp_path: Path, redis_prefix: str) -> dict[str, str]:
    env = dict(os.environ, CLASSGUARD_DATA_DIR=str(tmp_path / "data"),
               CLASSGUARD_REDIS_PREFIX=redis_prefix)
    env.pop("CLASSGUARD_REDIS_URL", None)
    env.pop("REDIS_URL", None)
    return env


def test_wrong_arguments_exit_2_with_one_line(tmp_path: Path, redis_prefix: str) -> None:
    for args in (["serve", "--port", "abc"], ["user", "add", "x", "--role", "king", "--org", "o"],
                 ["frobnicate"], ["serve", "--config", str(tmp_path / "missing.toml")]):
        res = subprocess.run(CLI + args, env=_env(tmp_path, redis_prefix), capture_output=True,
                             text=True, timeout=60, check=False)
        assert res.returncode == 2, (args, res.stderr)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("classguard: error:"), res.stderr
        assert "Traceback" not in res.stderr
    res = subprocess.run(CLI + ["--help"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0 and "serve" in res.stdout and "demo" in res.stdout


def test_init_and_keys(tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    env = _env(tmp_path, redis_prefix)
    res = subprocess.run(CLI + ["init", "--redis-url", redis_url], env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert re.search(r"one-time password: \S{12,}", res.stdout)
    keys = tmp_path / "data" / "keys"
    for f in (keys / "secretbox.key", keys / "audit.key"):
        assert f.stat().st_mode & 0o077 == 0, f
    listed = subprocess.run(CLI + ["keys", "list"], env=env, capture_output=True, text=True,
                            timeout=60, check=True).stdout.splitlines()
    before = [json.loads(x)["kid"] for x in listed]
    out = subprocess.run(CLI + ["keys", "rotate", "--redis-url", redis_url], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    after = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert len(after) == 2 and {k["kid"] for k in after} >= set(before)
    assert sorted(k["state"] for k in after) == ["active", "retired"]
    # the rotation's intent is in the log before the rotation, and its outcome names it
    entries = [json.loads(fields[b"d"].split(b"\n", 1)[0])
               for _id, fields in redis_bytes_xrange(redis_url, f"{redis_prefix}audit:stream")]
    [intent] = [e for e in entries if e["type"] == "intent"
                and e["facts"]["action"] == "keys.rotated"]
    [rotated] = [e for e in entries if e["type"] == "keys.rotated"]
    assert rotated["facts"]["intent"] == intent["facts"]["intent"]
    assert entries.index(intent) < entries.index(rotated)
    active = next(k["kid"] for k in after if k["state"] == "active")
    assert rotated["facts"]["kid"] == active and rotated["facts"]["via"] == "cli"
    # broken key files: one line naming the problem, no traceback
    (keys / "join" / "keyring.json").write_text("{not json")
    res = subprocess.run(CLI + ["keys", "rotate"], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 2 and res.stderr.startswith("classguard: error: "), res.stderr
    assert "Traceback" not in res.stderr


def redis_bytes_xrange(url: str, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(url)
    try:
        return client.xrange(key)  # type: ignore[return-value]
    finally:
        client.close()


def test_demo_prints_teacher_and_five_links(tmp_path: Path) -> None:
    """`classguard demo` on the embedded Redis: no Redis URL, no configuration."""
    port = free_port()
    env = dict(os.environ, CLASSGUARD_DATA_DIR=str(tmp_path / "data"),
               CLASSGUARD_COOKIE_SECURE="false")
    for k in ("CLASSGUARD_REDIS_URL", "REDIS_URL", "CLASSGUARD_REDIS_PREFIX"):
        env.pop(k, None)
    log = tmp_path / "demo.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(CLI + ["demo", "--port", str(port)], env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            text = ""
            while time.monotonic() < deadline:
                text = log.read_text()
                if len(re.findall(r"/j/\S+", text)) >= 5:
                    break
                assert proc.poll() is None, text
                time.sleep(0.2)
            links = re.findall(r"(http://\S+/j/\S+)", text)
            assert len(links) == 5, text
            assert re.search(r"user: teacher\s+password: \S+", text), text
            assert re.search(r"[0-9A-Z]{5}-[0-9A-Z]{5}", text)

            async def student() -> int:
                async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                    r = await s.get(links[0], headers={"Accept": "application/json"})
                    return r.status

            import asyncio

            assert asyncio.run(student()) == 200

            # The demo's own class renders for its teacher (it once answered 500: the
            # demo stored its policy unresolved and the page reads every field).
            base = re.search(r"(http://\S+)/login", text).group(1)
            password = re.search(r"user: teacher\s+password: (\S+)", text).group(1)
            cid = re.search(r"/classes/(\S+)/control", text).group(1)

            async def teacher_pages() -> list[int]:
                async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                    r = await s.post(f"{base}/api/v1/session",
                                     json={"username": "teacher", "password": password})
                    assert r.status == 200, await r.text()
                    codes = []
                    for path in (f"/classes/{cid}", f"/classes/{cid}/roster",
                                 f"/classes/{cid}/links", f"/classes/{cid}/control", "/classes"):
                        page = await s.get(base + path, headers={"Accept": "text/html"})
                        assert page.url.path == path, page.url  # not sent elsewhere
                        codes.append(page.status)
                    # the printable cards: a PDF whose font subsetting once filled the log
                    pdf = await s.get(f"{base}/api/v1/classes/{cid}/links.pdf")
                    codes.append(pdf.status)
                    assert (await pdf.read()).startswith(b"%PDF")
                    return codes

            assert asyncio.run(teacher_pages()) == [200] * 6
            assert "fontTools" not in log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert proc.returncode == 0


def test_catalogues_are_complete() -> None:
    vi, en = catalogue("vi"), catalogue("en")
    assert set(vi) == set(en)
    assert all(v.strip() for v in vi.values()) and all(v.strip() for v in en.values())
    from policies import Reason

    for reason in Reason:
        assert f"reason.{reason.value}" in vi, reason


async def test_audit_verify_checkpoint_tail_and_tampering(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    """``classguard audit`` on a log a running gateway wrote: checkpoint, verify (OK,
    then the first bad index after an edit in Redis), tail; each read is an event."""
    import asyncio

    import rfc8785

    from audit import AuditQuery

    from .helpers import make_class, open_link, running_gateway

    env = _env(tmp_path, redis_prefix)
    env["CLASSGUARD_REDIS_URL"] = redis_url
    env["CLASSGUARD_PUBLIC_URL"] = "http://classguard.test"  # as running_gateway (the origin)

    def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(CLI + ["audit", *args], env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        _, links = await make_class(gw, api)
        for link in links:
            await open_link(gw.client(), link)
        log = gw.svc.audit_log
        assert log is not None
        for _ in range(100):
            if (cp := await log.latest_checkpoint()) and int(cp.split("\n")[1]) >= 5:
                break
            await asyncio.sleep(0.05)

        res = await asyncio.to_thread(cli, "checkpoint")
        assert res.returncode == 0 and res.stdout.startswith(gw.svc.settings.audit_origin)
        res = await asyncio.to_thread(cli, "verify")
        assert res.returncode == 0, res.stderr
        assert res.stderr.startswith("OK: ") and json.loads(res.stdout)["ok"] is True

        # tail follows: an event appended while it runs is printed. A link shaped like a
        # token (recorded one event each) is opened until tail shows one: the wait is for
        # the condition, not a time, however slowly the command starts.
        out_path, err_path = tmp_path / "tail.out", tmp_path / "tail.err"
        with out_path.open("w") as out_fh, err_path.open("w") as err_fh:
            tail = await asyncio.to_thread(subprocess.Popen, CLI + ["audit", "tail"], env=env,
                                           stdout=out_fh, stderr=err_fh, text=True)

        def printed() -> list[dict[str, Any]]:
            return [json.loads(x) for x in out_path.read_text().splitlines()
                    if x.startswith("{") and x.endswith("}")]

        def follows() -> bool:
            # tail starts at the log's end, so anything printed was appended meanwhile
            return any(e["type"] == "join" and e["reason"] == "token_invalid"
                       for e in printed())

        try:
            deadline = asyncio.get_running_loop().time() + 60
            while not follows() and asyncio.get_running_loop().time() < deadline:
                await open_link(gw.client(), {"url": "http://x/j/eyJhbGciOiJub25lIn0.e30.x"})
                await asyncio.sleep(0.5)
        finally:
            tail.send_signal(signal.SIGINT)
            await asyncio.to_thread(tail.wait, timeout=20)
        err = err_path.read_text()
        assert "Traceback" not in err, err
        assert follows(), out_path.read_text()[-2000:]
        assert all("personal" not in e for e in printed())  # tail shows no personal data

        # the command-line reads are in the log, with who ran them
        events: list[dict[str, object]] = []
        for _ in range(100):
            page, _cursor = await log.query(AuditQuery(), limit=500)
            events = [dict(ev.record) for ev in page]
            if {"audit.verify", "audit.tail"} <= {e["type"] for e in events}:
                break
            await asyncio.sleep(0.05)
        reads = [e for e in events if e["type"] in ("audit.verify", "audit.tail")]
        assert {e["type"] for e in reads} == {"audit.verify", "audit.tail"}
        assert all(str(e["actor"]).startswith("cli:") for e in reads)

        # an edited record: verify exits 1 and names the index
        key = f"{redis_prefix}audit:rec"
        rec = json.loads(await redis.hget(key, "2"))
        rec["reason"] = "admitted_by_host"
        await redis.hset(key, "2", rfc8785.dumps(rec))
        res = await asyncio.to_thread(cli, "verify")
        assert res.returncode == 1 and "FAULT at index 2" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
