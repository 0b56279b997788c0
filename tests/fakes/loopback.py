"""The part every fake platform server shares: its aiohttp app on a free loopback port."""

from __future__ import annotations

from aiohttp import web


class LoopbackServer:
    """Serves ``self.app`` (set by the subclass) on 127.0.0.1 at a port the kernel picks."""

    app: web.Application
    runner: web.AppRunner | None = None
    base = ""  # http://127.0.0.1:<port>, once started

    async def start(self) -> str:
        """Start serving; the base URL."""
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"
        return self.base

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
