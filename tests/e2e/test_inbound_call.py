"""Inbound calls end to end: the real server between the Twilio simulator and the fake
Voice Agent API, over loopback sockets."""

from __future__ import annotations

import asyncio
import base64
import re

import pytest

from callbridge import fast_path as fast_path_module
from callbridge.app import load_apology
from callbridge.bot import Bot, generate_random_number
from callbridge.bridge.playout_ledger import MARK_EVERY_BYTES
from callbridge.testing.audio import FRAME_BYTES, silence, tone
from callbridge.testing.fake_agent import FakeVoiceAgent, ScriptedTurn
from callbridge.testing.twilio_simulator import TwilioSimulator
from callbridge.tools import ToolError, tool
from tests.conftest import (
    AUTH_TOKEN,
    BOTH_AUDIO_PATHS,
    BOTH_STREAM_SERVERS,
    PUBLIC_URL,
    RunningServer,
    ServerFactory,
)
from tests.helpers.log_events import caught

GREETING = "Hello there."


@tool(timeout_seconds=1)
async def stall() -> str:
    """Never answers in time."""
    await asyncio.Event().wait()
    return "never"


@tool
def explode() -> str:
    """Always fails."""
    raise RuntimeError("internal detail that must not reach the model")


@tool
def refuse() -> str:
    """Fails with a message for the model."""
    raise ToolError("the shop is closed")


TEST_BOT = Bot(
    system_prompt="You are a test bot.",
    greeting=GREETING,
    tools=(generate_random_number, stall, explode, refuse),
)


def indexed_frames(count: int, marker: int = 0) -> bytes:
    """Quiet caller audio whose every 20 ms frame carries its own index.

    Digits are coded as μ-law bytes 0xE0-0xEF: near-silent, so the fake agent hears no
    speech, yet every frame is unique, so loss, reordering or alteration shows.
    """
    frames = []
    for index in range(count):
        digits = bytes(0xE0 + int(d, 16) for d in f"{marker:x}{index:04x}")
        frames.append(digits + bytes([0xFE]) * (FRAME_BYTES - len(digits)))
    return b"".join(frames)


def frame_indices(audio: bytes, marker: int = 0) -> list[int]:
    indices = []
    for start in range(0, len(audio) - FRAME_BYTES + 1, FRAME_BYTES):
        head = audio[start : start + 5]
        if not all(0xE0 <= b <= 0xEF for b in head) or head[0] - 0xE0 != marker:
            continue
        indices.append(int("".join(f"{b - 0xE0:x}" for b in head[1:5]), 16))
    return indices


@pytest.fixture
async def server(start_server: ServerFactory, fake_agent: FakeVoiceAgent) -> RunningServer:
    return await start_server(bot=TEST_BOT, assemblyai_agent_url=fake_agent.url)


@BOTH_STREAM_SERVERS
@BOTH_AUDIO_PATHS
async def test_greeting_reaches_the_caller_byte_exact(
    simulator: TwilioSimulator, fake_agent: FakeVoiceAgent
) -> None:
    call = await simulator.place_inbound_call()
    assert call.webhook_status == 200
    await call.wait_started()
    assert call.stream_url is not None
    assert re.match(r"wss://callbridge\.example\.test/media-stream/", call.stream_url)
    session = await fake_agent.wait_for_session()
    first = session.received[0]
    assert first["type"] == "session.update"
    assert first["session"]["greeting"] == GREETING
    assert first["session"]["input"]["format"]["encoding"] == "audio/pcmu"
    assert first["session"]["output"]["format"]["encoding"] == "audio/pcmu"
    expected = fake_agent.reply_audio_for(GREETING)
    await call.wait_heard(len(expected))
    await call.wait_playback_idle()
    assert bytes(call.heard) == expected
    assert call.custom_parameters["direction"] == "inbound"
    assert call.custom_parameters["from"] == call.from_


