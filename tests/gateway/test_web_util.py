"""Request helpers: bounded JSON parsing of untrusted text, form bodies that cannot be
parsed, and the error middleware's mapping of aiohttp's body-parser failures."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.errors import make_error_middleware
from gateway.web_util import JsonTooDeep, loads_bounded, read_form


@pytest.mark.parametrize("text", [
    "[" * 30_000 + "]" * 30_000,
    '{"a":' * 50_000 + "1" + "}" * 50_000,
    '{"action": ' + "[" * 21 + "]" * 21 + "}",
])
def test_nesting_bombs_are_refused_before_parsing(text: str) -> None:
    with pytest.raises(JsonTooDeep):
        loads_bounded(text)
    with pytest.raises(JsonTooDeep):
        loads_bounded(text.encode())


@pytest.mark.parametrize("text", ["", "{", b"\xff", "\ud800", "[1,]"])
def test_malformed_text_is_a_value_error(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        loads_bounded(text)


def test_brackets_inside_strings_do_not_count() -> None:
    doc = {"name": "[" * 100 + '\\"{' * 50, "list": [[1], [2]]}
    assert loads_bounded(json.dumps(doc)) == doc


async def _client(handler: web.Handler) -> TestClient[web.Request, web.Application]:
    app = web.Application(middlewares=[make_error_middleware()])
    app.router.add_post("/", handler)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.mark.parametrize("ctype", ["multipart/form-data",
                                   "multipart/form-data; boundary=cgfuzz"])
async def test_broken_form_bodies_are_400(ctype: str) -> None:
    async def helper(request: web.Request) -> web.Response:
        await read_form(request)
        return web.Response(text="ok")

    async def direct(request: web.Request) -> web.Response:
        await request.post()  # a reader that does not use the helper
        return web.Response(text="ok")

    for handler in (helper, direct):
        client = await _client(handler)
        try:
            r = await client.post("/", data=b"{'code': None}", headers={"Content-Type": ctype})
            body = await r.json()
            assert r.status == 400 and body["error"]["code"] == "invalid_body", body
        finally:
            await client.close()


async def test_other_value_errors_stay_internal() -> None:
    async def buggy(request: web.Request) -> web.Response:
        raise ValueError("a bug of ours, not the client's")

    client = await _client(buggy)
    try:
        r = await client.post("/", data=b"x")
        assert r.status == 500 and (await r.json())["error"]["code"] == "internal_error"
    finally:
        await client.close()
