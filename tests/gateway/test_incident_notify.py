"""Incident emails against a real SMTP server on loopback (aiosmtpd): who receives what,
escalation when serious or unacknowledged, retries against a server that refuses or is
down, and one email per level however many gateway processes run."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.config import ConfigError, load_settings
from tests.gateway.helpers import (
    ROSTER,
    Gateway,
    audit_events,
    make_class,
    running_gateway,
)
from tests.gateway.test_pages import check_page

pytestmark = pytest.mark.timeout(120)


class Mailbox:
    """What the SMTP server received; ``refuse`` makes it answer 5xx at RCPT or DATA."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.attempts = 0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,  # noqa: N802
                          address: str, rcpt_options: list[str]) -> str:
        if self.refuse == "rcpt":
            with self.lock:
                self.attempts += 1
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session,  # noqa: N802
                          envelope: Envelope) -> str:
        with self.lock:
            self.attempts += 1
        if self.refuse == "data":
            return "554 5.7.1 message refused"
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 Message accepted"

    async def wait(self, n: int, within_s: float = 15.0) -> list[tuple[list[str], EmailMessage]]:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            await asyncio.sleep(0.05)
        raise AssertionError(f"expected {n} messages, got {len(self.messages)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def smtp_server(box: Mailbox) -> Iterator[int]:
    port = _free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def smtp_settings(port: int, **extra: Any) -> dict[str, Any]:
    return {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none",
            "smtp_from": "classguard@so-gd.example.vn", "smtp_timeout_s": 2,
            "smtp_retry_base_s": 1, **extra}


def _window() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"since": (now - timedelta(minutes=10)).isoformat(),
            "until": (now + timedelta(minutes=1)).isoformat()}


SECRET_DESCRIPTION = "Người lạ đọc to tên Nguyễn Văn An và số điện thoại 0901234567"


