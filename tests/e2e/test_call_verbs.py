"""Verbs that act on the call itself, end to end: transfer to a person, keypad tones out,
voicemail; a call that outlives its streams (re-attach). The real server between the
Twilio simulator, the fake Twilio REST API and the fake Voice Agent API."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from callbridge.bot import Bot
from callbridge.server.call_registry import new_call_id
from callbridge.testing.fake_agent import FakeSession, FakeVoiceAgent
from callbridge.testing.twilio_rest_fake import FakeTwilioRest
from callbridge.testing.twilio_simulator import SimulatedCall, TwilioSimulator
from callbridge.twilio.rest import place_call
from callbridge.verbs import Transfer, TransferTarget, Voicemail
from tests.conftest import (
    API_TOKEN,
    AUTH_TOKEN,
    BOTH_AUDIO_PATHS,
    BOTH_STREAM_SERVERS,
    PUBLIC_URL,
    RunningServer,
    ServerFactory,
    free_port,
)
from tests.helpers.log_events import caught
from tests.helpers.records import metrics_text, record_when_done
from tests.helpers.server_process import run_command

PERSON = "+15550009999"
GREETING = "Hi."
VERB_BOT = Bot(
    system_prompt="You are a test bot.",
    greeting=GREETING,
    transfer=Transfer(targets=(TransferTarget("a person", PERSON),), caller_id="+15550001111"),
    keypad_out=True,
    voicemail=Voicemail("Hello {first_name}, please call us back."),
)


@dataclass
class Rig:
    server: RunningServer
    simulator: TwilioSimulator
    rest: FakeTwilioRest
    agent: FakeVoiceAgent


@pytest.fixture
async def rig(start_server: ServerFactory, fake_agent: FakeVoiceAgent) -> AsyncIterator[Rig]:
    port = free_port()  # the server must know the REST API's address before it starts
    server = await start_server(
        VERB_BOT,
        assemblyai_agent_url=fake_agent.url,
        twilio_api_base_url=f"http://127.0.0.1:{port}",
    )
    sim = TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)
    rest = FakeTwilioRest(sim, auth_token=AUTH_TOKEN, owned_numbers=["+15550001111"])
    await rest.start(port=port)
    try:
        yield Rig(server, sim, rest, fake_agent)
    finally:
        await sim.close()
        await rest.stop()
    assert rest.errors == []
    for call in sim.calls:
        assert call.warnings == [], call.warnings


async def answered_call(rig: Rig) -> tuple[SimulatedCall, FakeSession]:
    call = await rig.simulator.place_inbound_call()
    session = await rig.agent.wait_for_session()
    await call.wait_heard(len(rig.agent.reply_audio_for(GREETING)), timeout=10)
    return call, session


def instructions_with(text: str) -> object:
    def match(message: dict[str, object]) -> bool:
        instructions = message.get("instructions")
        return message.get("type") == "reply.create" and text in str(instructions)

    return match


@BOTH_AUDIO_PATHS
@BOTH_STREAM_SERVERS
async def test_a_failed_transfer_brings_the_caller_back_to_the_same_session(rig: Rig) -> None:
    with caught() as events:  # from the start: a call logs at the level it began with
        call, session = await answered_call(rig)
        call.dial_outcome = "busy"
        await session.call_tool("transfer_call", {"target": "a person"}, after_tool="Sure.")
        dial = await call.wait_dialed(timeout=10)
        # The allow-listed number, with our caller ID, ring timeout and signed action.
        assert dial["to"] == PERSON
        assert dial["noun"] == "Number"
        assert dial["callerId"] == "+15550001111"
        assert dial["timeout"] == "30"
        assert dial["action"].startswith(f"{PUBLIC_URL}/calls/")
        await call.wait_streams(2, timeout=10)
        told = await session.wait_for(instructions_with("did not go through"), timeout=10)
    assert "busy" in str(told["instructions"])
    # One agent session throughout: the new stream joined it.
    assert len(rig.agent.sessions) == 1
    assert "session.end" not in [m.get("type") for m in session.received]
    assert events.fields_of("stream.reattached")[0]["why"] == "transfer-failed"
    assert "call.ended" not in events.names
    # The first stream's stop was the transfer, not a hang-up.
    assert events.fields_of("stream.handed_over")[0]["why"] == "transfer"
    # The stream token the re-attaching stream presented was a new one.
    first_token = call.exchanges[0].body
    assert call.custom_parameters["token"] not in first_token
    # Audio flows again on the new stream: the agent's next reply is heard.
    heard = len(call.heard)
    await session.say("Back.")
    await call.wait_heard(heard + len(rig.agent.reply_audio_for("Back.")), timeout=10)
    await call.hangup()
    await session.wait_for("session.end")


async def test_an_answered_transfer_ends_the_agent_session(rig: Rig) -> None:
    with caught() as events:
        call, session = await answered_call(rig)
        call.dial_outcome = "completed"
        await session.call_tool("transfer_call", {"target": "a person"}, after_tool="Sure.")
        await session.wait_for("session.end", timeout=10)
        await call.wait_ended(timeout=10)
        await events.wait_for("call.ended")
    # The person's leg asked us first (they answered), then the dial's action: hang up.
    paths = [e.url.removeprefix(PUBLIC_URL).rsplit("/", 1)[-1] for e in call.exchanges]
    assert paths[-2:] == ["transfer-answered", "dial-ended"]
    assert call.end_reason == "hangup-verb"
    assert events.fields_of("call.ended")[0]["reason"] == "transferred"
    update = rig.rest.updated[0][1]["Twiml"][0]
    assert re.search(rf"<Number[^>]*>{re.escape(PERSON)}</Number>", update)
    record = await record_when_done(rig.server, call.call_sid)
    assert record["ended_at"] is not None
    [action] = record["actions"]
    assert (action["verb"], action["by"], action["outcome"], action["target"]) == (
        "transfer",
        "agent",
        "answered",
        "a person",
    )
    assert action["started_at"] <= action["at"]
    assert record["end_reason"] == "transferred"
    assert await metric_lines(rig, "callbridge_call_actions_total") == [
        'callbridge_call_actions_total{outcome="answered",verb="transfer"} 1.0'
    ]


async def test_transfer_waits_for_the_announcement_to_be_heard(rig: Rig) -> None:
    call, session = await answered_call(rig)
    call.dial_outcome = "busy"
    announcement = "I am transferring you to a person now."
    await session.call_tool("transfer_call", {"target": "a person"}, after_tool=announcement)
    heard_before = len(call.heard)
    await call.wait_dialed(timeout=15)
    # Nothing was redirected before the whole announcement had played to the caller.
    assert len(call.heard) - heard_before >= len(rig.agent.reply_audio_for(announcement))
    await call.hangup()


async def test_an_unknown_target_is_refused_to_the_model(rig: Rig) -> None:
    call, session = await answered_call(rig)
    tool_call = await session.call_tool("transfer_call", {"target": "+15551112222"})
    await session.wait_for("tool.result")
    result = session.tool_results[tool_call]
    assert result["is_error"] is True
    assert "unknown transfer target" in result["result"]
    assert rig.rest.updated == []
    await call.hangup()


@BOTH_STREAM_SERVERS
async def test_send_digits_plays_them_then_the_call_resumes(rig: Rig) -> None:
    with caught() as events:
        call, session = await answered_call(rig)
        tool_call = await session.call_tool("send_digits", {"digits": "1w2#"}, after_tool="Ok.")
        await call.wait_streams(2, timeout=10)
        await session.wait_for("tool.result", timeout=10)
    assert call.digits_played == ["1w2#"]
    assert session.tool_results[tool_call]["is_error"] is False
    assert len(rig.agent.sessions) == 1
    assert events.fields_of("stream.reattached")[0]["why"] == "digits"
    assert "1w2#" not in str(events.fields)  # the digits stay out of the logs
    await call.hangup()
    await session.wait_for("session.end")
    record = await record_when_done(rig.server, call.call_sid)
    assert [(a["verb"], a["by"], a["outcome"], a["detail"]) for a in record["actions"]] == [
        ("digits", "agent", "sent", "")
    ]


async def post_verb(rig: Rig, key: str, verb: str, body: dict[str, str]) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{rig.server.url}/api/calls/{key}/{verb}",
            json=body,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as response,
    ):
        return response.status, await response.json()


async def test_transfer_and_digits_through_the_api(rig: Rig) -> None:
    call, session = await answered_call(rig)
    status, body = await post_verb(rig, call.call_sid, "digits", {"digits": "42"})
    assert status == 202, body
    await call.wait_streams(2, timeout=10)
    assert call.digits_played == ["42"]
    status, body = await post_verb(rig, call.call_sid, "transfer", {"target": "nobody"})
    assert (status, body["error"]) == (400, "invalid_parameter")
    assert body["message"] == "target must be one of: 'a person'"  # this call's bot's
    call.dial_outcome = "no-answer"
    status, body = await post_verb(rig, call.call_sid, "transfer", {"target": "a person"})
    assert status == 202, body
    # The agent announces the transfer itself, then the call is dialled.
    await session.wait_for(instructions_with("transferring them to a person"), timeout=10)
    await call.wait_dialed(timeout=15)
    await call.wait_streams(3, timeout=10)
    await call.hangup()
    await session.wait_for("session.end")
    record = await record_when_done(rig.server, call.call_sid)
    assert [(a["verb"], a["by"], a["outcome"]) for a in record["actions"]] == [
        ("digits", "operator", "sent"),
        ("transfer", "operator", "no-answer"),
    ]


async def test_a_verb_for_an_ended_call_is_a_clear_409_or_404(rig: Rig) -> None:
    call, session = await answered_call(rig)
    await call.hangup()
    await session.wait_for("session.end")
    status, body = await post_verb(rig, "no-such-call", "digits", {"digits": "1"})
    assert (status, body["error"]) == (404, "not_found")
    await record_when_done(rig.server, call.call_sid)
    status, body = await post_verb(rig, call.call_sid, "digits", {"digits": "1"})
    assert (status, body["error"]) == (409, "call_ended")


async def metric_lines(rig: Rig, name: str) -> list[str]:
    text = await metrics_text(rig.server)
    return [line for line in text.splitlines() if line.startswith(name)]


# --- the command line ---------------------------------------------------------------------


async def run_cli(rig: Rig, *args: str, folder: Path) -> tuple[int, str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CALLBRIDGE_API_TOKEN": API_TOKEN,
    }
    return await run_command("calls", *args, "--server", rig.server.url, env=env, cwd=folder)


async def test_transfer_and_digits_from_the_command_line(rig: Rig, tmp_path: Path) -> None:
    call, session = await answered_call(rig)
    code, out, err = await run_cli(rig, "digits", call.call_sid, "9#", folder=tmp_path)
    assert (code, out) == (0, f"sending 2 keys on {call.call_sid}\n"), err
    await call.wait_streams(2, timeout=10)
    assert call.digits_played == ["9#"]
    call.dial_outcome = "completed"
    code, out, err = await run_cli(rig, "transfer", call.call_sid, "a person", folder=tmp_path)
    assert (code, out) == (0, f"transferring {call.call_sid} to a person\n"), err
    await call.wait_dialed(timeout=15)
    await session.wait_for("session.end", timeout=10)
    await call.wait_ended(timeout=10)
    code, out, err = await run_cli(rig, "digits", "no-such-call", "1", folder=tmp_path)
    assert (code, out) == (1, "")
    assert err.strip().splitlines() == [
        "callbridge: the server refused (404): no live call with that id or CallSid here"
    ]


# --- voicemail: answering-machine detection -------------------------------------------------


async def outbound_call(rig: Rig) -> tuple[SimulatedCall, FakeSession, str]:
    rig.rest.answered_by = None  # each test sends the verdict itself
    settings = rig.server.settings
    placed = await asyncio.to_thread(
        place_call,
        settings,
        call_id=new_call_id(),
        to="+15557654321",
        from_="+15550001111",
        voicemail=True,
    )
    sid = placed.call_sid
    created = rig.rest.created[0]
    assert created["MachineDetection"] == ["DetectMessageEnd"]
    assert created["AsyncAmd"] == ["true"]
    assert created["AsyncAmdStatusCallback"] == [f"{PUBLIC_URL}/amd-status"]
    call = await rig.rest.wait_for_call()
    session = await rig.agent.wait_for_session()
    await call.wait_started()
    return call, session, sid


async def test_a_machine_gets_the_voicemail_message_then_the_call_ends(rig: Rig) -> None:
    with caught() as events:
        call, session, sid = await outbound_call(rig)
        status, _ = await rig.rest.send_amd_verdict(sid, "machine_end_beep")
        assert status == 204
        told = await session.wait_for(instructions_with("please call us back"), timeout=10)
        await call.wait_ended(timeout=20)
        await events.wait_for("call.ended")
    # The whole message played before the line closed.
    message = str(told["instructions"])
    assert bytes(call.heard).endswith(rig.agent.reply_audio_for(message))
    assert call.end_reason == "hangup-verb"  # the <Redirect> after </Connect>: <Hangup>
    assert events.fields_of("call.ended")[0]["reason"] == "voicemail-left"
    assert events.fields_of("call.answered_by")[0]["answered_by"] == "machine_end_beep"
    record = await record_when_done(rig.server, sid)
    assert record["ended_at"] is not None
    assert [(a["verb"], a["by"], a["outcome"]) for a in record["actions"]] == [
        ("amd", None, "machine_end_beep"),
        ("voicemail", None, "left"),
    ]


async def test_a_fax_is_hung_up_on(rig: Rig) -> None:
    with caught() as events:
        call, session, sid = await outbound_call(rig)
        await rig.rest.send_amd_verdict(sid, "fax")
        await session.wait_for("session.end", timeout=10)
        await call.wait_ended(timeout=10)
        await events.wait_for("call.ended")
    assert events.fields_of("call.ended")[0]["reason"] == "fax"
    record = await record_when_done(rig.server, sid)
    assert record["ended_at"] is not None
    assert [(a["verb"], a["outcome"]) for a in record["actions"]] == [("amd", "fax")]


@pytest.mark.parametrize("verdict", ["human", "unknown", "machine_start"])
async def test_a_person_or_no_verdict_changes_nothing(rig: Rig, verdict: str) -> None:
    with caught() as events:
        call, session, sid = await outbound_call(rig)
        await rig.rest.send_amd_verdict(sid, verdict)
        await events.wait_for("call.answered_by")
    heard = len(call.heard)
    await session.say("Still here.")
    await call.wait_heard(heard + len(rig.agent.reply_audio_for("Still here.")), timeout=10)
    assert not call.ended.is_set()
    assert "reply.create" not in [m.get("type") for m in session.received]
    await call.hangup()


@pytest.mark.parametrize(
    "path",
    [
        "/calls/abc/dial-ended",
        "/calls/abc/transfer-answered",
        "/amd-status",
        "/calls/abc/stream-ended/0f0f",
    ],
)
async def test_the_verbs_callbacks_take_only_signed_requests(rig: Rig, path: str) -> None:
    form = {"CallSid": "CA" + "0" * 32, "DialCallStatus": "completed", "AnsweredBy": "fax"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            rig.server.url + path, data=form, headers={"X-Twilio-Signature": "forged"}
        ) as response,
    ):
        assert response.status == 403
    status, _ = await rig.simulator.request(PUBLIC_URL + path, "POST", form)
    assert status in (200, 204)  # the same request signed by Twilio is taken


@BOTH_STREAM_SERVERS
async def test_keypad_tones_on_an_outbound_call_keep_its_conversation(rig: Rig) -> None:
    rig.rest.answered_by = None
    placed = await asyncio.to_thread(
        place_call,
        rig.server.settings,
        call_id=new_call_id(),
        to="+15557654321",
        from_="+15550001111",
    )
    sid = placed.call_sid
    call = await rig.rest.wait_for_call()
    session = await rig.agent.wait_for_session()
    await call.wait_started()
    tool_call = await session.call_tool("send_digits", {"digits": "3"}, after_tool="Ok.")
    await call.wait_streams(2, timeout=10)
    await session.wait_for("tool.result", timeout=10)
    assert session.tool_results[tool_call]["is_error"] is False
    assert call.digits_played == ["3"]
    assert call.stream_url is not None and "/outbound-stream/" in call.stream_url
    assert call.call_sid == sid and len(rig.agent.sessions) == 1
    await call.hangup()
    await session.wait_for("session.end")
