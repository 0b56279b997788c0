"""Filling the audit log (and with it Redis) without signing in, hiding records from IT
behind noise, writing free text into permanent records, and filling Redis itself.

* ``GET /go/<anything>`` and refused sign-ins are audited per source, reason and window
  in aggregate (the 1st, 10th, 100th... with the count), and rate-limited per address.
* Searches by type and reason walk an index kept by the sequencer, so no amount of
  other records between two matches hides them.
* Search parameters must have the shape of what they name (400 naming the parameter);
  what is personal in them goes to the erasable part of the ``audit.read`` record.
* The embedded Redis has a ``maxmemory`` with ``noeviction``: operators are warned at
  80% (``/readyz``, the metric), and a full Redis refuses writes so the gateway answers
  503 (``storage_full``) and admits nobody, never evicting state or audit records.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from audit import AuditLog

from .conftest import CLI, _free_port, _wait_ready
from .kit import JSON, Deployment, scene

NOISE = 25_000  # more than the 20,000 records a search page used to scan


def _milestones(events: list[dict[str, Any]]) -> list[int]:
    return sorted(int(e["facts"]["count"]) for e in events)


async def test_go_flood_is_aggregated_and_rate_limited(deployment: Deployment) -> None:
    """150 requests for ``/go/<random>`` from one machine: refused (404), then 429 with
    Retry-After once the address's refusal budget is spent; the log holds one record
    per reason and order of magnitude (1st, 10th, 100th), each with its count."""
    async with scene(deployment) as s:
        d = s.device()
        statuses = []
        for _ in range(150):
            r = await d.get(f"/go/{secrets.token_urlsafe(12)}", headers=JSON)
            statuses.append(r.status)
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1
        # the address's failure budget (burst 20, see THREAT_MODEL.md section 13)
        assert set(statuses) <= {404, 429} and statuses[:20] == [404] * 20, statuses
        assert 429 in statuses, "refusals at /go are not rate-limited"
        refused = statuses.count(404)
        events = await s.await_audit(lambda ev: len(ev) >= 2, reader="qt.hoa",
                                     type="go.refused", ip=d.ip)
        limited = await s.await_audit(lambda ev: len(ev) >= 3, reader="qt.hoa",
                                      type="join", reason="rate_limited", ip=d.ip)
        await asyncio.sleep(1)  # anything more would have been sequenced by now
        events = await s.audit(reader="qt.hoa", type="go.refused", ip=d.ip)
        limited = await s.audit(reader="qt.hoa", type="join", reason="rate_limited", ip=d.ip)
        assert _milestones(events) == [m for m in (1, 10, 100) if m <= refused], \
            [e.get("facts") for e in events]
        assert {e["reason"] for e in events} == {"unknown"}
        assert all(e["facts"]["window_s"] == 60 and e["facts"]["first_at"] > 0
                   for e in events + limited)
        # the 429s: one record per order of magnitude too, marked as /go's
        assert _milestones(limited) == [1, 10, 100], [e.get("facts") for e in limited]
        assert {e["facts"]["via"] for e in limited} == {"go"}
        assert not d.entered


async def test_sign_in_flood_is_aggregated_and_rate_limited(deployment: Deployment) -> None:
    """130 wrong passwords from one machine: refused, regulated, then rate-limited per
    address; the log holds a handful of counted records instead of 130."""
    async with scene(deployment) as s:
        d = s.device()
        statuses = []
        for i in range(130):
            r = await d.post("/api/v1/session",
                             json={"username": "nobody.here", "password": f"guess {i}"})
            statuses.append(r.status)
        assert set(statuses) <= {401, 429} and statuses[0] == 401, statuses
        events = await s.await_audit(
            lambda ev: "rate_limited" in {e["reason"] for e in ev}, reader="qt.hoa",
            type="staff.login_failed", ip=d.ip)
        await asyncio.sleep(1)
        events = await s.audit(reader="qt.hoa", type="staff.login_failed", ip=d.ip)
        assert len(events) <= 8, [(e["reason"], e["facts"]) for e in events]
        # the counts still tell how large the attack was
        assert max(_milestones(events)) >= 10, [(e["reason"], e["facts"]) for e in events]
        assert {e["personal"]["username"] for e in events} == {"nobody.here"}


async def test_search_finds_records_behind_noise(deployment: Deployment) -> None:
    """One refusal, then 25,000 other records (what an unaggregated flood used to leave):
    IT searching by type or by reason still finds the refusal on the first page."""
    async with scene(deployment) as s:
        d = s.device()
        assert (await d.get("/go/behind-the-noise", headers=JSON)).status == 404
        await s.await_audit(lambda ev: len(ev) == 1, reader="qt.hoa", type="go.refused",
                            ip=d.ip)
        client = aioredis.Redis.from_url(deployment.redis_url, decode_responses=False)
        try:
            log = AuditLog(client, prefix=deployment.redis_prefix, node_id="flood",
                           clock=lambda: int(time.time() * 1000))
            target = await log.size() + NOISE
            for start in range(0, NOISE, 1000):
                await log.append_many([
                    ({"type": "join", "actor": "visitor", "reason": "token_invalid",
                      "facts": {"action": "deny", "n": start + i}}, {"ip": "192.0.2.7"})
                    for i in range(1000)])
            deadline = time.monotonic() + 120
            while await log.size() < target:
                assert time.monotonic() < deadline, "the sequencer did not catch up"
                await asyncio.sleep(0.2)
        finally:
            await client.aclose()
        for filters in ({"type": "go.refused"}, {"reason": "unknown"},
                        {"type": "go.refused", "reason": "unknown"}):
            r = await s.admin.call("GET", "/api/v1/audit/events",
                                   params={**filters, "limit": "5"})
            assert r.status == 200, r
            found = r.body["events"]
            assert found and found[0]["personal"]["ip"] == d.ip, (filters, found[:1],
                                                                 r.body["next_cursor"])


async def test_search_parameters_are_shaped_and_personal_data_stays_erasable(
        deployment: Deployment) -> None:
    """Free text in search parameters (a name and a phone number as a "student", 3,051
    characters) is refused with 400 naming the parameter and stored nowhere; a valid
    search's student and address go to the erasable part of its ``audit.read`` record."""
    async with scene(deployment) as s:
        it = s.it
        free = ("Nguyễn Văn An 0912 345 678 " * 120)[:3051]
        for name, value in (("student", free), ("class", free), ("type", free),
                            ("reason", "Nguyễn Văn An"), ("ip", "0912345678"),
                            ("since", "x" * 200), ("until", "yesterday")):
            r = await it.call("GET", "/api/v1/audit/events", params={name: value})
            assert r.status == 400, (name, r)
            assert r.body["error"]["field"] == name, (name, r.body)
            assert r.body["error"]["code"] == "invalid_field"
            assert "Nguy" not in r.body["error"]["message"]
        r = await it.call("GET", "/api/v1/audit/events",
                          params={"student": "sq2x7k9m4n8p3", "ip": "198.51.100.23",
                                  "type": "join", "limit": "5"})
        assert r.status == 200, r
        reads = await s.await_audit(
            lambda ev: any(e.get("personal", {}).get("query_student") == "sq2x7k9m4n8p3"
                           for e in ev), type="audit.read")
        mine = next(e for e in reads
                    if e.get("personal", {}).get("query_student") == "sq2x7k9m4n8p3")
        assert mine["personal"]["query_ip"] == "198.51.100.23"
        permanent = {k: v for k, v in mine.items() if k != "personal"}
        assert "sq2x7k9m4n8p3" not in repr(permanent)
        assert "198.51.100.23" not in repr(permanent)
        assert mine["facts"]["type"] == "join" and mine["facts"]["returned"] >= 0
        # and nothing of the refused searches reached the log at all
        everything = await s.audit(type="audit.read")
        # (the phone number as it was typed, spaced or not: a bare "0912" also turns up in
        # millisecond timestamps and hex ids now and then)
        assert not any("Nguy" in repr(e) or "0912 345" in repr(e) or "0912345678" in repr(e)
                       for e in everything)


