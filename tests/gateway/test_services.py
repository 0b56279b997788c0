"""gateway/services.py: the services are opened complete, and closing them stops what
they started; before start-up a handler cannot reach them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from aiohttp import web

from gateway.app import create_app
from gateway.config import Settings, load_settings
from gateway.metrics import Metrics
from gateway.presence import Reconciler
from gateway.secretbox import SecretBoxError
from gateway.services import Foundation, make_templates, open_services, services_of


def _settings(tmp_path: Path, redis_url: str, redis_prefix: str) -> Settings:
    return load_settings({"data_dir": str(tmp_path / "data"), "redis_url": redis_url,
                          "redis_prefix": redis_prefix,
                          "public_url": "http://classguard.test"}, {}, None)


def _foundation(settings: Settings, *, sequencer_elsewhere: bool = False) -> Foundation:
    return Foundation(settings=settings, clock=time.time, metrics=Metrics.create(),
                      templates=make_templates(), sequencer_elsewhere=sequencer_elsewhere)


async def test_background_tasks_run_while_open_and_stop_on_close(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    found = _foundation(_settings(tmp_path, redis_url, redis_prefix))
    async with open_services(found, reconciler=Reconciler) as svc:
        assert await svc.redis.ping()
        assert svc.sequencer is not None and svc.sequencer_task is not None
        tasks = set(svc.tasks)
        # the pub/sub listener, the reconciler, the loop-lag watch and the sequencer
        assert len(tasks) == 4 and not any(t.done() for t in tasks)
        assert isinstance(svc.reconciler, Reconciler) and svc.reconciler.svc is svc
        assert svc.store.scripts.fast is svc.redis_fast
    assert all(t.done() for t in tasks)
    assert svc.tasks == set()
    assert svc.http.closed


async def test_a_worker_of_a_group_and_the_command_line_run_no_sequencer(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    settings = _settings(tmp_path, redis_url, redis_prefix)
    async with open_services(_foundation(settings, sequencer_elsewhere=True),
                             reconciler=Reconciler) as svc:
        assert svc.sequencer is None and svc.sequencer_task is None
        assert len(svc.tasks) == 3
    async with open_services(_foundation(settings), reconciler=Reconciler,
                             url=redis_url, background=False) as svc:
        assert svc.sequencer is None and svc.tasks == set()
        # the same keys as the gateway's: the command line sees what it signed
        assert (tmp_path / "data" / "keys" / "audit.key").exists()
        assert await svc.staff.get_user("nobody") is None


async def test_a_failed_step_closes_what_was_opened(tmp_path: Path) -> None:
    # No Redis configured: the services start the data directory's embedded one.
    settings = load_settings({"data_dir": str(tmp_path / "data"),
                              "public_url": "http://classguard.test"}, {}, None)
    assert settings.embedded_redis
    # the secret box key is a directory: opening stops there, after Redis started
    (tmp_path / "data" / "keys" / "secretbox.key").mkdir(parents=True)
    with pytest.raises(SecretBoxError):
        async with open_services(_foundation(settings), reconciler=Reconciler):
            pytest.fail("the services opened without their secret box key")
    sock = tmp_path / "data" / "redis" / "redis.sock"
    probe = aioredis.Redis(unix_socket_path=str(sock))
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await probe.ping()  # the embedded Redis was stopped
    finally:
        await probe.aclose()


async def test_services_exist_from_start_up_on(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    app = create_app(_settings(tmp_path, redis_url, redis_prefix))
    with pytest.raises(RuntimeError):
        services_of(app)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        assert await services_of(app).redis.ping()
    finally:
        await runner.cleanup()
