"""A call's record and the metrics, read as a user reads them: through the records API and
`/metrics` of a server running in the test's process, once what it recorded is committed."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from callbridge.server.state import APP_STATE
from tests.conftest import API_TOKEN, RunningServer

_AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def fetch_record(server: RunningServer, key: str) -> dict[str, Any]:
    """`GET /api/calls/{key}` (our call id or the CallSid) once the entries made so far are
    committed."""
    await server.app[APP_STATE].records.flush()
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/api/calls/{key}", headers=_AUTH) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()  # type: ignore[no-any-return]


async def record_when_done(server: RunningServer, key: str) -> dict[str, Any]:
    """The call's record once the server is through with every call it holds (their last
    entries are made only then)."""
    state = server.app[APP_STATE]
    async with asyncio.timeout(10):
        for runner in list(state.registry.live.values()):
            await runner.done.wait()
    return await fetch_record(server, key)


async def metrics_text(server: RunningServer) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/metrics", headers=_AUTH) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.text()
