"""One exported bundle per module (a real gateway on real Redis builds it once)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from .scenario import exported_bundle


@dataclass(frozen=True)
class Exported:
    bundle: bytes
    facts: dict[str, Any]
    vkey: str
    data_dir: Path
    prefix: str


def _export(tmp: Path, redis_url: str, prefix: str) -> tuple[bytes, dict[str, Any], str]:
    # its own thread and loop: a module-scoped fixture outlives the tests' event loops
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, exported_bundle(tmp, redis_url, prefix)).result()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Exported]:
    tmp = tmp_path_factory.mktemp("evidence")
    prefix = f"cgt:{uuid.uuid4().hex[:12]}:"
    bundle, facts, vkey = _export(tmp, redis_url, prefix)
    yield Exported(bundle, facts, vkey, tmp / "data", prefix)
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()