def _cli(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"CLASSGUARD_DATA_DIR": str(dep.data_dir), "CLASSGUARD_REDIS_URL": dep.redis_url,
                "CLASSGUARD_REDIS_PREFIX": dep.redis_prefix})
    return subprocess.run([*CLI, "audit", "search", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


async def test_cli_search_checks_parameters_and_keeps_personal_data_erasable(
        deployment: Deployment) -> None:
    """``classguard audit search`` refuses free text with a one-line error naming the
    option (exit 2, nothing recorded); a valid search prints events and is recorded with
    the student and address searched for in the erasable part."""
    free = "Nguyễn Văn An 0912 345 678"
    for option in ("--student", "--type", "--ip", "--since"):
        res = await asyncio.to_thread(_cli, deployment, option, free)
        assert res.returncode == 2, (option, res.stdout, res.stderr)
        assert f"error: {option}:" in res.stderr and "Nguy" not in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    res = await asyncio.to_thread(_cli, deployment, "--student", "sq2x7k9m4n8p4", "--ip",
                                  "198.51.100.24", "--type", "join", "--limit", "3")
    assert res.returncode == 0, res.stderr
    async with scene(deployment) as s:
        reads = await s.await_audit(
            lambda ev: any(e.get("personal", {}).get("query_ip") == "198.51.100.24"
                           for e in ev), reader="qt.hoa", type="audit.read")
        mine = next(e for e in reads if e.get("personal", {}).get("query_ip") == "198.51.100.24")
        assert mine["facts"]["via"] == "cli" and mine["facts"]["type"] == "join"
        assert mine["personal"]["query_student"] == "sq2x7k9m4n8p4"
        assert "198.51.100.24" not in repr({k: v for k, v in mine.items() if k != "personal"})
        assert not any("Nguy" in repr(e) for e in reads)


# --- the embedded Redis full ---------------------------------------------------------

MAXMEMORY = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``classguard serve`` with its embedded Redis capped at 64 MiB (the minimum)."""
    tmp = tmp_path_factory.mktemp("attack-full-redis")
    port = _free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "CLASSGUARD_REDIS_URL")}
    env.update({"CLASSGUARD_DATA_DIR": str(tmp / "data"), "CLASSGUARD_COOKIE_SECURE": "false",
                "CLASSGUARD_LOG_LEVEL": "warning",
                "CLASSGUARD_EMBEDDED_REDIS_MAXMEMORY_BYTES": str(MAXMEMORY)})
    log = tmp / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=fh, stderr=subprocess.STDOUT)
        try:
            _wait_ready(proc, port, log)
            yield f"http://127.0.0.1:{port}", tmp / "data" / "redis" / "redis.sock"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _used(r: sync_redis.Redis) -> tuple[int, int]:
    info = r.info("memory")
    return int(info["used_memory"]), int(info["maxmemory"])


async def test_full_embedded_redis_warns_then_fails_closed(
        embedded: tuple[str, Path]) -> None:
    """Redis filled (by a flood, say) to 85% of its maxmemory: ``/readyz`` and the
    metric warn while everything still works. Filled to the limit: writes are refused,
    so the gateway answers 503 ``storage_full`` and ``/readyz`` is not ready, and
    nothing stored before was evicted."""
    base, sock = embedded
    r = sync_redis.Redis(unix_socket_path=str(sock))
    try:
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] in (
            "noeviction", b"noeviction")
        used, cap = _used(r)
        assert cap == MAXMEMORY, "the embedded Redis has no memory cap"
        chunk = b"x" * (512 * 1024)
        n = 0
        assert used < cap // 2
        while _used(r)[0] < 0.85 * cap:
            r.set(f"flood:{n}", chunk)
            n += 1
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/readyz") as resp:
                body = await resp.json()
                assert resp.status == 200, body
                mem = body["components"]["redis_memory"]
                assert mem["used_ratio"] >= 0.8 and "warning" in mem, mem
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
                ratio = next(float(line.split()[-1]) for line in text.splitlines()
                             if line.startswith("classguard_redis_memory_used_ratio "))
                assert ratio >= 0.8
            # Up to the limit, in ever smaller pieces (a refused write's own bytes are
            # freed at once, so the big pieces alone stop short of the limit).
            for size in (512 * 1024, 4096, 64):
                with pytest.raises(sync_redis.exceptions.OutOfMemoryError):
                    for _ in range(100_000):
                        r.set(f"flood:{n}", b"x" * size)
                        n += 1
            for method, path, kw in (("GET", "/j/not-a-token", {}),
                                     ("POST", "/join", {"json": {"code": "ABCD-EFGH-JKLM"}})):
                statuses = []
                for _ in range(10):  # the gateway's own first writes may still fit
                    async with http.request(method, f"{base}{path}", headers=JSON,
                                            **kw) as resp:
                        body = await resp.json()
                        statuses.append((resp.status, body.get("error", {}).get("code")))
                    if statuses[-1][0] == 503:
                        break
                assert statuses[-1] == (503, "storage_full"), (path, statuses)
                assert all(st < 500 or st == 503 for st, _ in statuses), statuses
            async with http.get(f"{base}/readyz") as resp:
                body = await resp.json()
                assert resp.status == 503, body
                assert body["components"]["redis_memory"]["ok"] is False
        assert r.exists("flood:0") == 1  # noeviction: nothing was thrown away
    finally:
        r.close()


def test_maxmemory_is_a_validated_setting() -> None:
    from gateway.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="embedded_redis_maxmemory_bytes"):
        load_settings({}, {"CLASSGUARD_EMBEDDED_REDIS_MAXMEMORY_BYTES": "1000"}, None)
    with pytest.raises(ConfigError, match="redis_memory_alert_percent"):
        load_settings({}, {"CLASSGUARD_REDIS_MEMORY_ALERT_PERCENT": "100"}, None)
