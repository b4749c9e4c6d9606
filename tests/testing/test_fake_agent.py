"""FakeVoiceAgent over real loopback sockets, driven the way a client would drive the API."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from callbridge.testing import audio
from callbridge.testing.agent_schema import AgentSchema, load_document
from callbridge.testing.fake_agent import (
    DEFAULT_VOICES,
    TOOL_TIMEOUT_APOLOGY,
    ConnectFailure,
    FakeSession,
    FakeVoiceAgent,
    ScriptedTurn,
)

PACE = 4.0
KEY = "test-key"
PCMU = {"encoding": "audio/pcmu"}
TELEPHONY: dict[str, Any] = {
    "input": {"format": PCMU},
    "output": {"voice": "eve", "format": PCMU},
}
TALK = audio.tone(440, 200)  # loud enough to be speech
PAUSE = audio.silence(400)  # longer than the end-of-turn silence

Event = dict[str, Any]


class Client:
    """A bare Voice Agent API client: what the bridge does, minus the bridge."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[Event] = []

    async def send(self, message: Event) -> None:
        await self.ws.send_str(json.dumps(message))

    async def send_audio(self, data: bytes, frame: int = audio.FRAME_BYTES) -> None:
        for i in range(0, len(data), frame):
            chunk = base64.b64encode(data[i : i + frame]).decode()
            await self.send({"type": "input.audio", "audio": chunk})

    async def recv(self, timeout: float = 3.0) -> Event:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg}"
        event: Event = json.loads(msg.data)
        self.events.append(event)
        return event

    async def recv_until(self, match: str | Callable[[Event], bool], timeout: float = 3.0) -> Event:
        def check(e: Event) -> bool:
            return e.get("type") == match if isinstance(match, str) else match(e)

        while True:
            event = await self.recv(timeout)
            if check(event):
                return event

    async def expect_close(self, timeout: float = 3.0) -> int | None:
        """Read to the close frame (events before it are recorded); returns the code."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.events.append(json.loads(msg.data))
                continue
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            return self.ws.close_code

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


Connect = Callable[..., Awaitable[Client]]
MakeFake = Callable[..., Awaitable[FakeVoiceAgent]]


@pytest.fixture
async def make_fake() -> AsyncIterator[MakeFake]:
    """Start fakes (fast pace, own-event validation on); check them when the test ends."""
    fakes: list[FakeVoiceAgent] = []

    async def make(**kwargs: Any) -> FakeVoiceAgent:
        kwargs.setdefault("pace", PACE)
        kwargs.setdefault("validate_own_events", True)
        fake = FakeVoiceAgent(**kwargs)
        await fake.start()
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        await fake.stop()
    for fake in fakes:
        assert [v for v in fake.violations if v.startswith("fake sent:")] == []
        assert fake.errors == []


@pytest.fixture
async def fake(make_fake: MakeFake) -> FakeVoiceAgent:
    return await make_fake()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    async with aiohttp.ClientSession() as http:

        async def open_(
            fake: FakeVoiceAgent, headers: dict[str, str] | None = None, url: str | None = None
        ) -> Client:
            if headers is None:
                headers = {"Authorization": f"Bearer {KEY}"}
            ws = await http.ws_connect(url or fake.url, headers=headers)
            return Client(ws)

        yield open_


async def start_session(
    fake: FakeVoiceAgent, connect: Connect, **fields: Any
) -> tuple[Client, FakeSession, Event]:
    """Connect, send session.update (telephony defaults), read updated + ready."""
    client = await connect(fake)
    await client.send({"type": "session.update", "session": {**TELEPHONY, **fields}})
    assert (await client.recv())["type"] == "session.updated"
    ready = await client.recv()
    assert ready["type"] == "session.ready"
    session = next(s for s in fake.sessions if s.session_id == ready["session_id"])
    return client, session, ready


def audio_of(events: list[Event], reply_id: str) -> bytes:
    return b"".join(
        base64.b64decode(e["data"])
        for e in events
        if e["type"] == "reply.audio" and e["reply_id"] == reply_id
    )


# --- connection and set-up -------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer wrong"}, {"Authorization": "wrong"}, {}],
    ids=["bad-bearer", "bad-raw", "missing"],
)
async def test_bad_auth_gets_unauthorized_then_1008(
    fake: FakeVoiceAgent, connect: Connect, headers: dict[str, str]
) -> None:
    client = await connect(fake, headers=headers)
    error = await client.recv()
    assert error["type"] == "session.error"
    assert error["code"] == "unauthorized"
    assert error["message"] == "Authentication failed"
    assert error["session_id"] is None and error["param"] is None
    assert isinstance(error["timestamp"], float)
    assert await client.expect_close() == 1008
    assert fake.sessions == []
    assert fake.connections == 1


@pytest.mark.parametrize("how", ["raw-header", "token-query"])
async def test_raw_key_and_token_query_are_accepted(
    fake: FakeVoiceAgent, connect: Connect, how: str
) -> None:
    if how == "raw-header":
        client = await connect(fake, headers={"Authorization": KEY})
    else:
        client = await connect(fake, headers={}, url=f"{fake.url}?token={KEY}")
    await client.send({"type": "session.update", "session": TELEPHONY})
    assert (await client.recv())["type"] == "session.updated"
    assert (await client.recv())["type"] == "session.ready"


async def test_nothing_sent_before_first_message(fake: FakeVoiceAgent, connect: Connect) -> None:
    client = await connect(fake)
    with pytest.raises(asyncio.TimeoutError):
        await client.ws.receive(timeout=0.2)  # asserting absence needs a bounded wait
    assert fake.sessions == []


async def test_updated_then_ready_with_resolved_config(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    client = await connect(fake)
    tool = {"type": "function", "name": "lookup_order", "parameters": {"type": "object"}}
    await client.send(
        {
            "type": "session.update",
            "session": {**TELEPHONY, "system_prompt": "Be brief.", "tools": [tool]},
        }
    )
    updated = await client.recv()
    ready = await client.recv()
    assert [updated["type"], ready["type"]] == ["session.updated", "session.ready"]
    config = ready["config"]
    assert config == updated["config"]
    assert config["system_prompt"] == "Be brief."
    assert config["greeting"] is None
    assert config["input"]["type"] == "audio"
    assert config["input"]["format"] == {"encoding": "audio/pcmu", "sample_rate": 8000}
    assert config["input"]["turn_detection"] is None
    assert config["output"] == {
        "type": "audio",
        "voice": "eve",
        "format": {"encoding": "audio/pcmu", "sample_rate": 8000},
        "volume": None,
    }
    echoed = config["tools"][0]
    assert echoed["name"] == "lookup_order"
    assert echoed["timeout_seconds"] == 120
    assert echoed["execution_mode"] == "interactive"
    assert echoed["description"] == ""
    assert config["llm"] == [] and config["pre_connect_requests"] == []
    assert re.fullmatch(r"sess_[0-9a-f]{32}", ready["session_id"])
    assert isinstance(ready["expires_at"], int)
    assert abs(ready["expires_at"] - (time.time() + 3595)) < 5
    assert isinstance(ready["resume_token"], str) and ready["resume_token"]
    session = await fake.wait_for_session(0)
    assert session.session_id == ready["session_id"]
    assert session.config == config
    assert [e["type"] for e in session.sent] == ["session.updated", "session.ready"]
    assert session.received[0]["type"] == "session.update"


async def test_defaults_are_pcm_24k_and_alba(fake: FakeVoiceAgent, connect: Connect) -> None:
    client = await connect(fake)
    await client.send({"type": "session.update", "session": {"greeting": "Hi"}})
    await client.recv_until("session.ready")
    config = fake.sessions[0].config
    assert config["input"]["format"] == {"encoding": "audio/pcm", "sample_rate": 24000}
    assert config["output"]["voice"] == "alba"
    started = await client.recv_until("reply.started")
    await client.recv_until("reply.done")
    pcm = audio_of(client.events, started["reply_id"])
    # mu-law upsampled 8k -> 24k PCM16: 6 bytes per mu-law byte, 10 ms (480 B) chunks
    assert len(pcm) == 6 * len(fake.reply_audio_for("Hi"))
    chunks = [e for e in client.events if e["type"] == "reply.audio"]
    assert all(len(base64.b64decode(c["data"])) == 480 for c in chunks[:-1])


async def test_pcm16_input_turn_and_alaw_output(fake: FakeVoiceAgent, connect: Connect) -> None:
    client, _, _ = await start_session(
        fake,
        connect,
        input={"format": {"encoding": "audio/pcm"}},
        output={"format": {"encoding": "audio/pcma"}},
    )
    # 24 kHz PCM16 (sample-and-hold from the mu-law tone): 6 bytes per mu-law byte
    pcm = array("h", (s for s in audio.ulaw_decode(TALK + PAUSE) for _ in range(3)))
    if sys.byteorder == "big":
        pcm.byteswap()
    await client.send_audio(pcm.tobytes(), frame=2400)
    started = await client.recv_until("reply.started")
    assert client.types()[2] == "input.speech.started"
    await client.recv_until("reply.done")
    alaw = audio_of(client.events, started["reply_id"])
    assert len(alaw) == len(fake.reply_audio_for(ScriptedTurn().reply))
    assert alaw[:800] == bytes([0xD5]) * 800  # A-law silence


def test_alaw_round_trip() -> None:
    for value in (-32768, -20000, -1000, -100, -8, 0, 8, 100, 1000, 20000, 32767):
        [decoded] = audio.alaw_decode(audio.alaw_encode([value]))
        assert abs(decoded - value) <= max(16, abs(value) // 16), value
    assert audio.alaw_encode([0]) == b"\xd5"


@pytest.mark.parametrize(
    ("session", "code", "param", "close"),
    [
        ({"output": {"voice": "ivy"}}, "invalid_value", "output.voice", 1008),
        ({"agent_id": "agent_" + "0" * 32, "greeting": "Hi"}, "invalid_value", "agent_id", 1008),
        ({"agent_id": "agent_" + "0" * 32}, "agent_not_found", "agent_id", 1008),
        ({"llm": [{"provider": "openai"}]}, "invalid_value", "llm", 1008),
        ({"greeting": None}, "invalid_format", "greeting", 1008),
        ({"bogus": 1}, "invalid_format", None, 1008),
        (
            {"input": {"format": {"encoding": "audio/pcm", "sample_rate": 16000}}},
            "internal_error",
            None,
            1011,
        ),
        (
            {"tools": [{"type": "function", "name": "t", "parameters": {"properties": []}}]},
            "invalid_value",
            "tools[0].parameters.properties",
            1008,
        ),
    ],
    ids=[
        "voice",
        "agent-id-mixed",
        "agent-unknown",
        "llm",
        "null-greeting",
        "unknown-key",
        "pcm16k",
        "tool-props",
    ],
)
async def test_bad_first_update_is_fatal(
    fake: FakeVoiceAgent,
    connect: Connect,
    session: Event,
    code: str,
    param: str | None,
    close: int,
) -> None:
    client = await connect(fake)
    await client.send({"type": "session.update", "session": session})
    error = await client.recv()
    assert error["type"] == "session.error"
    assert (error["code"], error["param"]) == (code, param)
    assert await client.expect_close() == close
    assert fake.sessions == []
    assert len(fake.violations) == 1


async def test_invalid_voice_message_lists_valid_voices(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    client = await connect(fake)
    await client.send({"type": "session.update", "session": {"output": {"voice": "claire"}}})
    error = await client.recv()
    assert "claire" in error["message"]
    assert all(voice in error["message"] for voice in DEFAULT_VOICES)


async def test_stored_agent(make_fake: MakeFake, connect: Connect) -> None:
    agent_id = "agent_" + "a" * 32
    fake = await make_fake(agents={agent_id: {"system_prompt": "Stored.", **TELEPHONY}})
    client = await connect(fake)
    await client.send({"type": "session.update", "session": {"agent_id": agent_id}})
    ready = await client.recv_until("session.ready")
    assert ready["config"]["id"] == agent_id
    assert ready["config"]["system_prompt"] == "Stored."


# --- speech out --------------------------------------------------------------------------


async def test_greeting_streams_exact_audio_in_300_byte_chunks_at_pace(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    greeting = "Hi, how can I help?"
    client, session, _ = await start_session(fake, connect, greeting=greeting)
    started = await client.recv()
    assert started["type"] == "reply.started"
    assert re.fullmatch(r"resp_[0-9a-f]{32}", started["reply_id"])
    assert re.fullmatch(r"msg_[0-9a-f]{32}", started["item_id"])
    arrivals: list[float] = []
    while True:
        event = await client.recv()
        if event["type"] == "reply.audio":
            arrivals.append(time.monotonic())
        if event["type"] == "reply.done":
            break
    reply_id = started["reply_id"]
    events = [e for e in client.events if e.get("reply_id") == reply_id]
    assert audio_of(events, reply_id) == fake.reply_audio_for(greeting)
    assert fake.reply_audio_for(greeting)[:800] == audio.silence(100)
    sizes = [len(base64.b64decode(e["data"])) for e in events if e["type"] == "reply.audio"]
    assert all(size == 300 for size in sizes[:-1]) and 0 < sizes[-1] <= 300
    deltas = [e for e in events if e["type"] == "transcript.agent.delta"]
    assert "".join(d["delta"] for d in deltas) == greeting
    assert deltas[0]["start_ms"] == 100 and deltas[0]["end_ms"] == 100 + 3 * 40
    final = events[-2]
    assert final["type"] == "transcript.agent"
    assert (final["text"], final["interrupted"]) == (greeting, False)
    assert events[-1] == {**events[-1], "type": "reply.done", "status": "completed"}
    # real-time pace (x PACE): the last chunk leaves no sooner than the audio before it
    # lasts, counted from the reply's start. The fake's own send times are used: a loaded
    # machine that delays the reader bunches arrivals, not the schedule.
    expected = (len(sizes) - 1) * 0.0375 / PACE
    audio_sent = [e["timestamp"] for e in events if e["type"] == "reply.audio"]
    assert audio_sent[-1] - started["timestamp"] >= expected * 0.9
    assert len(arrivals) == len(sizes)
    assert all(isinstance(e["timestamp"], float) for e in client.events)
    assert session.sent[-1]["type"] == "reply.done"


async def test_say_and_reply_create(fake: FakeVoiceAgent, connect: Connect) -> None:
    client, session, _ = await start_session(fake, connect)
    reply_id = await session.say("Yes.")
    done = await client.recv_until("reply.done")
    assert done["reply_id"] == reply_id
    assert audio_of(client.events, reply_id) == fake.reply_audio_for("Yes.")
    await client.send({"type": "reply.create", "instructions": "Tell a joke."})
    text = await client.recv_until("transcript.agent")
    assert text["text"] == "Tell a joke."
    assert fake.violations == []


# --- speech in ---------------------------------------------------------------------------


async def test_user_turn_from_loud_audio_then_silence(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    fake.turns.append(ScriptedTurn(user_text="what time is it", reply="Noon."))
    client, session, _ = await start_session(fake, connect)
    await client.send_audio(TALK + PAUSE)
    done = await client.recv_until("reply.done")
    types = client.types()
    assert types[:5] == [
        "session.updated",
        "session.ready",
        "input.speech.started",
        "transcript.user.delta",
        "input.speech.stopped",
    ]
    assert types[5:7] == ["transcript.user", "reply.started"]
    delta, final = client.events[3], client.events[5]
    assert delta["text"] == "what" and final["text"] == "what time is it"
    assert delta["item_id"] == final["item_id"]
    agent_text = next(e for e in client.events if e["type"] == "transcript.agent")
    assert agent_text["text"] == "Noon."
    assert audio_of(client.events, done["reply_id"]) == fake.reply_audio_for("Noon.")
    assert bytes(session.input_audio) == TALK + PAUSE
    assert (await session.wait_sent("transcript.user"))["text"] == "what time is it"
    assert (await session.wait_for("input.audio"))["type"] == "input.audio"
    assert not fake.turns  # consumed
    assert fake.violations == []


async def test_default_turn_when_script_is_empty(fake: FakeVoiceAgent, connect: Connect) -> None:
    client, _, _ = await start_session(fake, connect)
    await client.send_audio(TALK + PAUSE)
    user = await client.recv_until("transcript.user")
    agent = await client.recv_until("transcript.agent")
    assert (user["text"], agent["text"]) == (ScriptedTurn().user_text, ScriptedTurn().reply)


async def test_every_session_plays_the_script_after_the_shared_turns(
    make_fake: MakeFake, connect: Connect
) -> None:
    fake = await make_fake(
        script=[ScriptedTurn(user_text="one", reply="First."), ScriptedTurn(user_text="two")]
    )
    fake.turns.append(ScriptedTurn(user_text="queued", reply="Queued."))
    heard: list[list[str]] = []
    for _ in range(2):
        client, _, _ = await start_session(fake, connect)
        texts = []
        for _ in range(3):
            await client.send_audio(TALK + PAUSE)
            user = await client.recv_until("transcript.user")
            agent = await client.recv_until("transcript.agent")
            texts.append(f"{user['text']}: {agent['text']}")
        heard.append(texts)
        await client.ws.close()
    assert heard == [
        ["queued: Queued.", "one: First.", "two: I heard you."],
        ["one: First.", "two: I heard you.", "hello: I heard you."],
    ]


async def test_short_blip_and_short_pause_do_not_make_turns(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    client, session, _ = await start_session(fake, connect)
    blip = audio.tone(440, 40)  # under speech_start_ms (60)
    await client.send_audio(blip + audio.silence(400))
    await session.wait_input_audio(len(blip) + 3200)
    assert not [e for e in session.sent if e["type"] == "input.speech.started"]
    # speech, a pause shorter than end_of_turn_silence_ms, more speech: still one turn
    await client.send_audio(TALK + audio.silence(200) + TALK + PAUSE)
    await client.recv_until("input.speech.stopped")
    await session.wait_input_audio(len(session.input_audio))
    assert client.types().count("input.speech.started") == 1


async def test_barge_in_stops_reply_and_sends_three_events_back_to_back(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    greeting = "Hello there, and welcome to the test line of the fake agent."
    fake.turns.append(ScriptedTurn(user_text="stop", reply="Okay."))
    client, session, _ = await start_session(fake, connect, greeting=greeting)
    started = await client.recv_until("reply.started")
    greeting_id = started["reply_id"]
    # let a few characters' audio go out, then talk over it
    while len(audio_of(client.events, greeting_id)) < 800 + 5 * 320:
        await client.recv_until("reply.audio")
    await client.send_audio(audio.tone(440, 160))
    speech = await client.recv_until("input.speech.started")
    i = client.events.index(speech)
    text, done = await client.recv(), await client.recv()
    assert (text["type"], text["interrupted"]) == ("transcript.agent", True)
    assert (done["type"], done["status"], done["reply_id"]) == (
        "reply.done",
        "interrupted",
        greeting_id,
    )
    assert client.events[i + 1 : i + 3] == [text, done]
    heard = audio_of(client.events, greeting_id)
    assert heard == fake.reply_audio_for(greeting)[: len(heard)]
    assert len(heard) < len(fake.reply_audio_for(greeting))
    spoken_chars = (len(heard) - 800) // 320
    assert spoken_chars >= 5
    assert text["text"] == greeting[:spoken_chars]
    # the interrupting speech carries on as a normal turn
    await client.send_audio(PAUSE)
    user = await client.recv_until("transcript.user")
    assert user["text"] == "stop"
    answer = await client.recv_until("reply.done")
    after = client.events[i:]
    assert not [e for e in after if e["type"] == "reply.audio" and e["reply_id"] == greeting_id]
    assert audio_of(client.events, answer["reply_id"]) == fake.reply_audio_for("Okay.")
    sent_types = [e["type"] for e in session.sent]
    j = sent_types.index("input.speech.started")
    assert sent_types[j : j + 3] == ["input.speech.started", "transcript.agent", "reply.done"]
    assert fake.violations == []


async def test_no_barge_in_when_interrupt_response_is_false(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    greeting = "This greeting cannot be interrupted at all."
    client, _, _ = await start_session(
        fake,
        connect,
        greeting=greeting,
        input={"format": PCMU, "turn_detection": {"interrupt_response": False}},
    )
    await client.recv_until("reply.audio")
    await client.send_audio(audio.tone(440, 160))
    done = await client.recv_until("reply.done")
    assert done["status"] == "completed"
    assert "input.speech.started" not in client.types()


async def test_barge_in_api(fake: FakeVoiceAgent, connect: Connect) -> None:
    client, session, _ = await start_session(fake, connect, greeting="A long greeting to cut.")
    await client.recv_until("reply.audio")
    await session.barge_in()
    await client.recv_until("input.speech.started")
    assert (await client.recv())["type"] == "transcript.agent"
    done = await client.recv()
    assert (done["type"], done["status"]) == ("reply.done", "interrupted")


# --- tools -------------------------------------------------------------------------------

TOOL = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}


async def test_tool_call_with_arguments_result_after_reply_done(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    fake.turns.append(
        ScriptedTurn(
            tool_name="get_time", tool_arguments={"tz": "UTC"}, after_tool="It is {result}."
        )
    )
    client, session, _ = await start_session(fake, connect, tools=[TOOL])
    await client.send_audio(TALK + PAUSE)
    preamble = await client.recv_until("reply.started")
    call = await client.recv_until("tool.call")
    assert call["name"] == "get_time" and call["arguments"] == {"tz": "UTC"}
    assert "args" not in call
    assert call["call_id"].startswith("call_")
    done = await client.recv_until("reply.done")
    assert (done["reply_id"], done["status"]) == (preamble["reply_id"], "completed")
    pre_events = [e for e in client.events if e.get("reply_id") == preamble["reply_id"]]
    assert "transcript.agent" not in [e["type"] for e in pre_events]  # silent pre-amble
    assert set(audio_of(client.events, preamble["reply_id"])) == {0xFF}
    await client.send({"type": "tool.result", "call_id": call["call_id"], "result": "noon"})
    answer = await client.recv_until("transcript.agent")
    assert answer["text"] == "It is noon."
    assert session.tool_calls == [call]
    assert session.tool_results[call["call_id"]]["result"] == "noon"
    assert fake.violations == []


async def test_tool_call_legacy_args_result_before_reply_done(
    make_fake: MakeFake, connect: Connect
) -> None:
    fake = await make_fake(tool_hold_ms=4000)  # 1 s at PACE unless the result cuts it short
    fake.turns.append(
        ScriptedTurn(tool_name="get_time", tool_arguments='{"tz": "UTC"}', legacy_args=True)
    )
    client, _, _ = await start_session(fake, connect, tools=[TOOL])
    await client.send_audio(TALK + PAUSE)
    call = await client.recv_until("tool.call")
    called_at = time.monotonic()
    assert call["args"] == '{"tz": "UTC"}' and "arguments" not in call
    await client.send({"type": "tool.result", "call_id": call["call_id"], "result": "42"})
    done = await client.recv_until("reply.done")
    assert done["status"] == "completed"
    # the result, accepted before reply.done, closed the pre-amble early
    assert time.monotonic() - called_at < 0.5
    answer = await client.recv_until("transcript.agent")
    assert answer["text"] == "The result is 42."
    assert fake.violations == []


async def test_tool_timeout_apologises(make_fake: MakeFake, connect: Connect) -> None:
    fake = await make_fake(tool_timeout=0.2)
    fake.turns.append(ScriptedTurn(tool_name="get_time"))
    client, session, _ = await start_session(fake, connect, tools=[TOOL])
    await client.send_audio(TALK + PAUSE)
    call = await client.recv_until("tool.call")
    assert call["arguments"] == {}
    apology = await client.recv_until("transcript.agent")
    assert apology["text"] == TOOL_TIMEOUT_APOLOGY
    await client.recv_until("reply.done")
    # a late result is tolerated but makes no reply: the next reply is the one we ask for
    await client.send({"type": "tool.result", "call_id": call["call_id"], "result": "x"})
    await session.wait_for("tool.result")
    await session.say("Next.")
    text = await client.recv_until("transcript.agent")
    assert text["text"] == "Next."
    assert fake.violations == []


async def test_barge_in_during_a_tool_call_cancels_its_timeout_apology(
    make_fake: MakeFake, connect: Connect
) -> None:
    # The pre-amble holds the reply open long enough for the caller to talk over it; the
    # client then discards that call's result, as the API says, so no result ever comes.
    fake = await make_fake(tool_timeout=0.05, tool_hold_ms=8000)
    long_answer = "Sure, let me explain that slowly and carefully, one step at a time."
    fake.turns.append(ScriptedTurn(tool_name="get_time"))
    fake.turns.append(ScriptedTurn(user_text="never mind", reply=long_answer))
    client, session, _ = await start_session(fake, connect, tools=[TOOL])
    await client.send_audio(TALK + PAUSE)
    call = await client.recv_until("tool.call")
    await client.send_audio(TALK)
    await client.recv_until("input.speech.started")
    done = await client.recv_until("reply.done")
    assert done["status"] == "interrupted"
    # The next turn's answer streams for far longer than the tool's timeout.
    await client.send_audio(PAUSE)
    answer = await client.recv_until("transcript.agent")
    assert answer["text"] == long_answer
    await session.say("Next.")
    following = await client.recv_until("transcript.agent")
    assert following["text"] == "Next."
    spoken = [e["text"] for e in session.sent if e["type"] == "transcript.agent"]
    assert TOOL_TIMEOUT_APOLOGY not in spoken
    assert call["call_id"] not in session.tool_results
    assert fake.violations == []


async def test_tool_timeout_comes_from_session_config(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    tool = {**TOOL, "timeout_seconds": 1}
    client, session, _ = await start_session(fake, connect, tools=[tool])
    started = time.monotonic()
    call_id = await session.call_tool("get_time", {"a": 1})
    call = await client.recv_until("tool.call")
    assert call["call_id"] == call_id
    apology = await client.recv_until("transcript.agent", timeout=3)
    assert apology["text"] == TOOL_TIMEOUT_APOLOGY
    assert 0.9 <= time.monotonic() - started < 2.5


async def test_unknown_and_duplicate_tool_results_are_violations(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    client, session, _ = await start_session(fake, connect, tools=[TOOL])
    call_id = await session.call_tool("get_time", {})
    await client.recv_until("tool.call")
    for cid in ("call_nope", call_id, call_id):
        await client.send({"type": "tool.result", "call_id": cid, "result": "1"})
    results = 0

    def third_result(message: Event) -> bool:
        nonlocal results
        results += message.get("type") == "tool.result"
        return results == 3

    await session.wait_for(third_result)
    assert len(fake.violations) == 2
    assert "unknown call_id" in fake.violations[0]
    assert "answered twice" in fake.violations[1]


# --- ending, dropping, resuming ------------------------------------------------------------


async def test_session_end(fake: FakeVoiceAgent, connect: Connect) -> None:
    client, session, ready = await start_session(fake, connect)
    await client.send({"type": "session.end"})
    ended = await client.recv()
    assert ended["type"] == "session.ended"
    assert isinstance(ended["session_duration_seconds"], float)
    assert ended["audio_duration_seconds"] is None
    assert await client.expect_close() == 1000
    await asyncio.wait_for(session.ended.wait(), 1)
    assert session.end_reason == "session.end"
    assert not session.connected
    again = await connect(fake)
    await again.send({"type": "session.resume", "session_id": ready["session_id"]})
    error = await again.recv()
    assert error["code"] == "session_not_found"
    assert await again.expect_close() == 1008


async def test_server_initiated_end(fake: FakeVoiceAgent, connect: Connect) -> None:
    client, session, _ = await start_session(fake, connect)
    await session.end()
    assert (await client.recv())["type"] == "session.ended"
    assert await client.expect_close() == 1000
    assert session.end_reason == "server_end"


@pytest.mark.parametrize("how", ["abort", "server-close", "client-close"])
async def test_drop_then_resume_same_session_without_greeting(
    fake: FakeVoiceAgent, connect: Connect, how: str
) -> None:
    client, session, ready = await start_session(fake, connect, greeting="Hi.")
    await client.recv_until("reply.done")
    if how == "abort":
        await session.abort()
        assert await client.expect_close() in (1006, None)
    elif how == "server-close":
        await session.close(1001)
        assert await client.expect_close() == 1001
    else:
        await client.ws.close()
        await session._changes.until(lambda: None if session.connected else True, 2, "detach")
    assert not session.connected and not session.ended.is_set()

    again = await connect(fake)
    await again.send({"type": "session.resume", "session_id": ready["session_id"]})
    resumed = await again.recv()
    assert resumed["type"] == "session.ready"
    assert resumed["session_id"] == ready["session_id"]
    assert resumed["config"] == ready["config"]
    assert session.connected and len(fake.sessions) == 1
    # the session carries on: next thing is the caller's turn, not a replayed greeting
    await again.send_audio(TALK + PAUSE)
    assert (await again.recv())["type"] == "input.speech.started"
    await again.recv_until("reply.done")
    assert "reply.started" in again.types()
    assert fake.violations == []


async def test_resume_window_expires(make_fake: MakeFake, connect: Connect) -> None:
    fake = await make_fake(resume_window=0.2)
    client, session, ready = await start_session(fake, connect)
    await client.ws.close()
    await asyncio.wait_for(session.ended.wait(), 2)
    assert session.end_reason == "expired"
    again = await connect(fake)
    await again.send({"type": "session.resume", "session_id": ready["session_id"]})
    assert (await again.recv())["code"] == "session_not_found"
    assert await again.expect_close() == 1008


async def test_resume_unknown_session(fake: FakeVoiceAgent, connect: Connect) -> None:
    client = await connect(fake)
    await client.send({"type": "session.resume", "session_id": "sess_" + "0" * 32})
    error = await client.recv()
    assert (error["type"], error["code"]) == ("session.error", "session_not_found")
    assert await client.expect_close() == 1008


async def test_resume_with_resume_token_as_credential(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    _client, session, ready = await start_session(fake, connect)
    await session.abort()
    again = await connect(fake, headers={"Authorization": f"Bearer {ready['resume_token']}"})
    await again.send({"type": "session.resume", "session_id": ready["session_id"]})
    assert (await again.recv())["type"] == "session.ready"


# --- mid-session errors -------------------------------------------------------------------


async def test_immutable_fields_mid_session(fake: FakeVoiceAgent, connect: Connect) -> None:
    client, session, _ = await start_session(fake, connect, greeting="Hi.")
    await client.recv_until("reply.done")
    await client.send(
        {
            "type": "session.update",
            "session": {"output": {"voice": "paul"}, "system_prompt": "New."},
        }
    )
    error = await client.recv()
    assert (error["code"], error["param"]) == ("immutable_field", "output.voice")
    assert error["session_id"] == session.session_id
    updated = await client.recv()
    assert updated["type"] == "session.updated"
    assert updated["config"]["output"]["voice"] == "eve"
    assert updated["config"]["system_prompt"] == "New."
    for change, param in [
        ({"greeting": "Bye."}, "greeting"),
        ({"output": {"format": {"encoding": "audio/pcm"}}}, "output.format"),
    ]:
        await client.send({"type": "session.update", "session": change})
        error = await client.recv_until("session.error")
        assert (error["code"], error["param"]) == ("immutable_field", param)
    await client.send({"type": "session.update", "session": {"agent_id": "agent_x"}})
    assert (await client.recv_until("session.error"))["code"] == "agent_id_not_first"
    # unchanged immutable values and mutable fields are fine
    await client.send({"type": "session.update", "session": {**TELEPHONY, "greeting": "Hi."}})
    assert (await client.recv())["type"] == "session.updated"
    assert session.connected
    assert len(fake.violations) == 4


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_format"),
        (json.dumps({"type": "no.such.type"}), "invalid_format"),
        (json.dumps({"type": "tool.result", "call_id": "c", "result": 42}), "invalid_format"),
        (json.dumps({"type": "input.audio"}), "invalid_format"),
        (json.dumps({"type": "input.audio", "audio": "not base64!"}), "invalid_audio"),
        (
            json.dumps({"type": "conversation.message", "role": "bot", "content": "x"}),
            "invalid_format",
        ),
        (b"\x00\x01", "invalid_format"),
    ],
    ids=[
        "json",
        "unknown-type",
        "tool-result-int",
        "audio-missing",
        "audio-b64",
        "conv-role",
        "binary",
    ],
)
async def test_bad_client_messages_are_reported_and_recorded(
    fake: FakeVoiceAgent, connect: Connect, frame: str | bytes, code: str
) -> None:
    client, session, _ = await start_session(fake, connect)
    if isinstance(frame, bytes):
        await client.ws.send_bytes(frame)
    else:
        await client.ws.send_str(frame)
    error = await client.recv()
    assert (error["type"], error["code"]) == ("session.error", code)
    assert len(fake.violations) == 1
    assert fake.violations[0].startswith(session.session_id)
    # the session stays open and usable
    await client.send({"type": "session.update", "session": {"system_prompt": "x"}})
    assert (await client.recv())["type"] == "session.updated"


async def test_unknown_type_message_text(fake: FakeVoiceAgent, connect: Connect) -> None:
    client, _, _ = await start_session(fake, connect)
    await client.send({"type": "bogus"})
    assert (await client.recv())["message"] == "Unknown message type: bogus"
    await client.ws.send_str("[1")
    assert (await client.recv())["message"] == "Invalid JSON format."


async def test_audio_before_ready_is_dropped_and_counted(
    make_fake: MakeFake, connect: Connect
) -> None:
    fake = await make_fake(ready_delay=0.2)
    client = await connect(fake)
    frame = base64.b64encode(audio.silence(20)).decode()
    await client.send({"type": "input.audio", "audio": frame})
    await client.send({"type": "session.update", "session": TELEPHONY})
    await client.send({"type": "input.audio", "audio": frame})
    await client.recv_until("session.ready")
    session = fake.sessions[0]
    await client.send({"type": "input.audio", "audio": frame})
    await session.wait_input_audio(160)
    assert session.audio_before_ready == 2
    assert len(session.input_audio) == 160
    assert len(fake.violations) == 2
    assert [m["type"] for m in session.received][:3] == [
        "input.audio",
        "session.update",
        "input.audio",
    ]


async def test_audio_faster_than_real_time(make_fake: MakeFake, connect: Connect) -> None:
    fake = await make_fake(pace=1.0)
    client, session, _ = await start_session(fake, connect)
    await client.send_audio(audio.silence(3000))  # 3 s of audio in a burst
    error = await client.recv_until("session.error")
    assert error["code"] == "audio_rate_violation"
    await session.wait_input_audio(24000)
    assert len(fake.violations) == 1  # at most one per second
    assert "faster than real time" in fake.violations[0]


# --- fault injection ----------------------------------------------------------------------


async def test_connect_failure_error_code(fake: FakeVoiceAgent, connect: Connect) -> None:
    fake.connect_failures.append(ConnectFailure())
    fake.connect_failures.append(ConnectFailure(code="internal_error", close_code=1011))
    for code, close in [("at_capacity", 1008), ("internal_error", 1011)]:
        client = await connect(fake)
        await client.send({"type": "session.update", "session": TELEPHONY})
        error = await client.recv()
        assert (error["type"], error["code"]) == ("session.error", code)
        assert await client.expect_close() == close
    client, _, _ = await start_session(fake, connect)  # the next one works
    assert fake.connections == 3 and len(fake.sessions) == 1


async def test_connect_failure_http_status_and_delay(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    fake.connect_failures.append(ConnectFailure(http_status=503))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await connect(fake)
    assert info.value.status == 503
    fake.connect_failures.append(ConnectFailure(code="", accept_delay=0.2))
    started = time.monotonic()
    await start_session(fake, connect)
    assert time.monotonic() - started >= 0.2
    assert fake.connections == 2


async def test_send_error_with_close_code_is_fatal(fake: FakeVoiceAgent, connect: Connect) -> None:
    client, session, _ = await start_session(fake, connect)
    await session.send_error("internal_error", "boom", close_code=1011)
    error = await client.recv()
    assert (error["code"], error["message"]) == ("internal_error", "boom")
    assert await client.expect_close() == 1011
    assert session.end_reason == "error:internal_error"


# --- schema ------------------------------------------------------------------------------


def test_schema_rejects_bad_messages_and_accepts_documented_examples() -> None:
    schema = AgentSchema()
    assert schema.validate_client({"type": "tool.result", "call_id": "c", "result": "ok"}) == []
    problems = schema.validate_client({"type": "tool.result", "call_id": "c", "result": 1})
    assert problems and "result" in problems[0]
    assert schema.validate_client({"type": "nope"}) != []
    assert schema.validate_client({"type": "reply.done"}) != []  # a server type
    assert schema.validate_server({"type": "reply.done", "status": "completed"}) == []
    assert schema.validate_server({"type": "reply.done", "status": "weird"}) != []
    assert schema.validate_server({"type": "tool.call", "call_id": "c"}) != []  # no name
    examples = load_document()["components"]["messages"]["SessionUpdate"]["examples"]
    for example in examples:
        assert schema.validate_client(example["payload"]) == []


async def test_own_events_validate_clean(fake: FakeVoiceAgent, connect: Connect) -> None:
    fake.turns.append(ScriptedTurn(tool_name="get_time", tool_arguments={"x": 1}))
    client, session, _ = await start_session(fake, connect, greeting="Hi.", tools=[TOOL])
    await client.recv_until("reply.done")
    await client.send_audio(TALK + PAUSE)
    call = await client.recv_until("tool.call")
    await client.send({"type": "tool.result", "call_id": call["call_id"], "result": "1"})
    await client.recv_until(lambda e: e["type"] == "transcript.agent")
    await client.send({"type": "session.end"})
    await client.expect_close()
    seen = {e["type"] for e in session.sent}
    assert {"session.ready", "reply.audio", "tool.call", "session.ended"} <= seen
    assert fake.validate_own_events
    assert fake.violations == []


async def test_own_event_validation_catches_bad_events(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    _, session, _ = await start_session(fake, connect)
    await session.send({"type": "reply.done", "status": "bogus"})
    assert [v for v in fake.violations if v.startswith("fake sent:")]
    fake.violations.clear()  # keep the fixture's own-event check meaningful for others


# --- lifecycle -----------------------------------------------------------------------------


async def test_stop_leaves_no_tasks(connect: Connect) -> None:
    fake = FakeVoiceAgent(pace=PACE, tool_timeout=60)
    await fake.start()
    client, session, _ = await start_session(fake, connect, greeting="A greeting still playing.")
    await client.recv_until("reply.audio")
    await session.call_tool("get_time", {})
    _, code = await asyncio.gather(fake.stop(), client.expect_close())
    assert code == 1001
    assert session.ended.is_set() and session.end_reason == "stopped"
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []
    assert fake.errors == []
