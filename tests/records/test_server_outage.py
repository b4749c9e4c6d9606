"""The database goes away in the middle of a real call: the call does not notice, and its
record arrives complete once the database is back."""

from __future__ import annotations

import asyncio

from callbridge.bot import Bot
from callbridge.server.state import APP_STATE
from callbridge.testing.audio import silence, tone
from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_simulator import TwilioSimulator
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, ServerFactory
from tests.records.conftest import Backend

GREETING = "Hello, outage test."


async def test_database_down_mid_call_delays_nothing_and_loses_nothing(
    backend: Backend, start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    server = await start_server(
        bot=Bot(system_prompt="x", greeting=GREETING),
        assemblyai_agent_url=fake_agent.url,
        database_url=backend.url,
    )
    store = server.app[APP_STATE].records
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        call = await sim.place_inbound_call()
        session = await fake_agent.wait_for_session()
        greeting = fake_agent.reply_audio_for(GREETING)
        await call.wait_heard(len(greeting))
        [runner] = server.app[APP_STATE].registry.live.values()
        await backend.cut()  # PostgreSQL: its connections cut; SQLite: locked by another writer
        # The call goes on as if nothing happened: a turn is heard and answered.
        call.speak(tone(300, 300) + silence(500))
        answer = fake_agent.reply_audio_for("I heard you.")
        await call.wait_heard(len(greeting) + len(answer), timeout=10)
        assert answer in bytes(call.heard)
        await call.hangup()
        await asyncio.wait_for(runner.done.wait(), 10)
    await store.wait_durable()  # in the spool, whatever the database is doing
    await backend.restore()
    await asyncio.wait_for(store.flush(), 30)
    record = await store.get_call(call.call_sid)
    assert record is not None
    assert record.ended_by == "caller" and record.ended_at is not None
    lines = [(t.role, t.text) for t in record.transcript]
    assert lines[0] == ("agent", GREETING)
    assert ("caller", "hello") in lines
    assert ("agent", "I heard you.") in lines
    assert session.end_reason == "session.end"
