"""SIGTERM on a real `callbridge serve` process with live calls: drain, goodbyes, exit 0."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_simulator import TwilioSimulator
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, free_port
from tests.helpers.server_process import serve_env, start_serve

pytestmark = pytest.mark.slow
CALLS = 20


@pytest.fixture(params=["aiohttp", "picows"])
async def served(
    fake_agent: FakeVoiceAgent, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """The server, with streams served by aiohttp or by picows."""
    port = free_port()
    env = serve_env(fake_agent.url, port, tmp_path, DRAIN_SECONDS="1")
    env["CALLBRIDGE_MEDIA_STREAM_TRANSPORT"] = request.param
    proc = await start_serve(env, tmp_path)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def until_unready(url: str) -> None:
    """Signals are handled asynchronously: poll /readyz until it says 503 (bounded)."""
    deadline = asyncio.get_running_loop().time() + 10
    async with aiohttp.ClientSession() as http:
        while asyncio.get_running_loop().time() < deadline:
            async with http.get(f"{url}/readyz") as response:
                if response.status == 503:
                    assert "shutting down" in (await response.json())["reasons"]
                    return
            await asyncio.sleep(0.02)
    pytest.fail("/readyz never turned 503 after SIGTERM")


async def live_calls(sim: TwilioSimulator, fake_agent: FakeVoiceAgent) -> list[object]:
    calls = [await sim.place_inbound_call(from_=f"+1555000{i:04d}") for i in range(CALLS)]
    for i in range(CALLS):
        session = await fake_agent.wait_for_session(i, timeout=10)
        await session.wait_sent("session.ready", timeout=10)
    return calls


async def test_sigterm_drains_then_says_goodbye_on_every_call(
    served: tuple[asyncio.subprocess.Process, str], fake_agent: FakeVoiceAgent
) -> None:
    proc, url = served
    async with TwilioSimulator(url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        calls = await live_calls(sim, fake_agent)
        proc.send_signal(signal.SIGTERM)
        await until_unready(url)
        late = await sim.place_inbound_call(from_="+15559999999")
        await late.wait_ended()
        assert late.said and "busy" in late.said[0]
        # Live calls go on during the drain, then each agent is asked to say goodbye.
        for session in fake_agent.sessions:
            create = await session.wait_for("reply.create", timeout=10)
            assert "goodbye" in create["instructions"]
            await session.wait_for("session.end", timeout=40)
        for call in calls:
            await call.wait_ended(timeout=10)
            assert call.end_reason == "hangup-verb"  # the <Redirect> after </Connect>: <Hangup>
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_second_signal_ends_every_call_at_once_with_session_end(
    served: tuple[asyncio.subprocess.Process, str], fake_agent: FakeVoiceAgent
) -> None:
    proc, url = served
    async with TwilioSimulator(url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        calls = await live_calls(sim, fake_agent)
        proc.send_signal(signal.SIGTERM)
        await until_unready(url)  # the first signal has been handled: now the second
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        for session in fake_agent.sessions:
            await session.wait_for("session.end", timeout=5)
            assert not any(m["type"] == "reply.create" for m in session.received)
        for call in calls:
            await call.wait_ended(timeout=5)
