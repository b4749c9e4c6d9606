"""Shared by the socket tests on both sides of the bridge (Twilio's and the agent's)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def one_route_server(
    path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> AsyncIterator[str]:
    """An aiohttp server on a loopback port answering GET `path`; yields its ws:// URL."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}{path}"
    finally:
        await runner.cleanup()


async def flood_until_closed(
    send: Callable[[bytes], None], is_closed: Callable[[], bool], frame: bytes, limit_bytes: int
) -> None:
    """Send `frame` to a peer that stopped reading until the socket gives up on it, or
    `limit_bytes` have gone out; the caller asserts which."""
    for _ in range(limit_bytes // len(frame)):
        send(frame)  # never raises, never blocks
        if is_closed():
            return
        await asyncio.sleep(0)  # let the kernel buffers fill as they would over time
