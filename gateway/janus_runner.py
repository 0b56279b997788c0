"""A local Janus for ``classguard demo`` and the tests: its own configuration, loopback only.

The configuration enables the VideoRoom plugin (with an ``admin_key``, so only the gateway
creates rooms), the WebSocket transport on 127.0.0.1, and the sample HTTP event handler
posting VideoRoom events to the gateway with basic authentication. Every other plugin,
transport and event handler of the Debian package is disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .child_process import die_with_parent

log = logging.getLogger("classguard.janus")

LIB_DIR: Final = Path("/usr/lib/x86_64-linux-gnu/janus")
_PLUGINS: Final = ("audiobridge", "duktape", "echotest", "lua", "nosip", "recordplay", "sip",
                   "streaming", "textroom", "videocall", "voicemail")
_TRANSPORTS: Final = ("http", "mqtt", "nanomsg", "pfunix", "rabbitmq")
_EVENT_HANDLERS: Final = ("gelfevh", "mqttevh", "nanomsgevh", "rabbitmqevh", "wsevh")


def find_janus() -> str | None:
    return shutil.which("janus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _q(value: str) -> str:
    # libconfig strings: escape backslash and quote; our values are generated anyway.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class JanusConfig:
    ws_port: int
    admin_key: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    event_url: str | None = None  # the gateway's /hooks/janus
    event_user: str = "janus"
    event_password: str | None = None
    rtp_min: int = 40000
    rtp_max: int = 40200
    lib_dir: Path = LIB_DIR

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"


def render_config(folder: Path, cfg: JanusConfig) -> dict[str, str]:
    """File name -> contents of a complete Janus configuration folder."""
    lib = cfg.lib_dir
    files = {
        "janus.jcfg": f"""general: {{
  configs_folder = {_q(str(folder))}
  plugins_folder = {_q(str(lib / "plugins"))}
  transports_folder = {_q(str(lib / "transports"))}
  events_folder = {_q(str(lib / "events"))}
  loggers_folder = {_q(str(lib / "loggers"))}
  debug_level = 3
  session_timeout = 60
  server_name = "classguard"
}}
media: {{ rtp_port_range = "{cfg.rtp_min}-{cfg.rtp_max}" }}
nat: {{ ice_ignore_list = "vmnet" }}
plugins: {{ disable = {_q(",".join(f"libjanus_{p}.so" for p in _PLUGINS))} }}
transports: {{ disable = {_q(",".join(f"libjanus_{t}.so" for t in _TRANSPORTS))} }}
loggers: {{ disable = "libjanus_jsonlog.so" }}
events: {{
  broadcast = {"true" if cfg.event_url else "false"}
  disable = {_q(",".join(f"libjanus_{e}.so" for e in _EVENT_HANDLERS))}
}}
""",
        "janus.transport.websockets.jcfg": f"""general: {{
  json = "compact"
  ws = true
  ws_port = {cfg.ws_port}
  ws_ip = "127.0.0.1"
  wss = false
}}
admin: {{ admin_ws = false
  admin_wss = false }}
""",
        "janus.plugin.videoroom.jcfg": f"""general: {{
  admin_key = {_q(cfg.admin_key)}
  lock_rtp_forward = true
}}
""",
    }
    if cfg.event_url:
        auth = ""
        if cfg.event_password:
            auth = (f"  backend_user = {_q(cfg.event_user)}\n"
                    f"  backend_pwd = {_q(cfg.event_password)}\n")
        files["janus.eventhandler.sampleevh.jcfg"] = f"""general: {{
  enabled = true
  events = "plugins"
  grouping = true
  json = "compact"
  backend = {_q(cfg.event_url)}
{auth}  max_retransmissions = 3
  retransmissions_backoff = 100
}}
"""
    return files


def write_config(folder: Path, cfg: JanusConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    for name, text in render_config(folder, cfg).items():
        path = folder / name
        path.write_text(text)
        path.chmod(0o600)  # holds the admin key and the event handler's password


class JanusProcess:
    """A ``janus`` child process with a generated configuration (``start``/``stop``)."""

    def __init__(self, binary: str, folder: Path, cfg: JanusConfig) -> None:
        self.binary = binary
        self.folder = folder
        self.cfg = cfg
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout_s: float = 15.0) -> None:
        await asyncio.to_thread(write_config, self.folder, self.cfg)
        log_path = self.folder / "janus.log"
        with log_path.open("ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                self.binary, "-F", str(self.folder), "-C", str(self.folder / "janus.jcfg"),
                "-o", stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                # Its own session: Ctrl-C reaches the gateway, which stops Janus in
                # order; a gateway that dies any other way takes Janus along.
                start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - prctl and getppid only
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self._proc.returncode is not None:
                raise RuntimeError(f"janus exited with {self._proc.returncode}; see {log_path}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.cfg.ws_port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            log.info("janus started on %s", self.cfg.ws_url)
            return
        await self.stop()
        raise RuntimeError(f"janus did not open port {self.cfg.ws_port}; see {log_path}")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
