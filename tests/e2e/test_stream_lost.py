"""A stream that breaks without `stop` (a network blip between Twilio and callbridge):
Twilio runs the `<Redirect>` after `</Connect>`, callbridge answers with a new stream, and
the caller keeps the same conversation. The real server between the Twilio simulator and
the fake Voice Agent API."""

from __future__ import annotations

import pytest

from callbridge.bot import Bot
from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_simulator import TwilioSimulator
from tests.conftest import (
    AUTH_TOKEN,
    BOTH_STREAM_SERVERS,
    PUBLIC_URL,
    ServerFactory,
)
from tests.helpers.log_events import caught
from tests.helpers.raw_twilio import open_live_stream, twilio_session
from tests.helpers.records import record_when_done

GREETING = "Hi."
BOT = Bot(system_prompt="You are a test bot.", greeting=GREETING)


@BOTH_STREAM_SERVERS
async def test_a_blip_rejoins_the_same_conversation(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    server = await start_server(BOT, assemblyai_agent_url=fake_agent.url)
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        with caught() as events:
            call = await sim.place_inbound_call()
            session = await fake_agent.wait_for_session()
            await call.wait_heard(len(fake_agent.reply_audio_for(GREETING)), timeout=10)
            # The first TwiML asks Twilio to come back to us if the stream breaks.
            assert f'<Redirect method="POST">{PUBLIC_URL}/calls/' in call.twiml
            call.break_stream()
            await call.wait_streams(2, timeout=10)
            await events.wait_for("stream.reattached")
            # The conversation goes on over the new stream: the agent hears the caller
            # and the caller hears the agent's next reply.
            heard_before = len(call.heard)
            await session.wait_input_audio(len(session.input_audio) + 1600, timeout=10)
            await session.say("Still here.")
            await call.wait_heard(
                heard_before + len(fake_agent.reply_audio_for("Still here.")), timeout=10
            )
            # A second blip in the same call rejoins it too (a request of its own).
            call.break_stream()
            await call.wait_streams(3, timeout=10)
            await events.wait_for("stream.reattached", times=2)
            await call.hangup()
            await events.wait_for("call.ended")
    assert len(fake_agent.sessions) == 1  # the same agent session throughout
    assert events.fields_of("stream.lost")
    assert [f["why"] for f in events.fields_of("stream.reattached")] == ["stream-lost"] * 2
    assert [f["outcome"] for f in events.fields_of("stream.ended_callback")] == ["reattach"] * 2
    assert events.fields_of("call.ended")[0]["reason"] == "stream-stopped"
    record = await record_when_done(server, call.call_sid)
    outcomes = [(a["verb"], a["by"], a["outcome"]) for a in record["actions"]]
    assert outcomes == [("stream-lost", None, "reattached")] * 2


async def test_a_stream_that_does_not_come_back_ends_the_call(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    server = await start_server(
        BOT, assemblyai_agent_url=fake_agent.url, callbridge_stream_lost_seconds=0.5
    )
    with caught() as events:
        async with twilio_session() as http:
            ws, announced, session = await open_live_stream(http, server, fake_agent)
            await ws.close()  # no `stop`, and nobody runs the TwiML after </Connect>
            await session.wait_for("session.end", timeout=10)
        await events.wait_for("call.ended")
    assert events.fields_of("call.ended")[0]["reason"] == "twilio-disconnected"
    record = await record_when_done(server, announced.stream_path.rsplit("/", 1)[-1])
    assert [(a["verb"], a["outcome"]) for a in record["actions"]] == [("stream-lost", "not-back")]


async def test_with_waiting_off_the_twiml_has_no_redirect_and_a_break_ends_the_call(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    server = await start_server(
        BOT, assemblyai_agent_url=fake_agent.url, callbridge_stream_lost_seconds=0
    )
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        with caught() as events:
            call = await sim.place_inbound_call()
            session = await fake_agent.wait_for_session()
            await session.wait_sent("session.ready")
            assert "<Redirect" not in call.twiml
            call.break_stream()
            await call.wait_ended(timeout=10)
            await session.wait_for("session.end", timeout=10)
            await events.wait_for("call.ended")
    assert call.end_reason == "stream-broken"
    assert events.fields_of("call.ended")[0]["reason"] == "twilio-disconnected"


@pytest.mark.parametrize("who", ["other-call", "ended-call"])
async def test_the_stream_ended_webhook_never_joins_the_wrong_call(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, who: str
) -> None:
    server = await start_server(BOT, assemblyai_agent_url=fake_agent.url)
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        call = await sim.place_inbound_call()
        session = await fake_agent.wait_for_session()
        await session.wait_sent("session.ready")
        call_id = call.stream_url.rsplit("/", 1)[-1] if call.stream_url else ""
        path = f"/calls/{call_id if who == 'other-call' else 'c_gone'}/stream-ended/0a1b"
        # Signed like Twilio's, but for another CallSid (or a call not live here).
        status, body = await sim.request(
            PUBLIC_URL + path, "POST", {"CallSid": "CA" + "9" * 32, "CallStatus": "in-progress"}
        )
        assert status == 200
        assert "<Hangup" in body and "<Connect" not in body
        assert call.streams_opened == 1 and not call.ended.is_set()  # the live call goes on
        await call.hangup()


async def test_without_public_url_the_call_comes_back_on_the_host_twilio_called(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    # A quick local trial: no PUBLIC_URL (URLs from the Host Twilio called), and so no
    # signatures to check either.
    server = await start_server(
        BOT,
        assemblyai_agent_url=fake_agent.url,
        public_url=None,
        callbridge_insecure_skip_signatures=True,
    )
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN) as sim:
        with caught() as events:
            call = await sim.place_inbound_call()
            session = await fake_agent.wait_for_session()
            await session.wait_sent("session.ready")
            call.break_stream()
            await call.wait_streams(2, timeout=10)
            await events.wait_for("stream.reattached")
            assert "<Redirect" in call.twiml  # the new stream can come back again
            await call.hangup()
    assert len(fake_agent.sessions) == 1
    assert [f["outcome"] for f in events.fields_of("stream.ended_callback")] == ["reattach"]
