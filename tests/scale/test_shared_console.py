"""The console across instances sharing live state through a real Redis: a call held by one
instance is on every instance's live page, and its buttons work from any of them."""

from __future__ import annotations

import asyncio

import aiohttp

from callbridge.server.state import APP_STATE
from callbridge.testing.audio import silence, tone
from callbridge.testing.fake_agent import FakeVoiceAgent, ScriptedTurn
from callbridge.testing.twilio_simulator import TwilioSimulator
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, ServerFactory
from tests.console.client import ConsoleClient
from tests.console.test_pages import read_events


async def test_a_call_held_by_another_instance_is_on_the_live_page_and_hung_up_from_it(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, redis_server: str, redis_prefix: str
) -> None:
    a, b = [
        await start_server(
            assemblyai_agent_url=fake_agent.url,
            redis_url=redis_server,
            callbridge_redis_prefix=redis_prefix,
            callbridge_instance_id=name,
        )
        for name in ("a", "b")
    ]
    fake_agent.turns.append(ScriptedTurn(user_text="where is my parcel", reply="On its way."))
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        TwilioSimulator(b.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim,
    ):
        console = ConsoleClient(http, a.url)
        assert await console.log_in() == 303
        async with http.get(a.url + "/console/events", headers=console.headers()) as events:

            async def until(text: str) -> None:
                async for name, data in read_events(events):
                    if name in ("call", "line") and text in data["html"]:
                        return

            call = await sim.place_inbound_call(from_="+15550001234")
            async with asyncio.timeout(20):
                await until('<article class="call')  # b's call, on a's page
                call.speak(tone(440, 1000) + silence(1000))
                await until("where is my parcel")
                await until("On its way.")
            [call_id] = b.app[APP_STATE].registry.live
            assert not a.app[APP_STATE].registry.live
            _, body, _ = await console.get("/console")
            assert f'action="/console/calls/{call_id}/hang-up"' in body
            assert "where is my parcel" in body
            csrf = await console.csrf()
            status, _, _ = await console.post(f"/console/calls/{call_id}/hang-up", {"csrf": csrf})
            assert status == 303
            async with asyncio.timeout(20):
                await until("Ended by operator")
        await call.wait_ended(timeout=10)
    state = b.app[APP_STATE]
    await state.records.flush()
    record = await state.records.get_call(call_id)
    assert record is not None
    assert (record.ended_by, record.end_reason) == ("operator", "operator-hung-up")
