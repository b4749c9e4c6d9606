"""The console's pages over plain HTTP: history and its export, one call, the overview,
and the live feed during a simulated call."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import html
import io
import json
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from callbridge.bot import bot as default_bot
from callbridge.records.entries import (
    CallClosed,
    CallError,
    CallOpened,
    CallStatusChanged,
    RecordEntry,
    TurnLatency,
)
from callbridge.server.state import APP_STATE
from callbridge.testing.audio import silence, tone
from callbridge.testing.fake_agent import FakeVoiceAgent, ScriptedTurn
from callbridge.testing.twilio_simulator import TwilioSimulator
from callbridge.verbs import Transfer, TransferTarget
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, RunningServer, ServerFactory
from tests.console.client import ConsoleClient
from tests.records.conftest import full_call


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[ConsoleClient]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        client = ConsoleClient(http, server.url)
        assert await client.log_in() == 303
        yield client


async def seed(server: RunningServer) -> None:
    records = server.app[APP_STATE].records
    for entry in full_call():
        records.submit(entry)
    await records.flush()


def recent_calls(now: float, count: int = 16) -> list[RecordEntry]:
    """Calls spread over the last day, for the overview: some busy, some with agent errors."""
    entries: list[RecordEntry] = []
    for i in range(count):
        at, call_id, sid = now - 5000 * i - 120, f"recent-{i}", f"CA{i:032d}"
        direction = "outbound" if i % 3 == 0 else "inbound"
        entries.append(
            CallOpened(call_id, 0, at, direction, call_sid=sid, from_number="+15550001111")
        )
        entries.append(
            TurnLatency(
                call_id, 1, at + 5, "r1", 300.0, 400.0, 600.0 + 40 * (i % 6), 700.0 + 90 * (i % 7)
            )
        )
        entries.append(TurnLatency(call_id, 4, at + 9, "r2", 200.0, 250.0, 450.0, 480.0 + 20 * i))
        if i % 5 == 4:
            entries.append(CallError(call_id, 2, at + 6, "agent", "stalled"))
        if i % 6 == 5:
            entries.append(CallStatusChanged(sid, "busy", at + 7, sequence=9, call_id=call_id))
        entries.append(CallClosed(call_id, 5, at + 30, "caller" if i % 4 else "agent", "done"))
    return entries


async def seed_recent(server: RunningServer) -> None:
    records = server.app[APP_STATE].records
    for entry in recent_calls(time.time()):
        records.submit(entry)
    await records.flush()


async def test_history_finds_a_call_by_words_and_number(
    server: RunningServer, client: ConsoleClient
) -> None:
    await seed(server)
    status, body, _ = await client.get("/console/history?words=ready")
    assert status == 200
    assert "/console/calls/call-1" in body
    assert "+15557650000" not in body  # numbers masked unless shown
    assert "•••••••••00" in body
    status, body, _ = await client.get("/console/history?words=refund")
    assert "/console/calls/call-1" not in body
    assert "No calls found" in body
    status, body, _ = await client.get("/console/history?number=555765&numbers=shown")
    assert "+15557650000" in body
    status, body, _ = await client.get("/console/history?since=yesterday")
    assert status == 200
    assert "invalid since" in body


async def test_export_as_csv_and_json(server: RunningServer, client: ConsoleClient) -> None:
    await seed(server)
    status, body, response = await client.get("/console/history.csv?ended_by=caller")
    assert status == 200
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [(r["call_id"], r["to_number"], r["ended_by"]) for r in rows] == [
        ("call-1", "+15557650000", "caller")
    ]
    status, body, _ = await client.get("/console/history.json?direction=outbound")
    assert [c["call_id"] for c in json.loads(body)["calls"]] == ["call-1"]
    status, body, _ = await client.get("/console/history.json?ended_by=operator")
    assert json.loads(body) == {"calls": []}
    status, body, _ = await client.get("/console/history.csv?status=answered")
    assert status == 400


async def test_a_calls_page_tells_heard_from_unheard(
    server: RunningServer, client: ConsoleClient
) -> None:
    await seed(server)
    status, body, _ = await client.get("/console/calls/call-1")
    assert status == 200
    # "Yes, it is ready for pick-up today": 1.25 s of 3.2 s heard, "ready" cut off.
    assert '<span class="heard">Yes, it is</span>' in body
    assert ">ready for pick-up today</del>" in body
    assert '<span class="heard">Hi, this is the bike shop.</span>' in body
    assert "repair_status" in body
    assert "ended by caller" in body
    # The actions on the call, in its timeline: who asked, what came of it, the detail.
    assert (
        '<li class="action"><span class="offset">7.2 s</span>'
        " keypad-entry by caller: entered (4 keys)</li>"
    ) in body
    assert "transfer to a person by agent: busy" in body
    assert "hang-up by agent: after-goodbye" in body
    assert "<svg" in body  # the turn latency chart
    assert "<audio" not in body  # no recording
    status, _, _ = await client.get("/console/calls/no-such-call")
    assert status == 404


async def test_overview_renders_its_charts(server: RunningServer, client: ConsoleClient) -> None:
    status, body, _ = await client.get("/console/overview")
    assert status == 200
    assert 'id="overview-live">0<' in body
    assert "</title></rect>" not in body  # no bars yet
    await seed_recent(server)
    status, body, _ = await client.get("/console/overview")
    assert "(16 in all)" in body
    assert "(3 in all)" in body  # agent errors
    assert ": 1</title></rect>" in body  # a bar of one call
    assert "busy: 1</title>" in body
    assert body.count("<polyline") >= 2  # median and 95th percentile


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict]]:
    event = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])


async def test_the_live_feed_shows_a_call_as_it_happens(
    server: RunningServer, client: ConsoleClient, fake_agent: FakeVoiceAgent
) -> None:
    fake_agent.turns.append(ScriptedTurn(user_text="where is my parcel", reply="On its way."))
    seen: list[str] = []
    async with (
        client.http.get(client.base + "/console/events", headers=client.headers()) as events,
        TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim,
    ):
        assert events.headers["Content-Type"] == "text/event-stream"
        call = await sim.place_inbound_call(from_="+15550001234")

        async def until(text: str) -> None:
            async for name, data in read_events(events):
                if name in ("call", "line"):
                    seen.append(data["html"])
                    if text in data["html"]:
                        return

        async with asyncio.timeout(20):
            await until('<article class="call')  # the call's card, as soon as it opens
            await until("Thanks for calling")  # the greeting, once played
            call.speak(tone(440, 1000) + silence(1000))
            await until("where is my parcel")
            await until("On its way.")
            await call.hangup()
            await until("Ended by caller")
    assert "+15550001234" not in "".join(seen)
    assert "•••••••••34" in seen[0]


async def test_hang_up_ends_a_live_call_and_the_record_says_who(
    server: RunningServer, client: ConsoleClient
) -> None:
    state = server.app[APP_STATE]
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        call = await sim.place_inbound_call(from_="+15550001234")
        await call.wait_for_quiet()
        [(call_id, runner)] = state.registry.live.items()
        status, body, _ = await client.get("/console")
        assert f'action="/console/calls/{call_id}/hang-up"' in body
        assert "+15550001234" not in body
        _, shown, _ = await client.get("/console?numbers=shown")
        assert "+15550001234" in shown
        csrf = await client.csrf()
        status, _, _ = await client.post(f"/console/calls/{call_id}/hang-up", {"csrf": csrf})
        assert status == 303
        await call.wait_ended()  # the simulator saw the stream end
        await runner.done.wait()
    await state.records.flush()
    record = await state.records.get_call(call_id)
    assert record is not None
    assert (record.ended_by, record.end_reason) == ("operator", "operator-hung-up")
    assert [(a.verb, a.by, a.outcome) for a in record.actions] == [
        ("hang-up", "operator", "at-once")
    ]


async def test_say_is_sent_to_the_agent_and_transfer_offered_to_the_bots_targets(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    person = TransferTarget("sales", "+15550009999")
    transferring = dataclasses.replace(default_bot, transfer=Transfer(targets=(person,)))
    for bot, offers_transfer in ((default_bot, False), (transferring, True)):
        server = await start_server(assemblyai_agent_url=fake_agent.url, bot=bot)
        state = server.app[APP_STATE]
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
            TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim,
        ):
            client = ConsoleClient(http, server.url)
            assert await client.log_in() == 303
            call = await sim.place_inbound_call(from_="+15550001234")
            session = await fake_agent.wait_for_session()
            await call.wait_for_quiet()
            [call_id] = state.registry.live
            _, body, _ = await client.get("/console")
            assert f'action="/console/calls/{call_id}/say"' in body
            offered = f'action="/console/calls/{call_id}/transfer"' in body
            assert offered is offers_transfer
            csrf = await client.csrf()
            status, _, _ = await client.post(
                f"/console/calls/{call_id}/say", {"csrf": csrf, "text": "Please hold."}
            )
            assert status == 303
            said = await session.wait_for("reply.create", timeout=10)
            assert "Please hold." in str(said.get("instructions"))
            await call.hangup()
            await session.wait_for("session.end")


async def test_the_live_feed_sends_a_logged_out_page_to_reload(client: ConsoleClient) -> None:
    async with client.http.get(client.base + "/console/events", headers=client.headers()) as feed:
        csrf = await client.csrf()
        status, _, _ = await client.post("/console/logout", {"csrf": csrf})
        assert status == 303
        async with asyncio.timeout(10):
            async for name, _ in read_events(feed):
                if name == "reload":
                    break


async def test_history_pages(server: RunningServer, client: ConsoleClient) -> None:
    records = server.app[APP_STATE].records
    for entry in recent_calls(time.time(), count=60):
        records.submit(entry)
    await records.flush()
    _, first, _ = await client.get("/console/history")
    assert first.count("/console/calls/recent-") == 50
    match = re.search(r'href="(/console/history\?[^"]*cursor=[^"]+)" id="next-page"', first)
    assert match is not None
    _, second, _ = await client.get(html.unescape(match[1]))
    assert second.count("/console/calls/recent-") == 10
    assert 'id="next-page"' not in second
