"""Staff API, bad input, probes and fail-closed behaviour against a running gateway."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from .helpers import (
    ROSTER,
    TEACHER_PASSWORD,
    audit_events,
    class_body,
    make_class,
    open_link,
    running_gateway,
    token_of,
)


def to_cp1258(text: str) -> bytes:
    """Encode as Windows-1258 does: base letters (with circumflex, breve, horn) plus a
    separate combining tone mark."""
    import unicodedata

    out = b""
    for ch in unicodedata.normalize("NFC", text):
        try:
            out += ch.encode("cp1258")
            continue
        except UnicodeEncodeError:
            pass
        parts = unicodedata.normalize("NFD", ch)
        base = unicodedata.normalize("NFC", parts[:2]) if len(parts) > 2 else parts[0]
        rest = parts[2:] if len(parts) > 2 else parts[1:]
        out += base.encode("cp1258") + rest.encode("cp1258")
    return out


def _b64(d: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def _claims(link: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    tok = token_of(link)
    return jwt.get_unverified_header(tok), jwt.decode(tok, options={"verify_signature": False})


async def test_forged_tokens_are_refused(tmp_path: Path, redis_url: str, redis_prefix: str,
                                         redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        header, claims = _claims(links[0])
        ring = gw.svc.keyring
        assert ring is not None
        pub_pem = ring.public_key(str(header["kid"])).public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        other_key = Ed25519PrivateKey.generate()
        now = int(time.time())
        forged = {
            "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': header['kid']})}."
                        f"{_b64(claims)}.",
            "hs256_with_public_key": f"{_b64({'alg': 'HS256', 'kid': header['kid']})}."
                                     f"{_b64(claims)}."
                                     + base64.urlsafe_b64encode(
                                         __import__('hmac').new(pub_pem, b"x", "sha256").digest()
                                     ).rstrip(b"=").decode(),
            "unknown_kid": jwt.encode(claims, other_key, algorithm="EdDSA",
                                      headers={"kid": "nope"}),
            "another_gateways_key": jwt.encode(claims, other_key, algorithm="EdDSA",
                                               headers={"kid": header["kid"]}),
            "tampered_sub": ".".join([token_of(links[0]).split(".")[0],
                                      _b64({**claims, "sub": links[1]["student_id"]}),
                                      token_of(links[0]).split(".")[2]]),
            "garbage": "not-a-token",
        }
        # A correctly signed but expired token (signed with the real key) is refused too.
        expired = dict(claims, exp=now - 3600, nbf=now - 7200)
        forged["expired"] = jwt.encode(expired, ring.signing_key().private_key,  # type: ignore[attr-defined]
                                       algorithm="EdDSA", headers={"kid": header["kid"]})
        expected = {"expired": "token_expired"}
        for name, tok in forged.items():
            r = await gw.client().get(f"/j/{tok}", headers={"Accept": "application/json"})
            body = await r.json()
            assert r.status == 403, (name, body)
            assert body["status"] == "denied"
            assert body["reason"] in (expected.get(name, "token_invalid"), "token_revoked"), name
            assert "redirect" not in body
        # every refusal is in the audit stream with its reason
        st = await (await api.get(f"/api/v1/classes/{cid}/state")).json()
        assert st["waiting"] == [] and st["admitted"] == []


async def test_bad_rosters(tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        r = await api.post("/api/v1/classes", json=class_body())
        cid = (await r.json())["id"]
        csv = ("Họ và tên,Mã học sinh\n"
               "Nguyễn Văn An,HS001\n"
               "=HYPERLINK(\"http://evil\",\"x\"),HS002\n"
               "<script>alert(1)</script>,HS003\n"
               "\n"
               "Nguyễn Văn An,HS001\n"
               "Trần Thị Bình,HS004\n")
        r = await api.put(f"/api/v1/classes/{cid}/roster", data=csv.encode("utf-8-sig"),
                          headers={"Content-Type": "text/csv"})
        assert r.status == 200, await r.text()
        body = await r.json()
        assert [s["name"] for s in body["students"]] == ["Nguyễn Văn An", "Trần Thị Bình"]
        errors = {rej["line"]: rej["error"] for rej in body["rejected"]}
        assert errors[3] == "formula" and errors[4] == "invalid_characters"
        assert errors[6] == "duplicate"
        # Windows-1258 with decomposed Vietnamese is NFC-normalised
        cp = to_cp1258("Lê Hoàng Cường,HS010\n")
        r = await api.put(f"/api/v1/classes/{cid}/roster", data=cp,
                          headers={"Content-Type": "text/csv"})
        assert r.status == 200
        assert (await r.json())["students"][0]["name"] == "Lê Hoàng Cường"
        # 10 MB: refused before parsing, nothing stored
        big = b"Nguyen Van A,HS1\n" * (10 * 1024 * 1024 // 17 + 1)
        r = await api.put(f"/api/v1/classes/{cid}/roster", data=io.BytesIO(big),
                          headers={"Content-Type": "text/csv"})
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "too_large"
        # unusable file: 400 and the previous roster is intact
        r = await api.put(f"/api/v1/classes/{cid}/roster", data=b"\x00\xff\xfe garbage \x00",
                          headers={"Content-Type": "text/csv"})
        assert r.status == 400
        assert (await r.json())["error"]["code"].startswith("roster_")
        r = await api.get(f"/api/v1/classes/{cid}/roster")
        assert [s["name"] for s in (await r.json())["students"]] == ["Lê Hoàng Cường"]


async def test_bad_class_bodies(tmp_path: Path, redis_url: str, redis_prefix: str,
                                redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cases = [
            ({**class_body(), "extra": 1}, 400, "extra"),
            ({**class_body(), "policy": {"preset": "lax"}}, 400, "policy.preset"),
            ({**class_body(), "platform": {"kind": "skype"}}, 400, "platform.kind"),
            ({**class_body(), "platform": {"kind": "generic", "url": "javascript:alert(1)"}}, 400,
             "platform.url"),
            ({**class_body(), "schedule": {"starts_at": "2026-11-23T07:30:00",
                                           "ends_at": "2026-11-23T09:00:00+07:00"}}, 400,
             "schedule.starts_at"),
        ]
        for body, status, field in cases:
            r = await api.post("/api/v1/classes", json=body)
            data = await r.json()
            assert r.status == status, (body, data)
            assert data["error"]["field"] == field, data
            assert "Traceback" not in json.dumps(data)
        nested = "[" * 5000 + "]" * 5000
        r = await api.post("/api/v1/classes", data=nested,
                           headers={"Content-Type": "application/json"})
        assert r.status == 400 and (await r.json())["error"]["code"] == "too_deep"
        r = await api.post("/api/v1/classes",
                           data=io.BytesIO(b"{" + b" " * (2 * 1024 * 1024) + b"}"),
                           headers={"Content-Type": "application/json"})
        assert r.status == 413
        r = await api.post("/api/v1/classes", data="{not json",
                           headers={"Content-Type": "application/json"})
        assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"
        r = await api.get("/api/v1/nothing-here")
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_cookie_session_csrf_and_login_regulation(
    tmp_path: Path, redis_url: str, redis_prefix: str, redis
) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        await gw.staff_user("co.lan")
        browser = gw.client()
        r = await browser.post("/api/v1/session",
                               json={"username": "co.lan", "password": TEACHER_PASSWORD})
        assert r.status == 200
        body = await r.json()
        csrf = body["csrf_token"]
        assert body["user"]["role"] == "teacher"
        cookie = r.cookies["cg_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        r = await browser.post("/api/v1/classes", json=class_body())
        assert r.status == 403 and (await r.json())["error"]["code"] == "csrf_failed"
        r = await browser.post("/api/v1/classes", json=class_body(),
                               headers={"X-CSRF-Token": csrf})
        assert r.status == 201
        r = await browser.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})
        assert r.status == 204
        r = await browser.get("/api/v1/classes")
        assert r.status == 401
        # same answer for unknown user and wrong password; then regulated with Retry-After
        attacker = gw.client()
        r1 = await attacker.post("/api/v1/session", json={"username": "nobody", "password": "x"})
        r2 = await attacker.post("/api/v1/session", json={"username": "co.lan", "password": "x"})
        assert r1.status == r2.status == 401
        assert (await r1.json()) == (await r2.json())
        await attacker.post("/api/v1/session", json={"username": "co.lan", "password": "y"})
        r = await attacker.post("/api/v1/session",
                                json={"username": "co.lan", "password": TEACHER_PASSWORD})
        assert r.status == 429 and int(r.headers["Retry-After"]) > 0


async def test_probes_metrics_jwks(tmp_path: Path, redis_url: str, redis_prefix: str,
                                   redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        c = gw.client()
        assert (await c.get("/healthz")).status == 200
        r = await c.get("/readyz")
        ready = await r.json()
        assert r.status == 200 and ready["components"]["redis"]["ok"]
        assert set(ready["components"]) >= {"redis", "keys", "pubsub", "sequencer"}
        assert ready["components"]["sequencer"]["ok"]
        # the sequencer task stopping makes the process not ready, naming it
        task = gw.svc.sequencer_task
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        r = await c.get("/readyz")
        assert r.status == 503 and "sequencer" in (await r.json())["error"]["message"]
        jwks = await (await c.get("/.well-known/jwks.json")).json()
        assert jwks["keys"][0]["kty"] == "OKP" and jwks["keys"][0]["crv"] == "Ed25519"
        assert "d" not in jwks["keys"][0]
        api = gw.api(await gw.staff_user("co.lan"))
        _, links = await make_class(gw, api)
        await open_link(gw.client(), links[0])
        text = await (await c.get("/metrics")).text()
        assert 'classguard_join_attempts_total{action="wait",reason="awaiting_host"} 1.0' in text
        assert "classguard_request_duration_seconds_bucket" in text
        assert "classguard_open_websockets" in text and "classguard_waiting_students" in text
        r = await c.get("/j/x")
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert r.headers["Referrer-Policy"] == "no-referrer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("transport", ["multiplexed", "redis-py"])
async def test_redis_down_fails_closed(tmp_path: Path, redis_prefix: str,
                                       transport: str) -> None:
    """Redis dies mid-class: nobody gets in, the answer is a clear 503, readyz says why.
    It comes back (its scripts forgotten): the same link works again, with no restart
    of the gateway (both transports reconnect; the scripts are loaded again)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not on PATH")
    port = _free_port()
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)]

    def start() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        return p

    proc = start()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        if transport == "redis-py":  # an option only redis-py takes (gateway.redis_mux)
            url += "?health_check_interval=30"
        async with running_gateway(tmp_path, url, redis_prefix) as gw:
            assert (gw.svc.redis_fast is None) == (transport == "redis-py")
            api = gw.api(await gw.staff_user("co.lan"))
            _, links = await make_class(gw, api)
            proc.terminate()
            proc.wait(timeout=10)
            phone = gw.client()
            r = await phone.get(f"/j/{token_of(links[0])}", headers={"Accept": "application/json"})
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "dependency_unavailable"
            r = await phone.get(f"/j/{token_of(links[0])}", headers={"Accept": "text/html"})
            assert r.status == 503 and r.headers["Retry-After"] == "10"
            page = await r.text()
            # the student is told, in Vietnamese, and the page opens the link again itself
            assert "Hệ thống đang tạm gián đoạn" in page and "chưa ai được vào lớp" in page
            assert 'data-retry-s="10"' in page and '<script src="/static/retry.js">' in page
            script = await (await phone.get("/static/retry.js")).text()
            assert "location.reload()" in script
            r = await phone.get("/readyz")
            assert r.status == 503
            assert (await r.json())["components"]["redis"]["ok"] is False
            proc = await asyncio.to_thread(start)
            for _ in range(100):
                r = await phone.get(f"/j/{token_of(links[0])}",
                                    headers={"Accept": "application/json"})
                if r.status != 503:
                    break
                await asyncio.sleep(0.1)
            assert r.status == 200, await r.text()
            assert (await r.json())["status"] == "waiting"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_links_pdf_and_pages_escape_names(tmp_path: Path, redis_url: str,
                                                redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        roster = [*ROSTER, {"name": "Đặng \"Bé\" & Co'", "external_id": "HS009"}]
        cid, links = await make_class(gw, api, roster=roster)
        r = await api.get(f"/api/v1/classes/{cid}/links.pdf")
        assert r.status == 200 and r.content_type == "application/pdf"
        pdf = await r.read()
        assert pdf.startswith(b"%PDF") and len(pdf) > 2000
        phone = gw.client()
        name = next(x for x in links if x["name"].startswith("Đặng"))
        r = await phone.get(f"/j/{token_of(name)}", headers={"Accept": "text/html"})
        html = await r.text()
        assert "Đặng &#34;Bé&#34; &amp; Co&#39;" in html
        assert "<script>" not in html.split("</body>")[0].replace(
            '<script src="/static/wait.js"></script>', "")
        r = await phone.get(f"/j/{token_of(name)}?lang=en", headers={"Accept": "text/html"})
        assert "waiting room" in (await r.text())


async def test_audit_and_process_metrics(tmp_path: Path, redis_url: str, redis_prefix: str,
                                         redis) -> None:
    """The audit gauges the alerts and dashboard use carry the log's real state."""
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        _, links = await make_class(gw, api)
        await open_link(gw.client(), links[0])
        log = gw.svc.audit_log
        assert log is not None
        for _ in range(500):  # the sequencer indexes and signs everything appended
            status = await log.status()
            if status.checkpoint_size == status.size > 0 and status.pending == 0:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"the log did not settle: {status}")
        c = gw.client()
        text = await (await c.get("/metrics")).text()

        def value(name: str) -> float:
            line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
            return float(line.split()[1])

        assert value("classguard_audit_tree_size") == status.checkpoint_size > 0
        assert value("classguard_audit_pending_events") == 0
        assert value("classguard_audit_sequencer_leader") == 1
        assert 0 <= time.time() - value("classguard_audit_checkpoint_timestamp_seconds") < 60
        assert value("process_resident_memory_bytes") > 10 * 2**20
        assert "process_cpu_seconds_total" in text


