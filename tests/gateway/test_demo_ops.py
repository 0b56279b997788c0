"""`classguard demo` as a newcomer runs it: the phone recipe on a private address, a busy
port, a restart in the same folder, and a demo killed with SIGKILL (no child survives).

Real subprocesses on the embedded Redis; the Janus parts need the ``janus`` program."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from gateway.i18n import t

from .test_cli_e2e import _alive, _make_teacher, free_port, start_serve, stop

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "gateway.cli"]
# Not necessarily an address of this machine: the demo listens on 0.0.0.0 and prints
# links to it, as a laptop on a school Wi-Fi prints its 192.168.x address; the test
# reaches it on 127.0.0.1.
LAN_IP = "10.11.12.13"


def _env(data: Path) -> dict[str, str]:
    env = dict(os.environ, CLASSGUARD_DATA_DIR=str(data))
    for k in ("CLASSGUARD_REDIS_URL", "REDIS_URL", "CLASSGUARD_REDIS_PREFIX",
              "CLASSGUARD_COOKIE_SECURE", "CLASSGUARD_PUBLIC_URL"):
        env.pop(k, None)
    return env


class Demo:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, fh: IO[str]) -> None:
        self.proc, self.log, self.fh = proc, log, fh

    @property
    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.fh.close()
        return self.proc.returncode


def start_demo(data: Path, log: Path, *args: str, wait: bool = True,
               **env: str) -> Demo:
    fh = log.open("w")
    proc = subprocess.Popen(CLI + ["demo", *args], env=_env(data) | env, stdout=fh,
                            stderr=subprocess.STDOUT)
    demo = Demo(proc, log, fh)
    if wait:
        deadline = time.monotonic() + 60
        while "ClassGuard listening on" not in demo.text:
            if proc.poll() is not None or time.monotonic() > deadline:
                demo.stop()
                raise AssertionError(f"the demo did not come up:\n{demo.text}")
            time.sleep(0.1)
    return demo


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for d in started:
        d.stop()


def _children(pid: int) -> dict[int, str]:
    """pid -> command name of the direct children of ``pid``."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid:
            out[int(entry.name)] = comm
    return out


def _descendants(pid: int) -> dict[int, str]:
    out: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child, comm in _children(todo.pop()).items():
            out[child] = comm
            todo.append(child)
    return out


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _signin(text: str) -> tuple[str, str, str]:
    """(public base, teacher password, class id) from the demo's announcement."""
    m = re.search(r"Teacher sign-in: (\S+)/login\s+user: teacher\s+password: (\S+)", text)
    assert m is not None, text
    cid = re.search(r"/classes/(\S+)/control", text)
    assert cid is not None, text
    return m.group(1), m.group(2), cid.group(1)


async def _teacher(local: str, password: str) -> tuple[aiohttp.ClientSession, Any]:
    s = aiohttp.ClientSession(base_url=local, cookie_jar=aiohttp.CookieJar(unsafe=True))
    r = await s.post("/api/v1/session", json={"username": "teacher", "password": password})
    assert r.status == 200, await r.text()
    return s, r