@BOTH_AUDIO_PATHS
@BOTH_STREAM_SERVERS
async def test_caller_audio_reaches_the_agent_in_order_and_only_after_ready(
    simulator: TwilioSimulator, fake_agent: FakeVoiceAgent
) -> None:
    count = 100
    audio = indexed_frames(count)
    call = await simulator.place_inbound_call(caller_audio=audio)
    session = await fake_agent.wait_for_session()
    last = base64.b64encode(audio[-FRAME_BYTES:]).decode()
    await session.wait_for(lambda m: m.get("audio") == last)
    received = bytes(session.input_audio)
    indices = frame_indices(received)
    assert indices, "no caller audio reached the agent"
    # Contiguous up to the last frame sent: nothing lost, duplicated or reordered after ready.
    assert indices == list(range(indices[0], count))
    offset = received.index(audio[indices[0] * FRAME_BYTES : (indices[0] + 1) * FRAME_BYTES])
    assert (
        received[offset : offset + len(audio) - indices[0] * FRAME_BYTES]
        == (audio[indices[0] * FRAME_BYTES :])
    )
    assert session.audio_before_ready == 0
    await call.hangup()


@BOTH_AUDIO_PATHS
@BOTH_STREAM_SERVERS
async def test_barge_in_clears_twilio_at_once(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    long_greeting = "This greeting goes on for quite a while, long enough to interrupt it."
    bot = Bot(system_prompt="x", greeting=long_greeting)
    server = await start_server(bot=bot, assemblyai_agent_url=fake_agent.url)
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        call = await sim.place_inbound_call()
        session = await fake_agent.wait_for_session()
        await call.wait_heard(4000)  # half a second of the greeting has played
        call.speak(tone(440, 400) + silence(600))
        await session.wait_sent("input.speech.started")
        await call.wait_received("clear")
        await call.wait_playback_idle()
        full = fake_agent.reply_audio_for(long_greeting)
        heard = bytes(call.heard)
        assert call.clears >= 1
        assert len(heard) < len(full)
        assert full.startswith(heard)
        done = await session.wait_sent("reply.done")
        assert done["status"] == "interrupted"
        assert call.warnings == []


@BOTH_AUDIO_PATHS
@BOTH_STREAM_SERVERS
async def test_tool_round_trip_from_a_spoken_turn(
    simulator: TwilioSimulator, fake_agent: FakeVoiceAgent
) -> None:
    fake_agent.turns.append(
        ScriptedTurn(
            user_text="give me a number",
            tool_name="generate_random_number",
            tool_arguments={"minimum": 7, "maximum": 7},
            after_tool="You got {result}.",
        )
    )
    call = await simulator.place_inbound_call()
    session = await fake_agent.wait_for_session()
    greeting = fake_agent.reply_audio_for(GREETING)
    await call.wait_heard(len(greeting))
    call.speak(tone(300, 300) + silence(500))
    result = await session.wait_for("tool.result")
    assert result["result"] == "7"
    assert result["is_error"] is False
    await session.wait_sent(
        lambda e: e["type"] == "transcript.agent" and e.get("text") == "You got 7.", timeout=10
    )
    # Not "playback idle": it may be idle for a moment before the reply's frames arrive.
    await call.wait_heard_ending(fake_agent.reply_audio_for("You got 7."), timeout=10)


@pytest.mark.parametrize(
    ("name", "arguments", "legacy", "expected", "is_error"),
    [
        ("generate_random_number", {"minimum": 3, "maximum": 3}, False, "3", False),
        ("generate_random_number", '{"minimum": 4, "maximum": 4}', True, "4", False),
        ("generate_random_number", {"minimum": "lots"}, False, "invalid arguments", True),
        ("explode", {}, False, "explode failed", True),
        ("refuse", {}, False, "the shop is closed", True),
        ("stall", {}, False, "timed out", True),
        ("no_such_tool", {}, False, "unknown tool", True),
    ],
)
async def test_every_tool_call_gets_a_result(
    simulator: TwilioSimulator,
    fake_agent: FakeVoiceAgent,
    name: str,
    arguments: dict[str, object] | str,
    legacy: bool,
    expected: str,
    is_error: bool,
) -> None:
    await simulator.place_inbound_call()
    session = await fake_agent.wait_for_session()
    await session.wait_sent("reply.done")  # the greeting
    call_id = await session.call_tool(name, arguments, legacy_args=legacy)
    result = await session.wait_for(
        lambda m: m.get("type") == "tool.result" and m.get("call_id") == call_id
    )
    assert result["is_error"] is is_error
    assert expected in result["result"]
    assert "internal detail" not in result["result"]


@BOTH_STREAM_SERVERS
async def test_caller_hangup_ends_the_agent_session(
    simulator: TwilioSimulator, fake_agent: FakeVoiceAgent
) -> None:
    call = await simulator.place_inbound_call()
    session = await fake_agent.wait_for_session()
    await session.wait_sent("session.ready")
    await call.hangup()
    await session.wait_for("session.end")
    await asyncio.wait_for(session.ended.wait(), 5)
    assert session.end_reason == "session.end"


@BOTH_STREAM_SERVERS
async def test_agent_ending_the_session_hangs_up(
    simulator: TwilioSimulator, fake_agent: FakeVoiceAgent
) -> None:
    call = await simulator.place_inbound_call()
    session = await fake_agent.wait_for_session()
    await session.wait_sent("reply.done")
    await session.end()
    await call.wait_ended()
    assert call.end_reason == "hangup-verb"  # the <Redirect> after </Connect>: <Hangup>


async def test_fatal_upstream_error_apologises_and_hangs_up(
    server: RunningServer, fake_agent: FakeVoiceAgent
) -> None:
    apology = b"".join(load_apology()[0])
    # Play the caller's loudspeaker 16x faster so the 6 s apology takes well under a second.
    async with TwilioSimulator(
        server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL, playback_rate=8000 * 16
    ) as sim:
        call = await sim.place_inbound_call()
        session = await fake_agent.wait_for_session()
        await session.wait_sent("session.ready")
        # Never retried: the key was revoked, say.
        await session.send_error("unauthorized", "Authentication failed", close_code=1008)
        await call.wait_ended(timeout=10)
        assert call.end_reason == "hangup-verb"  # the <Redirect> after </Connect>: <Hangup>
        assert bytes(call.heard).endswith(apology)
        assert call.marks and call.marks[-1][1] is True  # hung up after it was played
        assert call.warnings == []


async def test_rejected_first_update_apologises_and_hangs_up(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    server = await start_server(bot=TEST_BOT, assemblyai_agent_url=fake_agent.url, agent_voice="zz")
    async with TwilioSimulator(
        server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL, playback_rate=8000 * 16
    ) as sim:
        call = await sim.place_inbound_call()
        await call.wait_ended(timeout=10)
        apology = b"".join(load_apology()[0])
        assert bytes(call.heard) == apology
    assert fake_agent.sessions == []
    # The fake rightly flags the bad voice; that was the point of this test.
    assert len(fake_agent.violations) == 1 and "Invalid voice 'zz'" in fake_agent.violations[0]
    fake_agent.violations.clear()


async def test_unreachable_agent_apologises(start_server: ServerFactory) -> None:
    server = await start_server(
        assemblyai_agent_url="ws://127.0.0.1:9/v1/ws", callbridge_agent_retry_seconds=1
    )
    async with TwilioSimulator(
        server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL, playback_rate=8000 * 16
    ) as sim:
        call = await sim.place_inbound_call()
        await call.wait_ended(timeout=10)
        assert len(call.heard) > 8000
        assert call.end_reason == "hangup-verb"  # the <Redirect> after </Connect>: <Hangup>


async def test_two_calls_stay_independent(
    simulator: TwilioSimulator, fake_agent: FakeVoiceAgent
) -> None:
    audio_a, audio_b = indexed_frames(60, marker=1), indexed_frames(60, marker=2)
    call_a = await simulator.place_inbound_call(caller_audio=audio_a, from_="+15550000001")
    call_b = await simulator.place_inbound_call(caller_audio=audio_b, from_="+15550000002")
    session_0 = await fake_agent.wait_for_session(0)
    session_1 = await fake_agent.wait_for_session(1)
    for session in (session_0, session_1):
        await session.wait_input_audio(60 * FRAME_BYTES)
    by_marker = {}
    for session in (session_0, session_1):
        audio = bytes(session.input_audio)
        markers = {m for m in (1, 2) if frame_indices(audio, m)}
        assert len(markers) == 1, "one call's audio reached the other call's agent"
        by_marker[markers.pop()] = session
    assert set(by_marker) == {1, 2}
    # A barge-in on one call clears only that call.
    await session_0.barge_in()
    interrupted = call_a if session_0 is by_marker[1] else call_b
    other = call_b if interrupted is call_a else call_a
    await interrupted.wait_received("clear")
    assert other.clears == 0
    await call_a.hangup()
    await asyncio.wait_for(by_marker[1].ended.wait(), 5)
    assert not by_marker[2].ended.is_set()
    await session_1.wait_sent("reply.done")
    await call_b.hangup()


@BOTH_AUDIO_PATHS
async def test_the_fast_path_relays_most_audio_and_counts_it_as_the_bridge_would(
    simulator: TwilioSimulator, fake_agent: FakeVoiceAgent, fast_path: bool
) -> None:
    if fast_path and not fast_path_module.COMPILED:
        pytest.skip(f"the compiled fast path is {fast_path_module.WHY_NOT_COMPILED}")
    with caught() as events:
        call = await simulator.place_inbound_call(caller_audio=indexed_frames(100))
        session = await fake_agent.wait_for_session()
        expected = fake_agent.reply_audio_for(GREETING)
        await call.wait_heard(len(expected))
        await call.wait_playback_idle()
        await session.wait_input_audio(50 * FRAME_BYTES)
        await call.hangup()
        await events.wait_for("call.ended")
    assert bytes(call.heard) == expected
    (ended,) = events.fields_of("call.ended")
    (fast,) = events.fields_of("call.fast_path")
    relayed = fast["fast_path_frames"]
    assert isinstance(relayed, int)
    frames = ended["frames_to_agent"]
    assert isinstance(frames, int)
    # Counted once, whichever path relayed them: what the agent got, what the caller heard.
    assert frames == len(session.input_audio) // FRAME_BYTES
    assert ended["frames_to_twilio"] == sum(m["type"] == "reply.audio" for m in session.sent)
    # The same marks either way: with the first chunk, with the first audible one (after
    # the greeting's silent lead-in, well short of a quarter second), each quarter second,
    # at the end; each echoed as played, whichever path sent it and took its echo.
    names = [name for name, _ in call.marks]
    count = 2 + len(expected) // MARK_EVERY_BYTES + 1
    assert names == [f"cb-{n}" for n in range(count - 1)] + [f"cb-{count - 1}:end"]
    assert all(played for _, played in call.marks)
    if fast_path:
        assert relayed > frames // 2  # most frames; the first chunk goes the full way
        # The quarter-second marks, sent by the fast path and their echoes held for the
        # bridge (all of them unless a full-path event came between; the route is reset).
        assert 0 < fast["fast_path_marks"] <= count - 2
        assert 0 < fast["fast_path_echoes"] <= count - 1
    else:
        assert relayed == fast["fast_path_marks"] == fast["fast_path_echoes"] == 0


@BOTH_AUDIO_PATHS
async def test_caller_audio_in_unusual_base64_reaches_the_agent_decoded(
    simulator: TwilioSimulator, fake_agent: FakeVoiceAgent
) -> None:
    """The fast path relays only canonical base64 as it arrived; other valid forms (escaped
    slashes, stray bits under the padding) take the full path and arrive re-encoded."""
    call = await simulator.place_inbound_call(caller_audio=indexed_frames(5))
    session = await fake_agent.wait_for_session()
    await session.wait_input_audio(5 * FRAME_BYTES)
    stream_sid = call.stream_sid
    slashes = bytes([0xFF]) * FRAME_BYTES  # base64 "////...", sent as "\/\/\/\/..."
    escaped = base64.b64encode(slashes).decode().replace("/", "\\/")
    odd = bytes([0xEE]) * (FRAME_BYTES - 2)  # one "=" of padding, the bits before it set
    canonical = base64.b64encode(odd).decode()
    stray = canonical[:-2] + chr(ord(canonical[-2]) + 1) + "="
    assert base64.b64decode(stray) == odd and stray != canonical
    for payload in (escaped, stray):
        # Written out: a JSON encoder would escape the backslashes.
        media = '"media":{"payload":"' + payload + '"}'
        await call.send_raw('{"event":"media","streamSid":"' + str(stream_sid) + '",' + media + "}")
    await session.wait_for(lambda m: m.get("audio") == canonical)
    audio = [m["audio"] for m in session.received if m.get("type") == "input.audio"]
    assert audio.index(base64.b64encode(slashes).decode()) < audio.index(canonical)
    await call.hangup()