async def _intent_of(reader, type_: str, **params: str) -> tuple[dict, dict]:
    """The newest ``type_`` record and the ``intent`` it confirms; the intent must come
    earlier in the log, announce ``type_`` and carry the same intent id."""
    outcome = (await audit_events(reader, type=type_, **params))[0]
    intents = await audit_events(reader, type="intent", **params)
    iid = outcome["facts"]["intent"]
    [intent] = [e for e in intents if e["facts"]["intent"] == iid]
    assert intent["facts"]["action"] == type_
    assert intent["index"] < outcome["index"], (intent, outcome)
    return intent, outcome


async def test_changes_record_their_intent_first(tmp_path: Path, redis_url: str,
                                                 redis_prefix: str, redis) -> None:
    """Class creation, roster import, policy changes and key rotation: an ``intent`` is in
    the log before the change, then the outcome names it; a rotation that fails on broken
    key files leaves ``intent.failed`` and the old key active."""
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        await gw.svc.staff.init_root("school-a")  # type: ignore[union-attr]
        api = gw.api(await gw.staff_user("co.lan"))
        admin = gw.api(await gw.staff_user("it.admin", role="admin"))
        cid, _links = await make_class(gw, api)
        intent, created = await _intent_of(admin, "class.created", **{"class": cid})
        assert created["facts"]["platform"] == intent["facts"]["platform"]
        _, imported = await _intent_of(admin, "roster.imported", **{"class": cid})
        assert imported["facts"]["students"] == len(_links)
        r = await api.put(f"/api/v1/classes/{cid}/policy", json={"preset": "strict"})
        assert r.status == 200, await r.text()
        _, changed = await _intent_of(admin, "policy.changed", **{"class": cid})
        assert changed["facts"]["preset"] == "strict"
        r = await admin.post("/api/v1/admin/keys/rotate")
        assert r.status == 200, await r.text()
        kid = (await r.json())["active"]
        _, rotated = await _intent_of(admin, "keys.rotated")
        assert rotated["facts"]["kid"] == kid
        # broken key files: the rotation fails after its intent, which is marked failed
        ring = gw.svc.keyring
        assert ring is not None and ring._dir is not None
        (ring._dir / "keyring.json").write_text("{not json")
        r = await admin.post("/api/v1/admin/keys/rotate")
        assert r.status == 500 and (await r.json())["error"]["code"] == "keys_corrupt"
        failed = (await audit_events(admin, type="intent.failed"))[0]
        assert failed["facts"]["action"] == "keys.rotated"
        assert failed["reason"] == "keys_corrupt"
        [intent] = [e for e in await audit_events(admin, type="intent")
                    if e["facts"]["intent"] == failed["facts"]["intent"]]
        assert intent["index"] < failed["index"]
        assert ring.signing_key().kid == kid
        # a password change: a wrong current password fails after the intent
        r = await api.post("/api/v1/account/password",
                           json={"current_password": "wrong-" + TEACHER_PASSWORD,
                                 "new_password": "Mật-khẩu-mới-2026!"})
        assert r.status in (400, 403), await r.text()
        failed = (await audit_events(admin, at_least=2, type="intent.failed"))[0]
        assert failed["facts"]["action"] == "staff.password_changed"
        assert failed["subject"] == "user:co.lan"
        r = await api.post("/api/v1/account/password",
                           json={"current_password": TEACHER_PASSWORD,
                                 "new_password": "Mật-khẩu-mới-2026!"})
        assert r.status == 200, await r.text()
        _, changed_pw = await _intent_of(admin, "staff.password_changed")
        assert changed_pw["subject"] == "user:co.lan"
