"""Faults injected through the fake agent, a black-holing proxy and the simulator. Each test
checks what the caller heard, what the agent received, and how the call ended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from callbridge.bot import Bot, generate_random_number
from callbridge.bridge.reconnect import LOST_YOU_GREETING
from callbridge.testing.audio import silence, tone
from callbridge.testing.fake_agent import ConnectFailure, FakeVoiceAgent
from callbridge.testing.twilio_simulator import SimulatedCall, TwilioSimulator
from callbridge.tools import tool
from tests.conftest import API_KEY, AUTH_TOKEN, PUBLIC_URL, ServerFactory
from tests.helpers.log_events import caught
from tests.helpers.tcp_proxy import BlackHoleProxy

LONG_GREETING = "Thanks for calling the resilience test line, this greeting is long on purpose."


# The server runs in the test's own event loop; each test that waits sets fresh events:
# the tool says it has started, then answers only once the test releases it.
LOOKUP_STARTED: list[asyncio.Event] = []
LOOKUP_RELEASED: list[asyncio.Event] = []


@tool
async def slow_lookup(order: str) -> str:
    """Look an order up, slowly."""
    for started in LOOKUP_STARTED:
        started.set()
    for released in LOOKUP_RELEASED:
        await released.wait()
    return f"order {order} shipped"


BOT = Bot(system_prompt="test", greeting=LONG_GREETING, tools=(generate_random_number, slow_lookup))


# The faults that reach the socket layer (aborts, silence, close codes, refused upgrades,
# no listener) run under both upstream socket libraries; the rest is the bridge's logic.
BOTH_AGENT_SOCKETS = pytest.mark.parametrize(
    "agent_transport", ["picows", "aiohttp"], indirect=True
)


@pytest.fixture
async def sim(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> AsyncIterator[TwilioSimulator]:
    server = await start_server(bot=BOT, assemblyai_agent_url=fake_agent.url)
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as s:
        yield s


async def talk(call: SimulatedCall) -> None:
    """The caller says something short, then is quiet: one turn for the fake agent."""
    call.speak(tone(350, 300) + silence(600))


@BOTH_AGENT_SOCKETS
async def test_drop_mid_reply_resumes_and_the_call_goes_on(
    sim: TwilioSimulator, fake_agent: FakeVoiceAgent
) -> None:
    call = await sim.place_inbound_call()
    session = await fake_agent.wait_for_session()
    await call.wait_heard(4000)  # half a second of the greeting has played
    await session.abort()  # TCP gone, no close frame, no session.ended
    resume = await session.wait_for("session.resume", timeout=10)
    assert resume["session_id"] == session.session_id
    await call.wait_received("clear")  # the half-played greeting was cut, not left dangling
    greeting = fake_agent.reply_audio_for(LONG_GREETING)
    await call.wait_playback_idle()
    assert len(call.heard) < len(greeting) and greeting.startswith(bytes(call.heard))
    # The same session carries on: the caller is heard and answered.
    before = len(call.heard)
    await talk(call)
    await session.wait_sent(lambda e: e["type"] == "transcript.user", timeout=10)
    answer = fake_agent.reply_audio_for("I heard you.")
    await call.wait_heard(before + len(answer), timeout=10)
    assert answer in bytes(call.heard)
    assert len(fake_agent.sessions) == 1
    await call.hangup()
    await session.wait_for("session.end")


async def test_drop_during_greeting_resumes_without_a_second_greeting(
    sim: TwilioSimulator, fake_agent: FakeVoiceAgent
) -> None:
    call = await sim.place_inbound_call()
    session = await fake_agent.wait_for_session()
    await session.wait_sent("reply.audio")
    await session.close(code=1011)  # a close frame but no session.ended: still resumable
    await session.wait_for("session.resume", timeout=10)
    await talk(call)
    await session.wait_sent(lambda e: e["type"] == "transcript.user", timeout=10)
    greetings = [e for e in session.sent if e["type"] == "transcript.agent"]
    assert all(e["text"] != LONG_GREETING or e["interrupted"] for e in greetings)
    assert sum(1 for e in session.sent if e["type"] == "session.ready") == 2
    await call.hangup()


async def test_drop_during_a_tool_call_delivers_the_result_after_resume(
    sim: TwilioSimulator, fake_agent: FakeVoiceAgent
) -> None:
    call = await sim.place_inbound_call()
    session = await fake_agent.wait_for_session()
    await session.wait_sent("reply.done")
    LOOKUP_STARTED[:] = [started := asyncio.Event()]
    LOOKUP_RELEASED[:] = [released := asyncio.Event()]
    try:
        call_id = await session.call_tool("slow_lookup", {"order": "42"})
        await asyncio.wait_for(started.wait(), 5)
        seen = {id(frame) for frame in call.received}
        await session.abort()  # while the tool is still running
        # Once the bridge has noticed the drop (it clears Twilio's buffer as it starts to
        # reconnect, then backs off before resuming), the result is ready while it is away.
        await call.wait_received(lambda f: f.get("event") == "clear" and id(f) not in seen)
        released.set()
        resume = await session.wait_for("session.resume", timeout=10)
        result = await session.wait_for(
            lambda m: m["type"] == "tool.result" and m["call_id"] == call_id, timeout=10
        )
    finally:
        released.set()
        LOOKUP_STARTED.clear()
        LOOKUP_RELEASED.clear()
    assert result["result"] == '"order 42 shipped"'
    assert result["is_error"] is False
    # The resumed session is the same FakeSession: the result was held while the bridge was
    # away and went out on the resumed socket, after its session.resume.
    order = [m["type"] for m in session.received if m["type"] != "input.audio"]
    at = {id(m): i for i, m in enumerate(session.received)}
    assert at[id(resume)] < at[id(result)], order
    await call.hangup()


@BOTH_AGENT_SOCKETS
async def test_black_holed_connection_is_detected_and_resumed(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    proxy = BlackHoleProxy("127.0.0.1", int(fake_agent.url.split(":")[2].split("/")[0]))
    await proxy.start()
    try:
        server = await start_server(
            bot=BOT, assemblyai_agent_url=f"ws://127.0.0.1:{proxy.port}/v1/ws"
        )
        async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as s:
            call = await s.place_inbound_call()
            session = await fake_agent.wait_for_session()
            await session.wait_sent("reply.done", timeout=10)
            proxy.freeze_existing()  # no FIN, no RST: only missing pongs can tell
            await session.wait_for("session.resume", timeout=10)
            assert proxy.connections == 2
            await talk(call)
            await session.wait_sent(lambda e: e["type"] == "transcript.user", timeout=10)
            await call.hangup()
            await session.wait_for("session.end")
    finally:
        await proxy.stop()


async def test_refused_resume_starts_a_fresh_session_with_a_short_apology(
    start_server: ServerFactory,
) -> None:
    # A resume window shorter than our first backoff: the resume will be refused.
    async with FakeVoiceAgent(api_key=API_KEY, resume_window=0.05) as agent:
        server = await start_server(bot=BOT, assemblyai_agent_url=agent.url)
        async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as s:
            with caught() as events:  # from the call's start: it logs at the level it began
                call = await s.place_inbound_call()
                first = await agent.wait_for_session(0)
                await first.wait_sent("reply.done", timeout=10)
                heard_before = len(call.heard)
                await first.abort()
                second = await agent.wait_for_session(1, timeout=10)
            # The old session is known to be gone: the fresh one was dialled without backoff.
            seen = list(zip(events.names, events.fields, strict=True))
            refused = next(i for i, (name, _) in enumerate(seen) if name == "agent.error")
            assert seen[refused][1]["kind"] == "resume-refused"
            retry = next(fields for name, fields in seen[refused:] if name == "agent.reconnecting")
            assert retry["delay"] == 0
            update = second.received[0]
            assert update["type"] == "session.update"
            assert update["session"]["greeting"] == LOST_YOU_GREETING
            assert update["session"]["system_prompt"] == "test"
            sorry = agent.reply_audio_for(LOST_YOU_GREETING)
            await call.wait_heard_ending(sorry, timeout=10)
            heard = bytes(call.heard)
            cut = len(heard) - len(sorry)
            # The greeting up to where the clear stopped it (Twilio may play one more
            # 20 ms tick between our reading heard_before and the clear), then the apology.
            greeting = agent.reply_audio_for(LONG_GREETING)
            assert greeting.startswith(heard[:cut])
            assert heard_before <= cut
            assert cut < len(greeting) or heard_before == len(greeting)  # cleared, not played
            await call.hangup()
            await second.wait_for("session.end")
        errors = [e for e in agent.violations if "session_not_found" not in e]
        assert errors == []


@BOTH_AGENT_SOCKETS
async def test_internal_error_with_1011_reconnects_and_the_call_goes_on(
    sim: TwilioSimulator, fake_agent: FakeVoiceAgent
) -> None:
    call = await sim.place_inbound_call()
    session = await fake_agent.wait_for_session()
    await session.wait_sent("reply.done")
    await session.send_error("internal_error", "Internal service error", close_code=1011)
    # The fake ends a session on an internal error: the resume is refused and a fresh
    # session (same bot, an apology instead of the greeting) takes over.
    fresh = await fake_agent.wait_for_session(1, timeout=10)
    assert fresh.received[0]["session"]["greeting"] == LOST_YOU_GREETING
    await fresh.wait_sent("reply.done", timeout=10)
    await talk(call)
    await fresh.wait_sent(lambda e: e["type"] == "transcript.user", timeout=10)
    assert not call.ended.is_set()
    await call.hangup()
    await fresh.wait_for("session.end")


@BOTH_AGENT_SOCKETS
async def test_at_capacity_twice_then_success(
    sim: TwilioSimulator, fake_agent: FakeVoiceAgent
) -> None:
    fake_agent.connect_failures.extend(
        [ConnectFailure("at_capacity"), ConnectFailure("at_capacity")]
    )
    call = await sim.place_inbound_call()
    session = await fake_agent.wait_for_session(timeout=10)
    greeting = fake_agent.reply_audio_for(LONG_GREETING)
    await call.wait_heard(len(greeting), timeout=10)
    assert bytes(call.heard)[: len(greeting)] == greeting
    assert fake_agent.connections == 3
    await call.hangup()
    await session.wait_for("session.end")


async def test_slow_accept_still_connects(sim: TwilioSimulator, fake_agent: FakeVoiceAgent) -> None:
    fake_agent.connect_failures.append(ConnectFailure(code="", accept_delay=1.5))
    call = await sim.place_inbound_call()
    session = await fake_agent.wait_for_session(timeout=10)
    await session.wait_sent("reply.audio", timeout=5)
    assert session.audio_before_ready == 0
    assert fake_agent.connections == 1
    await call.hangup()


@BOTH_AGENT_SOCKETS
async def test_agent_gone_for_good_ends_with_an_apology(start_server: ServerFactory) -> None:
    async with FakeVoiceAgent(api_key=API_KEY) as agent:
        server = await start_server(
            bot=BOT, assemblyai_agent_url=agent.url, callbridge_agent_retry_seconds=1
        )
        async with TwilioSimulator(
            server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL, playback_rate=8000 * 16
        ) as s:
            agent.connect_failures.extend([ConnectFailure(http_status=503)] * 50)
            call = await s.place_inbound_call()
            await call.wait_ended(timeout=15)
            assert call.end_reason == "hangup-verb"  # the <Redirect> after </Connect>: <Hangup>
            assert len(call.heard) > 8000  # the apology
            assert agent.sessions == []
