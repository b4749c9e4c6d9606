"""Only Twilio gets in, and nothing anyone sends can hurt a call.

Every refusal is checked from both ends: the attacker is turned away, and the fake Voice
Agent API proves that no upstream session (no billed minute) was opened."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json

import aiohttp
import pytest

from callbridge.server.state import APP_STATE
from callbridge.testing.audio import FRAME_BYTES
from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_simulator import TwilioSimulator
from tests.conftest import (
    AUTH_TOKEN,
    BOTH_AUDIO_PATHS,
    BOTH_STREAM_SERVERS,
    PUBLIC_URL,
    RunningServer,
    ServerFactory,
)
from tests.e2e.test_inbound_call import frame_indices, indexed_frames
from tests.helpers.log_events import caught
from tests.helpers.raw_twilio import (
    CALL_SID,
    announce,
    connect_stream,
    hang_up,
    media_frame,
    open_live_stream,
    sign,
    start_frame,
    twilio_session,
)
from tests.helpers.records import fetch_record

# Each test runs with streams served by aiohttp and by picows.
pytestmark = BOTH_STREAM_SERVERS


WEBHOOKS = ["/twiml", "/outbound-twiml", "/call-status"]
PARAMS = {"CallSid": CALL_SID, "From": "+15550001111", "To": "+15552223333"}


async def post(server: RunningServer, path: str, signature: str | None) -> int:
    headers = {"X-Twilio-Signature": signature} if signature is not None else {}
    async with (
        twilio_session() as http,
        http.post(f"{server.url}{path}", data=PARAMS, headers=headers) as response,
    ):
        return response.status


@pytest.mark.parametrize("path", WEBHOOKS)
async def test_webhooks_accept_only_twilios_signature(
    server: RunningServer, fake_agent: FakeVoiceAgent, path: str
) -> None:
    good = sign(f"{PUBLIC_URL}{path}", PARAMS)
    assert await post(server, path, None) == 403  # missing
    assert await post(server, path, "bm90IGEgc2lnbmF0dXJl") == 403  # forged
    # Signed for the URL the request really reached, not the public one Twilio calls.
    assert await post(server, path, sign(f"{server.url}{path}", PARAMS)) == 403
    assert await post(server, path, sign(f"https://evil.example{path}", PARAMS)) == 403
    other_token = RequestValidatorFor("another-account-token")
    assert await post(server, path, other_token(f"{PUBLIC_URL}{path}", PARAMS)) == 403
    assert await post(server, path, good) in (200, 204)
    assert await post(server, path, good) == 403  # the same request again: a replay
    assert fake_agent.connections == 0


def RequestValidatorFor(token: str):  # type: ignore[no-untyped-def]
    from twilio.request_validator import RequestValidator

    return RequestValidator(token).compute_signature


async def assert_stream_refused(
    http: aiohttp.ClientSession, server: RunningServer, call_path_call: object, **kwargs: object
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect_stream(http, server, call_path_call, **kwargs)  # type: ignore[arg-type]
    assert refused.value.status == 403


async def test_unsigned_and_forged_stream_upgrades_are_refused(
    server: RunningServer, fake_agent: FakeVoiceAgent
) -> None:
    async with twilio_session() as http:
        call = await announce(http, server)
        await assert_stream_refused(http, server, call, signature="")
        await assert_stream_refused(http, server, call, signature="Zm9yZ2Vk")
        # A signature over the https URL instead of the wss one Twilio signs.
        await assert_stream_refused(
            http, server, call, signature=sign(call.wss_url.replace("wss://", "https://"), {})
        )
    assert fake_agent.connections == 0


async def refused_after_start(ws: aiohttp.ClientWebSocketResponse, start: str) -> aiohttp.WSMessage:
    await ws.send_str(start)
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type is aiohttp.WSMsgType.CLOSE, msg
    assert ws.close_code == 1008
    return msg


async def test_stream_token_must_be_this_calls_and_unused(
    server: RunningServer, fake_agent: FakeVoiceAgent
) -> None:
    async with twilio_session() as http:
        call_a = await announce(http, server, "CA" + "a" * 32)
        call_b = await announce(http, server, "CA" + "b" * 32)
        # B's token on A's stream: refused before any upstream session.
        ws = await connect_stream(http, server, call_a)
        await refused_after_start(ws, start_frame(call_b.token, call_sid="CA" + "a" * 32))
        # No token at all.
        call_c = await announce(http, server, "CA" + "c" * 32)
        ws = await connect_stream(http, server, call_c)
        await refused_after_start(ws, start_frame(None, call_sid="CA" + "c" * 32))
        # The right token but another call's CallSid.
        call_d = await announce(http, server, "CA" + "d" * 32)
        ws = await connect_stream(http, server, call_d)
        await refused_after_start(ws, start_frame(call_d.token, call_sid="CA" + "e" * 32))
    assert fake_agent.connections == 0


async def test_replayed_token_and_second_stream_are_refused(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    # Signatures off, so the per-call token is the only lock being tested here.
    server = await start_server(
        assemblyai_agent_url=fake_agent.url, callbridge_insecure_skip_signatures=True
    )
    async with twilio_session() as http:
        call = await announce(http, server)
        first = await connect_stream(http, server, call, signature="")
        await first.send_str(start_frame(call.token))
        session = await fake_agent.wait_for_session()
        await session.wait_sent("session.ready")
        # While the first is live, a second socket for the same call is refused outright.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect_stream(http, server, call, signature="")
        assert refused.value.status == 409
        runner = server.app[APP_STATE].registry.live[call.stream_path.rsplit("/", 1)[1]]
        await hang_up(first)
        await session.wait_for("session.end")
        await asyncio.wait_for(runner.done.wait(), 10)  # the server is done with the call
        # Afterwards the token has been used: presenting it again gets nowhere.
        again = await connect_stream(http, server, call, signature="")
        await refused_after_start(again, start_frame(call.token))
    assert fake_agent.connections == 1


async def test_a_replayed_signed_upgrade_is_refused(
    server: RunningServer, fake_agent: FakeVoiceAgent
) -> None:
    async with twilio_session() as http:
        first, call, session = await open_live_stream(http, server, fake_agent)
        await hang_up(first)
        await session.wait_for("session.end")
        await assert_stream_refused(http, server, call)
    assert fake_agent.connections == 1


async def test_at_capacity_callers_get_a_polite_busy_answer(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    server = await start_server(assemblyai_agent_url=fake_agent.url, max_calls=1)
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        first = await sim.place_inbound_call()
        await first.wait_started()
        busy = await sim.place_inbound_call(from_="+15550009999")
        await busy.wait_ended()
        assert "<Stream" not in busy.twiml
        assert busy.said and "busy" in busy.said[0]
        assert busy.end_reason == "hangup-verb"
        async with twilio_session() as http, http.get(f"{server.url}/readyz") as resp:
            assert (await resp.json())["live_calls"] == 1
    assert len(fake_agent.sessions) == 1


async def test_idle_stream_is_ended_with_its_session(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    server = await start_server(assemblyai_agent_url=fake_agent.url, callbridge_idle_seconds=1)
    async with twilio_session() as http:
        call = await announce(http, server)
        ws = await connect_stream(http, server, call)
        await ws.send_str(start_frame(call.token))
        session = await fake_agent.wait_for_session()
        # Then silence: not even Twilio's usual stream of silent frames.
        await session.wait_for("session.end", timeout=5)
        while not ws.closed:
            await asyncio.wait_for(ws.receive(), 5)


@BOTH_AUDIO_PATHS
async def test_a_stream_is_ended_one_idle_period_after_its_audio_stops_not_while_it_flows(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    """Audio for twice the idle period keeps the call (the idle check knows when audio
    last came, on either path); once it stops, the call ends about one period later."""
    server = await start_server(assemblyai_agent_url=fake_agent.url, callbridge_idle_seconds=1)
    loop = asyncio.get_running_loop()
    async with twilio_session() as http:
        call = await announce(http, server)
        ws = await connect_stream(http, server, call)
        await ws.send_str(start_frame(call.token))
        session = await fake_agent.wait_for_session()
        await session.wait_for("session.update")
        payload = base64.b64encode(b"\xff" * FRAME_BYTES).decode()
        started = loop.time()
        seq = 2
        while loop.time() - started < 2.0:  # Twilio's pace: a frame every 20 ms
            await ws.send_str(media_frame(payload, seq=seq))
            seq += 1
            await asyncio.sleep(0.02)
        assert not any(m.get("type") == "session.end" for m in session.received)
        stopped = loop.time()
        await session.wait_for("session.end", timeout=5)
        quiet = loop.time() - stopped
        assert 0.9 <= quiet <= 2.5, quiet
        while not ws.closed:
            await asyncio.wait_for(ws.receive(), 5)


async def test_flooding_stream_is_cut_off_and_the_other_call_is_untouched(
    server: RunningServer,
    fake_agent: FakeVoiceAgent,
    simulator: TwilioSimulator,
    twilio_transport: str,
) -> None:
    audio = indexed_frames(100, marker=3)
    calm = await simulator.place_inbound_call(caller_audio=audio)
    calm_session = await fake_agent.wait_for_session(0)
    async with twilio_session() as http:
        # Ten times Twilio's rate: 500 frames a second.
        ws, _, flood_session = await open_live_stream(
            http, server, fake_agent, "CA" + "f" * 32, session_index=1
        )
        payload = base64.b64encode(b"\xff" * FRAME_BYTES).decode()

        async def read_until_closed() -> None:
            while not ws.closed:
                await ws.receive()

        reader = asyncio.create_task(read_until_closed())
        for seq in range(2, 5000):
            if reader.done():
                break
            with contextlib.suppress(ConnectionError):
                await ws.send_str(media_frame(payload, seq=seq))
            if seq % 10 == 0:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(reader, 5)
        assert ws.close_code == 1008
        await flood_session.wait_for("session.end")
        # A 1 MB frame on another stream: closed for size, the calm call unaffected.
        big, _, big_session = await open_live_stream(
            http, server, fake_agent, "CA" + "e" * 32, session_index=2
        )
        await big.send_str("x" * 1024 * 1024)
        while not big.closed:
            await asyncio.wait_for(big.receive(), 5)
        # 1009 when the close frame makes it; aiohttp may drop the TCP first (1006).
        assert big.close_code == 1009 or (twilio_transport == "aiohttp" and big.close_code == 1006)
        await big_session.wait_for("session.end")
    last = base64.b64encode(audio[-FRAME_BYTES:]).decode()
    await calm_session.wait_for(lambda m: m.get("audio") == last, timeout=10)
    indices = frame_indices(bytes(calm_session.input_audio), marker=3)
    assert indices == list(range(indices[0], 100))
    assert not calm_session.ended.is_set()
    await calm.hangup()


async def test_audio_faster_than_real_time_is_dropped_past_a_seconds_burst(
    server: RunningServer, fake_agent: FakeVoiceAgent
) -> None:
    async with twilio_session() as http:
        ws, _, session = await open_live_stream(http, server, fake_agent)
        payload = base64.b64encode(b"\xff" * FRAME_BYTES).decode()
        # 150 frames at once: under the 200-a-second cut-off, three seconds of audio in
        # a moment. The agent gets the first second's worth; the rest is dropped.
        for seq in range(2, 152):
            await ws.send_str(media_frame(payload, seq=seq))
        await ws.send_str(json.dumps({"event": "stop", "sequenceNumber": "152"}))
        await session.wait_for("session.end")
        relayed = len(session.input_audio) // FRAME_BYTES
        assert 50 <= relayed < 150, relayed
        assert ws.close_code is None or ws.close_code == 1000
        await ws.close()


UNREADABLE_BODIES = {
    "not-utf8": ("application/x-www-form-urlencoded", b"CallSid=CA\xff\xfe&From=%2B1"),
    "unknown-charset": ("application/x-www-form-urlencoded; charset=x-bogus", b"CallSid=CA1"),
    "multipart-without-name": (
        "multipart/form-data; boundary=XX",
        b"--XX\r\nContent-Disposition: form-data\r\n\r\nCA1\r\n--XX--\r\n",
    ),
    "multipart-bad-encoding": (
        "multipart/form-data; boundary=XX",
        b'--XX\r\nContent-Disposition: form-data; name="CallSid"\r\n'
        b"Content-Transfer-Encoding: x-bogus\r\n\r\nCA1\r\n--XX--\r\n",
    ),
}


@pytest.mark.parametrize("path", WEBHOOKS)
@pytest.mark.parametrize(
    ("content_type", "body"), UNREADABLE_BODIES.values(), ids=UNREADABLE_BODIES
)
async def test_unreadable_webhook_bodies_get_400_and_one_line_without_their_text(
    server: RunningServer, fake_agent: FakeVoiceAgent, path: str, content_type: str, body: bytes
) -> None:
    with caught() as events, caught("aiohttp.server") as aiohttp_errors:
        async with (
            twilio_session() as http,
            http.post(
                f"{server.url}{path}", data=body, headers={"Content-Type": content_type}
            ) as response,
        ):
            assert response.status == 400
            assert "bogus" not in await response.text()
    [line] = events.fields_of("webhook.bad_request")
    assert line["client"] == "127.0.0.1" and line["path"] == path
    assert not any(b"bogus" in str(f).encode() or "\ufffd" in str(f) for f in events.fields)
    # No "Error handling request" traceback from aiohttp: the handler answered.
    assert aiohttp_errors.names == []
    assert fake_agent.connections == 0


async def test_refused_requests_are_logged_once_per_client_and_reason(
    server: RunningServer,
) -> None:
    with caught() as events:
        for _ in range(30):
            assert await post(server, "/twiml", "bm90IGEgc2lnbmF0dXJl") == 403
            assert await post(server, "/call-status", None) == 403
        async with twilio_session() as http:
            for _ in range(10):
                headers = {"Authorization": "Bearer guess"}
                async with http.get(f"{server.url}/metrics", headers=headers) as response:
                    assert response.status == 401
    refused = events.fields_of("webhook.refused")
    assert [(f["reason"], f["path"]) for f in refused] == [
        ("signature does not match", "/twiml"),
        ("missing X-Twilio-Signature", "/call-status"),
    ]
    assert events.fields_of("api.refused") == [
        {"client": "127.0.0.1", "reason": "wrong bearer token", "path": "/metrics"}
    ]


async def test_refused_streams_are_logged_once_per_client_and_reason(
    server: RunningServer, fake_agent: FakeVoiceAgent
) -> None:
    with caught() as events:
        async with twilio_session() as http:
            call = await announce(http, server)
            for _ in range(20):
                await assert_stream_refused(http, server, call, signature="Zm9yZ2Vk")
            for n in range(20):
                other = await announce(http, server, f"CA{n:032x}")
                ws = await connect_stream(http, server, other)
                await refused_after_start(ws, start_frame(None, call_sid=f"CA{n:032x}"))
    refused = events.fields_of("stream.refused")
    assert [(f["reason"], f["client"]) for f in refused] == [
        ("stream signature does not match", "127.0.0.1"),
        ("wrong stream token", "127.0.0.1"),
    ]
    assert fake_agent.connections == 0


async def test_a_second_twiml_request_for_a_live_call_leaves_it_alone(
    server: RunningServer, fake_agent: FakeVoiceAgent
) -> None:
    with caught() as events:
        async with twilio_session() as http:
            ws, call, session = await open_live_stream(http, server, fake_agent)
            registry = server.app[APP_STATE].registry
            live_id = call.stream_path.rsplit("/", 1)[1]
            assert registry.call_id_for_sid(CALL_SID) == live_id
            # Signed by Twilio, for the same CallSid (not a replay: the form differs).
            again = {**PARAMS, "CallStatus": "in-progress"}
            headers = {"X-Twilio-Signature": sign(f"{PUBLIC_URL}/twiml", again)}
            async with http.post(f"{server.url}/twiml", data=again, headers=headers) as resp:
                assert resp.status == 409
                assert "<Stream" not in await resp.text()
            assert registry.call_id_for_sid(CALL_SID) == live_id
            # Status lines still name the live call.
            status = {"CallSid": CALL_SID, "CallStatus": "in-progress", "SequenceNumber": "1"}
            headers = {"X-Twilio-Signature": sign(f"{PUBLIC_URL}/call-status", status)}
            async with http.post(f"{server.url}/call-status", data=status, headers=headers) as r:
                assert r.status == 204
            await ws.send_str(json.dumps({"event": "stop", "streamSid": "MZ" + "ab" * 16}))
            await session.wait_for("session.end")
    [refusal] = events.fields_of("call.refused_duplicate")
    assert refusal["call_id"] == live_id
    assert [f["call_id"] for f in events.fields_of("call.status")] == [live_id]
    assert events.names.count("call.announced") == 1
    assert fake_agent.connections == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"SequenceNumber": "99999999999999999999"},
        {"SequenceNumber": "-1"},
        {"CallDuration": "1e9"},
        {"CallStatus": "completed\x00"},
        {"From": "+1555" + "0" * 1000},
    ],
    ids=["sequence-too-large", "sequence-negative", "duration", "nul", "long"],
)
async def test_signed_status_callbacks_with_fields_out_of_range_are_refused(
    server: RunningServer, bad: dict[str, str]
) -> None:
    state = server.app[APP_STATE]
    status = {"CallSid": CALL_SID, "CallStatus": "completed", "SequenceNumber": "3", **bad}
    with caught() as events:
        async with twilio_session() as http:
            headers = {"X-Twilio-Signature": sign(f"{PUBLIC_URL}/call-status", status)}
            async with http.post(f"{server.url}/call-status", data=status, headers=headers) as r:
                assert r.status == 400
            good = {"CallSid": CALL_SID, "CallStatus": "ringing", "SequenceNumber": "1"}
            headers = {"X-Twilio-Signature": sign(f"{PUBLIC_URL}/call-status", good)}
            async with http.post(f"{server.url}/call-status", data=good, headers=headers) as r:
                assert r.status == 204
        await state.records.flush()
    [line] = events.fields_of("webhook.bad_request")
    assert line["reason"] == f"invalid {next(iter(bad))}"
    assert "records.entry_rejected" not in events.names
    assert state.records.stats().rejected == 0
    record = await fetch_record(server, CALL_SID)
    assert [s["status"] for s in record["statuses"]] == ["ringing"]