def test_phone_recipe_on_a_private_address(tmp_path: Path, demos: list[Demo]) -> None:
    """`demo --public-url http://<private ip>:port` runs as the README writes it: links
    to that address, plain-http meeting links, cookies without Secure, a loud warning."""
    port = free_port()
    public = f"http://{LAN_IP}:{port}"
    # the README's command, word for word but for the address and port
    demo = start_demo(tmp_path / "data", tmp_path / "demo.log", "--host", "0.0.0.0",
                      "--port", str(port), "--public-url", public)
    demos.append(demo)
    text = demo.text
    assert "Traceback" not in text and "InvalidSettings" not in text, text
    assert t("vi", "demo.plain_http_warning", url=public) in text
    links = re.findall(r"(http://\S+/j/\S+)", text)
    assert len(links) == 5 and all(u.startswith(public + "/j/") for u in links), text
    base, password, cid = _signin(text)
    assert base == public
    local = f"http://127.0.0.1:{port}"

    async def check() -> None:
        # the student's device cookie and the teacher's session: no Secure attribute,
        # or a phone's browser over http would drop them
        async with aiohttp.ClientSession() as s:
            r = await s.get(local + links[0][len(public):],
                            headers={"Accept": "application/json"})
            assert r.status == 200, await r.text()
            cookies = r.headers.getall("Set-Cookie")
            assert any(c.startswith("cg_dev=") for c in cookies), cookies
            assert not any("secure" in c.lower() for c in cookies), cookies
        s, r = await _teacher(local, password)
        async with s:
            cookies = r.headers.getall("Set-Cookie")
            assert cookies and not any("secure" in c.lower() for c in cookies), cookies
            r = await s.get(f"/api/v1/classes/{cid}")
            assert r.status == 200, await r.text()
            # the meeting the class leads to is on the same private address
            page = await s.get(f"/classes/{cid}/control", headers={"Accept": "text/html"})
            assert page.status == 200
        if "Meeting:         janus" in text:
            # the phone reaches the demo's Janus through the gateway's own address
            async with aiohttp.ClientSession() as s:
                room = await s.get(f"{local}/demo/janus?room=1&id=2&token=t&name=x")
                assert room.status == 200
                csp = room.headers["Content-Security-Policy"]
                assert f"ws://{LAN_IP}:{port}/demo/janus/ws" in csp, csp

    asyncio.run(check())
    assert demo.stop() == 0


def test_demo_refuses_plain_http_to_a_public_address(tmp_path: Path) -> None:
    for url in ("http://8.8.8.8:8080", "http://school.example.org:8080"):
        res = subprocess.run(CLI + ["demo", "--port", str(free_port()), "--public-url", url],
                             env=_env(tmp_path / "data"), capture_output=True, text=True,
                             timeout=60, check=False)
        assert res.returncode == 2, res
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("classguard: error: public_url"), lines
        assert "password" not in res.stdout


def test_serve_never_allows_plain_http(tmp_path: Path, redis_prefix: str) -> None:
    """`serve` on the same private http address: meeting links must still be https and
    cookies keep Secure."""
    env = _env(tmp_path / "data")
    env["CLASSGUARD_REDIS_PREFIX"] = redis_prefix
    token = _make_teacher(env, [])
    port = free_port()
    served = start_serve(env, port, tmp_path / "serve.log", "--public-url",
                         f"http://{LAN_IP}:{port}")
    try:
        async def check() -> None:
            from .helpers import class_body

            auth = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession(base_url=served.base, headers=auth) as api:
                body = class_body("strict")
                body["platform"] = {"kind": "generic", "url": f"http://{LAN_IP}:{port}/m"}
                r = await api.post("/api/v1/classes", json=body)
                assert r.status == 400, await r.text()
                assert "https" in (await r.text())
            async with aiohttp.ClientSession(base_url=served.base) as s:
                r = await s.post("/api/v1/session", json={
                    "username": "co.lan", "password": "a long enough password"})
                assert r.status == 200, await r.text()
                cookies = r.headers.getall("Set-Cookie")
                assert cookies and all("secure" in c.lower() for c in cookies), cookies

        asyncio.run(check())
    finally:
        stop(served)
    assert "WARNING" not in served.log.read_text()


