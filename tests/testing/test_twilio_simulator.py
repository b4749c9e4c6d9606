"""TwilioSimulator against a tiny aiohttp "bridge" on loopback.

The bridge checks every signature with twilio's RequestValidator, answers TwiML, and lets
each test drive the Media Stream socket from the server side (send media/mark/clear,
read what the simulator sends, close).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from aiohttp import WSMsgType, web
from twilio.request_validator import RequestValidator

from callbridge.testing.audio import FRAME_BYTES, tone
from callbridge.testing.twilio_simulator import (
    CallEndedError,
    SimulatedCall,
    TwilioSimulator,
)

TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://bridge.example.com"

STREAM_TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
    '<Stream url="wss://bridge.example.com/media-stream/{CallSid}">'
    '<Parameter name="token" value="tok-{CallSid}" /><Parameter name="lang" value="en" />'
    "</Stream></Connect></Response>"
)


class ServerConn:
    """The bridge's end of one Media Stream socket, driven by the test."""

    def __init__(self, ws: web.WebSocketResponse, path: str, signature_ok: bool) -> None:
        self.ws = ws
        self.path = path
        self.signature_ok = signature_ok
        self.frames: list[dict[str, Any]] = []
        self.arrival: list[float] = []  # monotonic arrival time of each frame
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def stream_sid(self) -> str:
        return str(self.frames[1]["streamSid"])

    async def wait_frame(
        self, match: Callable[[dict[str, Any]], bool] | str, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first frame (already received or not) that matches."""
        matches: Callable[[dict[str, Any]], bool]
        if isinstance(match, str):
            name = match

            def matches(frame: dict[str, Any]) -> bool:
                return frame.get("event") == name
        else:
            matches = match
        async with asyncio.timeout(timeout):
            index = 0
            while True:
                while index < len(self.frames):
                    frame = self.frames[index]
                    index += 1
                    if matches(frame):
                        return frame
                if self.closed.is_set():
                    raise AssertionError(f"socket closed before {match!r}")
                self._changed.clear()
                await self._changed.wait()

    async def count(self, event: str, n: int, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for the n-th frame of this event; returns it."""
        seen = 0

        def nth(frame: dict[str, Any]) -> bool:
            nonlocal seen
            if frame.get("event") == event:
                seen += 1
            return seen >= n

        return await self.wait_frame(nth, timeout)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(msgspec.json.encode(message).decode())

    async def media(self, audio: bytes) -> None:
        payload = base64.b64encode(audio).decode()
        await self.send(
            {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
        )

    async def mark(self, name: str) -> None:
        await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def clear(self) -> None:
        await self.send({"event": "clear", "streamSid": self.stream_sid})

    def inbound_audio(self) -> bytes:
        return b"".join(
            base64.b64decode(f["media"]["payload"]) for f in self.frames if f["event"] == "media"
        )


class FakeBridge:
    """Plays callbridge: webhooks at any path, Media Streams at /media-stream/{id}."""

    def __init__(self) -> None:
        self.validator = RequestValidator(TOKEN)
        self.documents: dict[str, str] = {"/twiml": STREAM_TWIML}
        self.statuses: dict[str, int] = {}
        self.requests: list[tuple[str, dict[str, str], bool]] = []  # path, params, signed ok
        self.connections: asyncio.Queue[ServerConn] = asyncio.Queue()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/media-stream/{call_id}", self._ws)
        app.router.add_route("*", "/{tail:.*}", self._http)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _http(self, request: web.Request) -> web.Response:
        form = await request.post()
        params = {k: str(v) for k, v in form.items()}
        signed = self.validator.validate(
            PUBLIC + request.path_qs, params, request.headers.get("X-Twilio-Signature", "")
        )
        self.requests.append((request.path, params, signed))
        if not signed:
            return web.Response(status=403, text="bad signature")
        status = self.statuses.get(request.path, 200)
        body = self.documents.get(request.path, "<Response/>")
        return web.Response(
            status=status,
            text=body.replace("{CallSid}", params.get("CallSid", "")),
            content_type="text/xml",
        )

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        # Twilio signs the wss:// URL of the <Stream>, with no parameters (twilio.md §5).
        signed = self.validator.validate(
            "wss://bridge.example.com" + request.path_qs,
            {},
            request.headers.get("X-Twilio-Signature", ""),
        )
        if not signed:
            raise web.HTTPForbidden()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = ServerConn(ws, request.path_qs, signed)
        self.connections.put_nowait(conn)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                conn.frames.append(msgspec.json.decode(msg.data))
                conn.arrival.append(time.monotonic())
                conn._changed.set()
        conn.closed.set()
        conn._changed.set()
        return ws

    async def next_conn(self, timeout: float = 5.0) -> ServerConn:
        conn = await asyncio.wait_for(self.connections.get(), timeout)
        await conn.wait_frame("start")
        return conn


@pytest.fixture
async def bridge() -> AsyncIterator[FakeBridge]:
    server = FakeBridge()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def sim(bridge: FakeBridge) -> AsyncIterator[TwilioSimulator]:
    simulator = TwilioSimulator(
        bridge.url, auth_token=TOKEN, public_url=PUBLIC, playback_rate=80_000
    )
    yield simulator
    await simulator.close()


def _sim_tasks() -> list[asyncio.Task[Any]]:
    """Tasks running simulator code (sender, player, runner...)."""
    names = ("MediaStream.", "Loudspeaker.", "SimulatedCall.", "TwilioSimulator.")
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and t.get_coro().__qualname__.startswith(names)  # type: ignore[union-attr]
    ]


# -- webhook -------------------------------------------------------------------------------


async def test_webhook_is_signed_and_carries_inbound_fields(
    bridge: FakeBridge, sim: TwilioSimulator
) -> None:
    call = await sim.place_inbound_call(from_="+15551234567", to="+15557654321")
    path, params, signed = bridge.requests[0]
    assert (path, signed) == ("/twiml", True)
    assert params["CallSid"] == call.call_sid and len(call.call_sid) == 34
    assert call.call_sid.startswith("CA")
    assert params["AccountSid"] == sim.account_sid
    assert params["From"] == params["Caller"] == "+15551234567"
    assert params["To"] == params["Called"] == "+15557654321"
    assert params["CallStatus"] == "ringing"
    assert params["Direction"] == "inbound"
    assert params["ApiVersion"] == "2010-04-01"
    assert params["FromCity"] == "" and params["ToZip"] == ""
    assert call.webhook_status == 200
    assert "<Stream" in call.twiml
    conn = await bridge.next_conn()
    assert conn.signature_ok
    assert call.stream_url == f"wss://bridge.example.com/media-stream/{call.call_sid}"


async def test_bad_signature_is_refused_and_call_fails(
    bridge: FakeBridge, sim: TwilioSimulator
) -> None:
    call = await sim.place_inbound_call(signature="forged")
    assert call.webhook_status == 403
    assert call.end_reason == "webhook-failed"
    assert call.ended.is_set()
    assert bridge.requests[0][2] is False
    assert bridge.connections.empty()
    with pytest.raises(CallEndedError):
        await call.wait_started(timeout=0.5)


@pytest.mark.parametrize(
    ("status", "body"), [(500, "<Response/>"), (200, "hello, not TwiML"), (200, "<Foo/>")]
)
async def test_webhook_error_or_non_twiml_fails_the_call(
    bridge: FakeBridge, sim: TwilioSimulator, status: int, body: str
) -> None:
    bridge.statuses["/twiml"] = status
    bridge.documents["/twiml"] = body
    call = await sim.place_inbound_call()
    await call.wait_ended()
    assert call.end_reason == "webhook-failed"
    assert call.errors


# -- stream start and caller audio ---------------------------------------------------------


async def test_start_carries_parameters_and_counters_are_strings(bridge: FakeBridge) -> None:
    interval = 0.01
    async with TwilioSimulator(
        bridge.url, auth_token=TOKEN, public_url=PUBLIC, frame_interval=interval
    ) as sim:
        call = await sim.place_inbound_call()
        conn = await bridge.next_conn()
        connected, start = conn.frames[0], conn.frames[1]
        assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        assert start["sequenceNumber"] == "1"
        assert start["streamSid"] == start["start"]["streamSid"] == call.stream_sid
        assert call.stream_sid is not None and call.stream_sid.startswith("MZ")
        assert len(call.stream_sid) == 34
        assert start["start"]["callSid"] == call.call_sid
        assert start["start"]["accountSid"] == sim.account_sid
        assert start["start"]["tracks"] == ["inbound"]
        assert start["start"]["customParameters"] == {
            "token": f"tok-{call.call_sid}",
            "lang": "en",
        }
        assert call.custom_parameters == start["start"]["customParameters"]
        assert start["start"]["mediaFormat"] == {
            "encoding": "audio/x-mulaw",
            "sampleRate": 8000,
            "channels": 1,
        }
        first = await conn.wait_frame("media")
        began = time.monotonic()
        await conn.count("media", 26)
        elapsed = time.monotonic() - began
        # 25 frames after the first one: paced by frame_interval, not sent in a burst.
        assert elapsed >= 25 * interval * 0.8
        media = [f for f in conn.frames if f["event"] == "media"][:26]
        assert first is media[0]
        for i, frame in enumerate(media, start=1):
            assert set(frame) == {"event", "sequenceNumber", "media", "streamSid"}
            assert frame["streamSid"] == call.stream_sid
            assert frame["media"]["track"] == "inbound"
            assert frame["media"]["chunk"] == str(i)
            assert frame["media"]["timestamp"] == str(20 * i)
            assert frame["sequenceNumber"] == str(i + 1)
            assert len(base64.b64decode(frame["media"]["payload"])) == FRAME_BYTES
        assert call.media_sent >= 26


async def test_caller_audio_and_speak_arrive_byte_exact(
    bridge: FakeBridge, sim: TwilioSimulator
) -> None:
    hello = tone(440, 62.5)  # 500 bytes: not a whole number of frames
    call = await sim.place_inbound_call(caller_audio=hello)
    conn = await bridge.next_conn()
    await conn.count("media", 4)
    audio = conn.inbound_audio()
    assert audio[: len(hello)] == hello
    assert audio[len(hello) : 4 * FRAME_BYTES] == b"\xff" * (4 * FRAME_BYTES - len(hello))

    later = tone(880, 40)  # 320 bytes
    already = sum(1 for f in conn.frames if f["event"] == "media")
    call.speak(later)

    def carries_speech(frame: dict[str, Any]) -> bool:
        return (
            frame.get("event") == "media"
            and base64.b64decode(frame["media"]["payload"]) == later[:160]
        )

    frame = await conn.wait_frame(carries_speech)
    index = conn.frames.index(frame)
    nxt = await conn.wait_frame(
        lambda f: f.get("event") == "media" and conn.frames.index(f) > index
    )
    assert base64.b64decode(nxt["media"]["payload"]) == later[160:]
    assert int(frame["media"]["chunk"]) > already


async def test_dtmf_is_numbered_in_the_shared_sequence(
    bridge: FakeBridge, sim: TwilioSimulator
) -> None:
    call = await sim.place_inbound_call()
    conn = await bridge.next_conn()
    await conn.wait_frame("media")
    await call.send_dtmf("7")
    dtmf = await conn.wait_frame("dtmf")
    assert dtmf["dtmf"] == {"track": "inbound_track", "digit": "7"}
    assert dtmf["streamSid"] == call.stream_sid
    numbers = [int(f["sequenceNumber"]) for f in conn.frames[1:]]
    assert numbers == list(range(1, len(numbers) + 1))


# -- playback, marks, clear ----------------------------------------------------------------


async def test_heard_is_the_servers_media_in_order(
    bridge: FakeBridge, sim: TwilioSimulator
) -> None:
    call = await sim.place_inbound_call()
    conn = await bridge.next_conn()
    chunks = [tone(300, 20), tone(500, 100), tone(700, 7), tone(900, 250)]
    for chunk in chunks:
        await conn.media(chunk)
    expected = b"".join(chunks)
    await call.wait_heard(len(expected))
    assert bytes(call.heard) == expected
    await call.wait_playback_idle()
    assert call.warnings == []


async def test_mark_is_echoed_after_its_audio_played(bridge: FakeBridge) -> None:
    async with TwilioSimulator(bridge.url, auth_token=TOKEN, public_url=PUBLIC) as sim:
        call = await sim.place_inbound_call()
        conn = await bridge.next_conn()
        audio = tone(440, 200)  # 1600 bytes = 200 ms at the real 8000 bytes/s
        sent_at = time.monotonic()
        await conn.media(audio)
        await conn.mark("after-hello")
        echo = await conn.wait_frame("mark")
        waited = time.monotonic() - sent_at
        assert echo["mark"] == {"name": "after-hello"}
        assert echo["streamSid"] == call.stream_sid
        assert set(echo) == {"event", "sequenceNumber", "streamSid", "mark"}
        assert waited >= 0.15
        assert bytes(call.heard) == audio
        assert call.marks == [("after-hello", True)]
        # Marks take their number from the counter the media frames use (twilio.md §1).
        numbers = [int(f["sequenceNumber"]) for f in conn.frames[1:]]
        assert numbers == list(range(1, len(numbers) + 1))


async def test_mark_with_nothing_queued_is_echoed_at_once(bridge: FakeBridge) -> None:
    async with TwilioSimulator(bridge.url, auth_token=TOKEN, public_url=PUBLIC) as sim:
        call = await sim.place_inbound_call()
        conn = await bridge.next_conn()
        sent_at = time.monotonic()
        await conn.mark("nothing-before")
        await conn.wait_frame("mark")
        assert time.monotonic() - sent_at < 0.1
        assert call.marks == [("nothing-before", True)]
        assert call.heard == b""


async def test_clear_drops_queued_audio_and_flushes_marks(bridge: FakeBridge) -> None:
    async with TwilioSimulator(bridge.url, auth_token=TOKEN, public_url=PUBLIC) as sim:
        call = await sim.place_inbound_call()
        conn = await bridge.next_conn()
        await conn.media(tone(440, 2000))
        await conn.mark("a")
        await conn.media(tone(550, 1000))
        await conn.mark("b")
        await call.wait_heard(800)  # playback under way
        await conn.clear()
        await conn.count("mark", 2)
        assert call.marks == [("a", False), ("b", False)]
        assert [f["mark"]["name"] for f in conn.frames if f["event"] == "mark"] == ["a", "b"]
        assert call.clears == 1
        await call.wait_playback_idle(timeout=0.5)
        cut = len(call.heard)
        assert cut < 8000  # far less than the 3 s that was queued

        after = tone(660, 40)
        await conn.media(after)
        await conn.mark("c")
        await conn.count("mark", 3)
        assert call.marks[-1] == ("c", True)
        assert bytes(call.heard[cut:]) == after


async def test_invalid_frames_become_warnings_and_the_call_goes_on(
    bridge: FakeBridge, sim: TwilioSimulator
) -> None:
    call = await sim.place_inbound_call()
    conn = await bridge.next_conn()
    sid = conn.stream_sid
    good = base64.b64encode(b"\x01" * 80).decode()
    await conn.ws.send_bytes(b"\x00\x01")

    def enc(obj: object) -> str:
        return msgspec.json.encode(obj).decode()

    media = {"payload": good}
    bad_texts = [
        "{not json",
        "[1, 2]",
        enc({"event": "dance", "streamSid": sid}),
        enc({"event": "media", "streamSid": sid, "media": media, "x": 1}),  # extra field
        enc({"event": "media", "streamSid": sid, "media": {}}),  # no payload
        enc({"event": "media", "streamSid": sid, "media": {**media, "track": "outbound"}}),
        enc({"event": "media", "streamSid": "MZwrong", "media": media}),
        enc({"event": "media", "streamSid": sid, "media": {"payload": "**not base64**"}}),
        enc({"event": "media", "media": media}),  # no streamSid
        enc({"event": "mark", "streamSid": sid, "mark": {}}),
        enc({"event": "mark", "streamSid": sid}),
        enc({"event": "mark", "streamSid": sid, "mark": {"name": 5}}),
        enc({"event": "clear", "streamSid": sid, "now": True}),
        enc({"event": "clear", "streamSid": "MZwrong"}),
    ]
    for text in bad_texts:
        await conn.ws.send_str(text)
    await conn.media(b"\x02" * 80)
    await call.wait_heard(80)
    assert bytes(call.heard) == b"\x02" * 80
    assert len(call.warnings) == 1 + len(bad_texts)
    assert call.warnings[0].startswith("31950")
    assert all(w.startswith("31951") for w in call.warnings[1:])
    assert not call.ended.is_set()
    assert call.clears == 0 and call.marks == []
    # The dict frames are all recorded, valid or not.
    assert (await call.wait_received("dance"))["event"] == "dance"


# -- end of the stream ---------------------------------------------------------------------


async def test_server_close_with_nothing_after_connect_ends_the_call(
    bridge: FakeBridge, sim: TwilioSimulator
) -> None:
    call = await sim.place_inbound_call()
    conn = await bridge.next_conn()
    await conn.wait_frame("media")
    await conn.ws.close(code=4001, message=b"bye")
    await call.wait_ended()
    assert call.end_reason == "server-closed"
    assert call.close_code == 4001
    assert not any(f["event"] == "stop" for f in conn.frames)  # nobody to send it to
    assert _sim_tasks() == []
    sent = call.media_sent
    await asyncio.sleep(0.05)
    assert call.media_sent == sent  # the sender stopped


async def test_what_was_unplayed_when_the_server_closed_is_reported(bridge: FakeBridge) -> None:
    async with TwilioSimulator(bridge.url, auth_token=TOKEN, public_url=PUBLIC) as sim:
        played_out = await sim.place_inbound_call()
        conn = await bridge.next_conn()
        await conn.media(tone(440, 100))
        await conn.mark("played")
        await conn.wait_frame("mark")
        await conn.ws.close()
        await played_out.wait_ended()
        assert played_out.unplayed_at_stream_end == 0

        cut_short = await sim.place_inbound_call()
        conn = await bridge.next_conn()
        assert cut_short.unplayed_at_stream_end is None
        await conn.media(tone(440, 2000))  # two seconds: most of it still queued
        await cut_short.wait_heard(1)
        await conn.ws.close()
        await cut_short.wait_ended()
        unplayed = cut_short.unplayed_at_stream_end
        assert unplayed is not None and 0 < unplayed < 16000
        assert len(cut_short.heard) + unplayed == 16000


async def test_server_close_falls_through_to_the_verbs_after_connect(
    bridge: FakeBridge, sim: TwilioSimulator
) -> None:
    bridge.documents["/twiml"] = (
        "<Response><Say>Hello</Say><Pause length='1'/>"
        + STREAM_TWIML.split("<Response>")[1].replace("</Response>", "")
        + "<Say> Goodbye </Say><Hangup/><Say>never</Say></Response>"
    )
    call = await sim.place_inbound_call()
    conn = await bridge.next_conn()
    await conn.ws.close()
    await call.wait_ended()
    assert call.said == ["Hello", "Goodbye"]
    assert call.end_reason == "hangup-verb"
    assert call.close_code == 1000


async def test_connect_action_is_requested_after_server_close(
    bridge: FakeBridge, sim: TwilioSimulator
) -> None:
    bridge.documents["/twiml"] = (
        '<Response><Connect action="/after-stream">'
        '<Stream url="wss://bridge.example.com/media-stream/x?token=dropped" />'
        "</Connect><Say>not reached</Say></Response>"
    )
    bridge.documents["/after-stream"] = "<Response><Say>after</Say></Response>"
    call = await sim.place_inbound_call()
    conn = await bridge.next_conn()
    assert conn.path == "/media-stream/x"  # Twilio drops the query string
    assert call.stream_url == "wss://bridge.example.com/media-stream/x"
    assert call.custom_parameters == {}
    await conn.ws.close()
    await call.wait_ended()
    path, params, signed = bridge.requests[-1]
    assert (path, signed) == ("/after-stream", True)
    assert params["CallSid"] == call.call_sid
    assert params["CallStatus"] == "in-progress"
    assert call.said == ["after"]
    assert call.end_reason == "twiml-ended"


async def test_redirect_verb_and_second_stream(bridge: FakeBridge, sim: TwilioSimulator) -> None:
    bridge.documents["/twiml"] = "<Response><Redirect>/next</Redirect></Response>"
    bridge.documents["/next"] = STREAM_TWIML
    call = await sim.place_inbound_call()
    conn = await bridge.next_conn()
    assert [r[0] for r in bridge.requests] == ["/twiml", "/next"]
    assert all(r[2] for r in bridge.requests)
    first_sid = call.stream_sid
    # A REST update with Twiml: stop on the old stream, then the new TwiML runs.
    await call.redirect(STREAM_TWIML.replace("{CallSid}", call.call_sid))
    stop = await conn.wait_frame("stop")
    assert stop["stop"] == {"accountSid": sim.account_sid, "callSid": call.call_sid}
    second = await bridge.next_conn()
    assert second.stream_sid != first_sid
    assert call.stream_sid == second.stream_sid
    await second.ws.close()
    await call.wait_ended()
    assert call.end_reason == "server-closed"


async def test_stream_handshake_failure(bridge: FakeBridge, sim: TwilioSimulator) -> None:
    bridge.documents["/twiml"] = (
        '<Response><Connect><Stream url="wss://bridge.example.com/nowhere" /></Connect></Response>'
    )
    call = await sim.place_inbound_call()
    await call.wait_ended()
    assert call.end_reason == "stream-failed"
    assert any(e.startswith("31920") for e in call.errors)

    bridge.documents["/twiml"] = bridge.documents["/twiml"].replace(
        "</Response>", "<Say>Sorry</Say></Response>"
    )
    call = await sim.place_inbound_call()
    await call.wait_ended()
    assert call.said == ["Sorry"]
    assert call.end_reason == "twiml-ended"


async def test_hangup_sends_stop_then_closes(bridge: FakeBridge, sim: TwilioSimulator) -> None:
    call = await sim.place_inbound_call()
    conn = await bridge.next_conn()
    await conn.count("media", 3)
    await call.hangup()
    assert call.end_reason == "caller-hangup"
    await asyncio.wait_for(conn.closed.wait(), 5)
    stop = conn.frames[-1]
    assert stop["event"] == "stop"
    assert stop["streamSid"] == call.stream_sid
    assert stop["stop"] == {"accountSid": sim.account_sid, "callSid": call.call_sid}
    numbers = [int(f["sequenceNumber"]) for f in conn.frames[1:]]
    assert numbers == list(range(1, len(numbers) + 1))
    assert call.close_code is None  # the caller closed, not the server
    assert _sim_tasks() == []
    with pytest.raises(RuntimeError):
        await call.send_dtmf("1")


async def test_close_hangs_up_live_calls_and_leaks_nothing(bridge: FakeBridge) -> None:
    sim = TwilioSimulator(bridge.url, auth_token=TOKEN, public_url=PUBLIC, frame_interval=0.005)
    calls = [await sim.place_inbound_call() for _ in range(3)]
    conns = [await bridge.next_conn() for _ in calls]
    for conn in conns:
        await conn.media(tone(440, 500))
    await asyncio.gather(*(c.wait_heard(100) for c in calls))
    assert _sim_tasks() != []
    await sim.close()
    assert all(c.end_reason == "caller-hangup" for c in calls)
    for conn in conns:
        await asyncio.wait_for(conn.closed.wait(), 5)
        assert conn.frames[-1]["event"] == "stop"
    assert _sim_tasks() == []


async def test_wait_helpers(bridge: FakeBridge, sim: TwilioSimulator) -> None:
    call: SimulatedCall = await sim.place_inbound_call()
    conn = await bridge.next_conn()
    await call.wait_started()
    await conn.mark("m")
    frame = await call.wait_received("mark")
    assert frame["mark"] == {"name": "m"}
    # Already received: returned at once, by name or by predicate.
    assert await call.wait_received(lambda f: f.get("mark", {}).get("name") == "m") is frame
    with pytest.raises(TimeoutError):
        await call.wait_received("clear", timeout=0.05)
    with pytest.raises(TimeoutError):
        await call.wait_heard(1, timeout=0.05)
    await conn.ws.close()
    await call.wait_ended()
    with pytest.raises(CallEndedError):
        await call.wait_heard(1)
    await call.wait_playback_idle()
