"""The Redis a command-line path talks to: the configured one, or the data directory's
embedded one (the running gateway's if it is up, else a temporary one for the command).

Kept apart from gateway/cli.py so the commands in other modules (gateway/evidence_cli.py)
use it without importing the command line itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis

from .config import Settings
from .embedded_redis import EmbeddedRedis


@contextlib.asynccontextmanager
async def redis_url(settings: Settings) -> AsyncIterator[str]:
    """The configured Redis; with none configured, the data dir's embedded one (the
    running gateway's if it is up, else a temporary one started for this command)."""
    embedded = None
    url = settings.redis_url
    if url is None:
        sock = Path(settings.data_dir) / "redis" / "redis.sock"
        if sock.exists():
            probe = aioredis.Redis.from_url(f"unix://{sock}")
            try:
                await probe.ping()
                url = f"unix://{sock}"
            except Exception:  # noqa: BLE001 - stale socket: start our own below
                url = None
            finally:
                await probe.aclose()
        if url is None:
            embedded = EmbeddedRedis(Path(settings.data_dir))
            url = await embedded.start()
    try:
        yield url
    finally:
        if embedded is not None:
            await embedded.stop()