def test_busy_port_announces_nothing_and_leaves_no_child(tmp_path: Path) -> None:
    """The sign-in and links are printed only once the port is bound; a busy port is one
    error line, and neither Janus nor Redis is left behind."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        log = tmp_path / "demo.log"
        demo = start_demo(tmp_path / "data", log, "--port", str(port), wait=False)
        seen: dict[int, str] = {}
        while demo.proc.poll() is None:
            seen |= _descendants(demo.proc.pid)
            time.sleep(0.05)
        rc = demo.stop()
    text = log.read_text()
    assert rc == 1, text
    assert f"cannot listen on 127.0.0.1:{port}" in text
    assert "password:" not in text and "/j/" not in text and "demo is ready" not in text, text
    assert "Traceback" not in text, text
    assert not _gone_within(list(seen), 10), seen


def test_restart_in_the_same_folder_keeps_one_demo_class(tmp_path: Path,
                                                         demos: list[Demo]) -> None:
    data = tmp_path / "data"
    ids = []
    for run in range(2):
        port = free_port()
        # a test client keeps a Secure cookie from http://127.0.0.1 to itself
        demo = start_demo(data, tmp_path / f"demo{run}.log", "--port", str(port),
                          CLASSGUARD_COOKIE_SECURE="false")
        demos.append(demo)
        _, password, cid = _signin(demo.text)
        ids.append(cid)

        async def classes(port: int = port, password: str = password) -> list[str]:
            s, _ = await _teacher(f"http://127.0.0.1:{port}", password)
            async with s:
                r = await s.get("/api/v1/classes")
                assert r.status == 200
                return [c["id"] for c in (await r.json())["classes"]]

        assert asyncio.run(classes()) == [cid]
        assert demo.stop() == 0
    assert ids[0] == ids[1]


def test_demo_that_fails_during_set_up_leaves_no_janus(tmp_path: Path) -> None:
    """Set-up fails after Janus started (a public URL whose path the meeting page's
    template cannot take): the demo exits, Janus and Redis with it."""
    from tests.conftest import require_program

    require_program("janus")
    port = free_port()
    demo = start_demo(tmp_path / "data", tmp_path / "demo.log", "--port", str(port),
                      "--public-url", f"http://127.0.0.1:{port}/x{{y}}", wait=False)
    seen: dict[int, str] = {}
    while demo.proc.poll() is None:
        seen |= _descendants(demo.proc.pid)
        time.sleep(0.05)
    rc = demo.stop()
    assert rc != 0 and "janus" in seen.values(), (seen, demo.text)
    assert "password:" not in demo.text
    assert not _gone_within(list(seen), 10), {p: seen[p] for p in seen if _alive(p)}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigkill_takes_every_child_along(tmp_path: Path, demos: list[Demo],
                                         workers: str) -> None:
    """kill -9 of the demo (or of its group's supervisor): Janus, the embedded Redis and
    the workers all go with it."""
    from tests.conftest import require_program

    require_program("janus")
    demo = start_demo(tmp_path / "data", tmp_path / "demo.log", "--port", str(free_port()),
                      "--workers", workers)
    demos.append(demo)
    family = _descendants(demo.proc.pid)
    names = sorted(family.values())
    assert "janus" in names and "redis-server" in names, family
    demo.proc.kill()
    demo.proc.wait()
    assert not _gone_within(list(family), 15), {
        p: family[p] for p in family if _alive(p)}


def test_demo_settings_allow_plain_http_only_on_a_private_address(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The demo's code path itself: which public URLs relax https, and what they relax."""
    from gateway.config import ConfigError, load_settings
    from gateway.demo import demo_settings
    from meeting_adapters import InvalidSettings, generic, validate_platform

    monkeypatch.setattr(generic, "_plain_http_addresses", set())

    def settings(url: str) -> Any:
        return load_settings({"data_dir": str(tmp_path), "public_url": url}, {}, None)

    meeting = {"kind": "generic", "url": f"http://{LAN_IP}:8080/demo/meeting"}
    with pytest.raises(InvalidSettings, match="https"):
        validate_platform(meeting)  # `serve`: never
    for url in ("https://lop.example.edu.vn", "http://127.0.0.1:8080", "http://localhost:80"):
        s, warning = demo_settings(settings(url))
        assert warning is None and s.cookie_secure
    for url in ("http://8.8.8.8:8080", "http://100.64.0.1", "http://school.example.org",
                "http://lan-pc.local:8080"):
        with pytest.raises(ConfigError, match="private network address"):
            demo_settings(settings(url))
    with pytest.raises(InvalidSettings):
        validate_platform(meeting)  # nothing was relaxed by a refused URL
    for address in (LAN_IP, "192.168.1.20", "172.16.5.4", "169.254.3.3", "[fd00::5]"):
        s, warning = demo_settings(settings(f"http://{address}:8080"))
        assert not s.cookie_secure
        assert warning == t("vi", "demo.plain_http_warning", url=s.public_url)
    assert validate_platform(meeting)["url"] == meeting["url"]
    # only the addresses the demo named: another private address still needs https
    with pytest.raises(InvalidSettings):
        validate_platform({"kind": "generic", "url": "http://10.0.0.99/m"})
    with pytest.raises(ValueError, match="private"):
        generic.allow_plain_http("8.8.8.8")