class World:
    """A province department above a district office above a school, each with an
    administrator who has an email address, and a teacher with a class."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def build(self) -> World:
        gw = self.gw
        self.province = gw.api(await gw.staff_user("so.admin", "admin", org="so-gd"))
        self.district = gw.api(await gw.staff_user("phong.admin", "admin", org="phong-gd",
                                                   parent="so-gd"))
        self.school = gw.api(await gw.staff_user("hieu.truong", "admin", org="school-a",
                                                 parent="phong-gd"))
        # a second school administrator without an address: named in the audit only
        await gw.staff_user("pho.hieu.truong", "admin", org="school-a", parent="phong-gd")
        self.teacher = gw.api(await gw.staff_user("co.lan", org="school-a"))
        for api, name, address in ((self.province, "so.admin", "so@so-gd.example.vn"),
                                   (self.district, "phong.admin", "phong@phong.example.vn"),
                                   (self.province, "hieu.truong", "ht@school-a.example.vn")):
            r = await api.put(f"/api/v1/admin/users/{name}/email", json={"email": address})
            assert r.status == 200, await r.text()
            assert (await r.json())["user"]["email"] == address
        self.cid, self.links = await make_class(gw, self.teacher, roster=ROSTER)
        return self

    async def open_incident(self, api: aiohttp.ClientSession | None = None,
                            **extra: Any) -> dict[str, Any]:
        body = {"class_id": self.cid, "title": "Người lạ vào lớp", **_window(),
                "description": SECRET_DESCRIPTION,
                "student_ids": [self.links[0]["student_id"]], **extra}
        r = await (api or self.teacher).post("/api/v1/incidents", json=body)
        assert r.status == 201, await r.text()
        inc: dict[str, Any] = await r.json()
        return inc


@asynccontextmanager
async def world(tmp_path: Path, redis_url: str, redis_prefix: str,
                **settings: Any) -> AsyncIterator[World]:
    async with running_gateway(tmp_path, redis_url, redis_prefix, **settings) as gw:
        yield await World(gw).build()


def _body(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def _notifications(api: aiohttp.ClientSession, iid: str) -> list[dict[str, Any]]:
    r = await api.get(f"/api/v1/incidents/{iid}/notifications")
    assert r.status == 200, await r.text()
    return list((await r.json())["notifications"])


async def _until(api: aiohttp.ClientSession, iid: str, pred: Any,
                 within_s: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within_s
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = await _notifications(api, iid)
        if pred(found):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"notifications never matched: {found}")


async def test_school_admins_receive_the_mail_without_personal_data(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    box = Mailbox()
    with smtp_server(box) as port:
        async with world(tmp_path, redis_url, redis_prefix, **smtp_settings(port)) as w:
            inc = await w.open_incident()
            (rcpts, msg), = await box.wait(1)
            assert rcpts == ["ht@school-a.example.vn"]
            assert msg["To"] == "ht@school-a.example.vn"
            assert msg["From"] == "classguard@so-gd.example.vn"
            assert msg["Subject"] == ("[ClassGuard] Sự cố ở lớp Toán 10A1 / "
                                      "[ClassGuard] Incident in class Toán 10A1")
            assert msg["Auto-Submitted"] == "auto-generated"
            body = _body(msg)
            vi = body.index("Một sự cố vừa được mở ở lớp Toán 10A1")
            en = body.index("An incident was opened in class Toán 10A1")
            assert vi < en  # Vietnamese first
            assert f"http://classguard.test/incidents/{inc['id']}" in body
            assert "(UTC+7)" in body
            for personal in ("Nguyễn Văn An", "Trần Thị Bình", "0901234567", "co.lan",
                             "Người lạ vào lớp", w.links[0]["student_id"]):
                assert personal not in body and personal not in str(msg["Subject"])
            # the district is not told of an ordinary incident at once
            await asyncio.sleep(1.0)
            assert len(box.messages) == 1
            events = await audit_events(w.school, type="incident.notified")
            facts = events[0]["facts"]
            assert facts["incident"] == inc["id"] and facts["level"] == 0
            assert facts["recipients"] == ["hieu.truong"]
            assert facts["without_email"] == ["pho.hieu.truong"]
            assert "ht@school-a.example.vn" not in str(events)
            found = await _notifications(w.school, inc["id"])
            assert [(n["level"], n["result"]) for n in found] == [(0, "sent")]
            # the time to the first email is measured
            from prometheus_client import generate_latest

            text = generate_latest(w.gw.svc.metrics.registry).decode()
            assert "classguard_incident_first_notification_seconds_count 1.0" in text
            # the page shows what was sent
            r = await w.school.get(f"/incidents/{inc['id']}?lang=en")
            assert r.status == 200
            page = await r.text()
            assert "Email notifications" in page and "Sent" in page


async def test_a_serious_incident_reaches_the_district(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    box = Mailbox()
    with smtp_server(box) as port:
        async with world(tmp_path, redis_url, redis_prefix, **smtp_settings(port)) as w:
            inc = await w.open_incident()
            await box.wait(1)
            # marking it serious is an edit of the incident, kept as a revision
            r = await w.teacher.patch(f"/api/v1/incidents/{inc['id']}",
                                      json={"severity": "serious"})
            assert r.status == 200, await r.text()
            assert (await r.json())["severity"] == "serious"
            got = await box.wait(2)
            rcpts, msg = got[1]
            assert rcpts == ["phong@phong.example.vn"]
            body = _body(msg)
            assert "được đánh dấu là nghiêm trọng" in body and "was marked serious" in body
            assert SECRET_DESCRIPTION not in body
            history = await (await w.school.get(f"/api/v1/incidents/{inc['id']}/history")
                             ).json()
            last = history["revisions"][-1]
            assert last["by"] == "co.lan"
            assert last["changes"]["severity"] == {"old": "normal", "new": "serious"}
            updates = await audit_events(w.school, type="incident.update")
            assert updates[0]["facts"]["severity"] == "serious"
            page = await (await w.school.get(f"/incidents/{inc['id']}?lang=en")).text()
            assert "Severity: Serious" in page and "<td>Serious</td>" in page
            assert 'data-acknowledge="1"' in page  # the school's administrator may
            page = await (await w.teacher.get(f"/incidents/{inc['id']}?lang=en")).text()
            assert 'data-acknowledge="1"' not in page  # the reporting teacher may not
            # marking it serious again mails nobody again
            r = await w.teacher.patch(f"/api/v1/incidents/{inc['id']}",
                                      json={"severity": "normal"})
            assert r.status == 200
            r = await w.teacher.patch(f"/api/v1/incidents/{inc['id']}",
                                      json={"severity": "serious"})
            assert r.status == 200
            await asyncio.sleep(1.5)
            assert len(box.messages) == 2
            r = await w.teacher.patch(f"/api/v1/incidents/{inc['id']}",
                                      json={"severity": "grave"})
            assert r.status == 400 and (await r.json())["error"]["field"] == "severity"


async def test_an_unacknowledged_incident_escalates_step_by_step(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    box = Mailbox()
    with smtp_server(box) as port:
        async with world(tmp_path, redis_url, redis_prefix,
                         **smtp_settings(port, incident_ack_timeout_s=2)) as w:
            t0 = time.monotonic()
            inc = await w.open_incident()
            got = await box.wait(3, within_s=20)
            assert [r for r, _ in got] == [["ht@school-a.example.vn"],
                                           ["phong@phong.example.vn"],
                                           ["so@so-gd.example.vn"]]
            assert time.monotonic() - t0 >= 4  # two periods of two seconds
            body = _body(got[2][1])
            assert "chưa được quản trị viên nào của trường xác nhận" in body
            assert "No administrator of the school acknowledged" in body
            assert "administrator of the school's province education department" in body
            found = await _notifications(w.school, inc["id"])
            assert [(n["level"], n["reason"], n["result"]) for n in found] == [
                (0, "opened", "sent"), (1, "unacknowledged", "sent"),
                (2, "unacknowledged", "sent")]

            # an incident acknowledged in time goes no further than the school
            inc2 = await w.open_incident()
            await box.wait(4)
            r = await w.teacher.post(f"/api/v1/incidents/{inc2['id']}/acknowledge")
            assert r.status == 403  # a teacher's own report is not a response
            r = await w.school.post(f"/api/v1/incidents/{inc2['id']}/acknowledge")
            assert r.status == 200, await r.text()
            acked = await r.json()
            assert acked["acknowledged_by"] == "hieu.truong"
            r = await w.district.post(f"/api/v1/incidents/{inc2['id']}/acknowledge")
            assert (await r.json())["acknowledged_by"] == "hieu.truong"  # the first stays
            await asyncio.sleep(5)
            assert len(box.messages) == 4
            events = await audit_events(w.school, type="incident.acknowledged")
            assert [e["facts"]["incident"] for e in events] == [inc2["id"]]


async def test_a_refusing_server_is_retried_then_audited_as_failed(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    for refuse, code in (("rcpt", "smtp_550"), ("data", "smtp_554")):
        box = Mailbox(refuse=refuse)
        with smtp_server(box) as port:
            async with world(tmp_path / refuse, redis_url, redis_prefix + refuse,
                             **smtp_settings(port, smtp_max_attempts=3)) as w:
                inc = await w.open_incident()
                found = await _until(w.school, inc["id"],
                                     lambda ns: any(n["result"] == "failed" for n in ns))
                assert [(n["result"], n["attempt"], n["why"]) for n in found] == [
                    ("retrying", 1, code), ("retrying", 2, code), ("failed", 3, code)]
                assert box.attempts == 3 and box.messages == []
                events = await audit_events(w.school, type="incident.notify_failed",
                                            at_least=3)
                assert sorted((e["facts"]["attempt"], e["facts"].get("final"))
                              for e in events) == [(1, False), (2, False), (3, True)]
                assert all(e["facts"]["recipients"] == ["hieu.truong"] for e in events)
                assert await w.gw.svc.notifier.queue.pending() == 1  # the escalation check


async def test_a_server_that_is_down_or_hangs_never_blocks_the_gateway(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    down = _free_port()  # nothing listens there
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(8)  # accepts connections, never greets
    try:
        for name, port, why in (("down", down, "connect_failed"),
                                ("hangs", hanging.getsockname()[1], "timeout")):
            async with world(tmp_path / name, redis_url, redis_prefix + name,
                             **smtp_settings(port, smtp_max_attempts=2,
                                             smtp_timeout_s=1)) as w:
                inc = await w.open_incident()
                # the gateway keeps answering while the mail is retried
                t0 = time.monotonic()
                while time.monotonic() - t0 < 2.5:
                    s0 = time.monotonic()
                    r = await w.school.get("/api/v1/incidents")
                    assert r.status == 200
                    assert time.monotonic() - s0 < 0.5
                    await asyncio.sleep(0.1)
                found = await _until(w.school, inc["id"],
                                     lambda ns: any(n["result"] == "failed" for n in ns))
                assert [(n["result"], n["why"]) for n in found] == [
                    ("retrying", why), ("failed", why)]
                events = await audit_events(w.school, type="incident.notify_failed",
                                            at_least=2)
                assert {e["facts"]["error"] for e in events} == {why}
    finally:
        hanging.close()


async def test_without_smtp_notifications_are_recorded_as_not_sent(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    async with world(tmp_path, redis_url, redis_prefix) as w:
        inc = await w.open_incident(severity="serious")
        found = await _until(w.school, inc["id"], lambda ns: len(ns) >= 2)
        assert sorted((n["level"], n["result"], n["why"]) for n in found) == [
            (0, "skipped", "smtp_not_configured"), (1, "skipped", "smtp_not_configured")]
        events = await audit_events(w.school, type="incident.notify_skipped", at_least=2)
        assert {e["facts"]["why"] for e in events} == {"smtp_not_configured"}
        r = await w.school.get(f"/incidents/{inc['id']}?lang=en")
        assert "no mail server (SMTP) is configured" in await r.text()


async def test_two_gateways_send_each_email_once(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    box = Mailbox()
    with smtp_server(box) as port:
        settings = smtp_settings(port, incident_ack_timeout_s=1)
        async with world(tmp_path, redis_url, redis_prefix, **settings) as w, \
                running_gateway(tmp_path, redis_url, redis_prefix, **settings) as other:
            assert other.svc.notifier is not w.gw.svc.notifier
            ids = [(await w.open_incident())["id"] for _ in range(4)]
            # each incident: school, district after 1 s, province after 2 s
            await box.wait(12, within_s=30)
            await asyncio.sleep(2.0)
            assert len(box.messages) == 12
            for iid in ids:
                found = await _notifications(w.school, iid)
                assert sorted(n["level"] for n in found) == [0, 1, 2]
            events = await audit_events(w.school, type="incident.notified", at_least=12,
                                        limit="100")
            assert len(events) == 12


async def test_staff_email_is_validated_and_for_administrators_only(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    async with world(tmp_path, redis_url, redis_prefix) as w:
        for bad in ("not-an-address", "a@b", "x" * 250 + "@example.vn", 7):
            r = await w.school.put("/api/v1/admin/users/co.lan/email", json={"email": bad})
            assert r.status == 400, bad
            assert (await r.json())["error"]["field"] == "email"
        r = await w.teacher.put("/api/v1/admin/users/co.lan/email",
                                json={"email": "lan@school-a.example.vn"})
        assert r.status == 403
        # an administrator of a school does not reach the district's accounts
        r = await w.school.put("/api/v1/admin/users/phong.admin/email", json={"email": None})
        assert r.status == 404
        r = await w.school.put("/api/v1/admin/users/co.lan/email",
                               json={"email": "lan@school-a.example.vn"})
        assert r.status == 200
        users = (await (await w.school.get("/api/v1/admin/users")).json())["users"]
        assert {u["username"]: u["email"] for u in users}["co.lan"] == "lan@school-a.example.vn"
        r = await w.school.get("/admin/staff?lang=en")
        assert r.status == 200
        page = await r.text()
        check_page(page, "en", "/admin/staff")
        assert 'value="lan@school-a.example.vn"' in page
        assert "Email (incident notifications)" in page
        r = await w.school.put("/api/v1/admin/users/co.lan/email", json={"email": None})
        assert (await r.json())["user"]["email"] is None
        events = await audit_events(w.school, type="staff.user_email_set", at_least=4)
        assert "lan@school-a.example.vn" not in str(events)


def test_smtp_settings_are_validated() -> None:
    base = {"data_dir": "/tmp/cg-notify-settings"}  # noqa: S108 - never written
    for bad, name in (
        ({"smtp_host": "mail.example.vn"}, "smtp_from"),
        ({"smtp_security": "ssl"}, "smtp_security"),
        ({"smtp_password": "x"}, "smtp_username"),
        ({"smtp_username": "u", "smtp_security": "none"}, "smtp_security"),
        ({"smtp_username": "u", "smtp_password": "a", "smtp_password_sealed": "b"},
         "smtp_password"),
        ({"incident_ack_timeout_s": 0}, "incident_ack_timeout_s"),
    ):
        with pytest.raises(ConfigError) as exc:
            load_settings({**base, **bad}, {}, None)
        assert exc.value.setting == name, bad
    s = load_settings({**base, "smtp_host": "mail.example.vn", "smtp_from": "cg@example.vn",
                       "smtp_username": "cg", "smtp_password": "hunter2-but-longer"}, {}, None)
    assert s.incident_ack_timeout_s == 900 and s.smtp_security == "starttls"
    assert "hunter2" not in repr(s)


async def test_the_escalation_timer_survives_a_restart(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    box = Mailbox()
    with smtp_server(box) as port:
        settings = smtp_settings(port, incident_ack_timeout_s=3)
        async with world(tmp_path, redis_url, redis_prefix, **settings) as w:
            inc = await w.open_incident()
            await box.wait(1)
        # the gateway is down when the district's check falls due
        await asyncio.sleep(3.5)
        assert len(box.messages) == 1
        async with running_gateway(tmp_path, redis_url, redis_prefix, **settings) as gw:
            got = await box.wait(2)
            assert got[1][0] == ["phong@phong.example.vn"]
            assert f"/incidents/{inc['id']}" in _body(got[1][1])
            assert gw.svc.notifier is not None


def test_the_smtp_password_may_be_sealed_with_the_secret_box(tmp_path: Path,
                                                             monkeypatch) -> None:
    import io

    from gateway.notify import main, smtp_password
    from gateway.secretbox import SecretBox, SecretBoxError

    monkeypatch.setattr("sys.stdin", io.StringIO("mật-khẩu SMTP rất dài\n"))
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert main(["seal-password", "--data-dir", str(tmp_path)]) == 0
    sealed = out.getvalue().strip()
    assert "SMTP" not in sealed
    box = SecretBox.load_or_create(tmp_path / "keys" / "secretbox.key")
    s = load_settings({"data_dir": str(tmp_path), "smtp_host": "mail.example.vn",
                       "smtp_from": "cg@example.vn", "smtp_username": "cg",
                       "smtp_password_sealed": sealed}, {}, None)
    assert smtp_password(s, box) == "mật-khẩu SMTP rất dài"
    assert sealed not in repr(s)
    with pytest.raises(SecretBoxError):
        smtp_password(s, SecretBox.generate())  # another gateway's box does not open it


def _tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate it signed for 127.0.0.1: (CA file, cert file, key file)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test mail CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return files


class _Auth:
    """Accepts one username and password (AUTH PLAIN/LOGIN over TLS only)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == b"classguard"
              and auth_data.password == "mật khẩu thư".encode())
        self.seen.append(mechanism)
        return AuthResult(success=ok)


@pytest.mark.parametrize("security", ["starttls", "tls"])
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_delivery_over_starttls_and_implicit_tls_with_credentials(
        security: str, tmp_path: Path, redis_url: str, redis_prefix: str, redis) -> None:
    import ssl

    ca, cert, key = _tls_files(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    box, auth = Mailbox(), _Auth()
    port = _free_port()
    tls = ({"tls_context": ctx, "require_starttls": True} if security == "starttls"
           else {"ssl_context": ctx})
    # NOTE: aiosmtpd does not count implicit TLS as TLS for auth_require_tls (it would
    # not offer AUTH at all); the whole session is encrypted there anyway.
    controller = Controller(box, hostname="127.0.0.1", port=port, authenticator=auth,
                            auth_require_tls=security == "starttls", auth_required=True,
                            **tls)
    controller.start()
    try:
        async with world(tmp_path, redis_url, redis_prefix, **smtp_settings(
                port, smtp_security=security, smtp_ca_file=str(ca),
                smtp_username="classguard", smtp_password="mật khẩu thư")) as w:
            await w.open_incident()
            (rcpts, _msg), = await box.wait(1)
            assert rcpts == ["ht@school-a.example.vn"] and auth.seen
        # a certificate the configured authorities did not sign is refused
        (tmp_path / "other").mkdir()
        other_ca, _, _ = _tls_files(tmp_path / "other")
        async with world(tmp_path / "other", redis_url, redis_prefix + "x", **smtp_settings(
                port, smtp_security=security, smtp_ca_file=str(other_ca), smtp_max_attempts=1,
                smtp_username="classguard", smtp_password="mật khẩu thư")) as w:
            inc = await w.open_incident()
            found = await _until(w.school, inc["id"],
                                 lambda ns: any(n["result"] == "failed" for n in ns))
            assert [n["result"] for n in found] == ["failed"] and len(box.messages) == 1
    finally:
        controller.stop()
