"""Outbound calls: `callbridge call` (a real process) against the fake Twilio REST API,
which answers by driving the simulator into our server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from callbridge.bot import bot
from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_rest_fake import FakeTwilioRest
from callbridge.testing.twilio_simulator import DEFAULT_ACCOUNT_SID, TwilioSimulator
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, RunningServer
from tests.helpers.server_process import run_command

OUR_NUMBER = "+15550001111"
CALLEE = "+15557654321"


@pytest.fixture
async def rest(simulator: TwilioSimulator) -> AsyncIterator[FakeTwilioRest]:
    fake = FakeTwilioRest(
        simulator,
        auth_token=AUTH_TOKEN,
        owned_numbers=[OUR_NUMBER],
        verified_numbers=[CALLEE],
    )
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def run_call_command(
    rest: FakeTwilioRest, *args: str, token: str = AUTH_TOKEN
) -> tuple[int, str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": token,
        "TWILIO_API_BASE_URL": rest.base_url,
        "TWILIO_PHONE_NUMBER": OUR_NUMBER,
        "TARGET_PHONE_NUMBER": CALLEE,
        "PUBLIC_URL": PUBLIC_URL,
    }
    return await run_command("call", *args, env=env)


async def test_outbound_call_agent_greets_first_with_the_outbound_prompt(
    server: RunningServer, fake_agent: FakeVoiceAgent, rest: FakeTwilioRest
) -> None:
    code, out, err = await run_call_command(rest)
    assert code == 0, err
    sid = out.strip()
    assert sid.startswith("CA")
    created = rest.created[0]
    # Our call id (and any parameters) ride, signed, in the query.
    assert created["Url"][0].startswith(f"{PUBLIC_URL}/outbound-twiml?v=1&id=")
    assert created["StatusCallback"] == [f"{PUBLIC_URL}/call-status"]
    assert set(created["StatusCallbackEvent"]) == {"initiated", "ringing", "answered", "completed"}
    call = await rest.wait_for_call()
    assert call.stream_url is not None and "/outbound-stream/" in call.stream_url
    session = await fake_agent.wait_for_session()
    config = session.received[0]["session"]
    assert config["system_prompt"] == bot.outbound_prompt
    assert config["greeting"] == bot.outbound_greeting
    assert bot.outbound_greeting is not None
    expected = fake_agent.reply_audio_for(bot.outbound_greeting)
    await call.wait_heard(len(expected), timeout=10)
    assert bytes(call.heard)[: len(expected)] == expected
    await call.hangup()
    await session.wait_for("session.end")


@pytest.mark.parametrize(
    ("args", "token", "message"),
    [
        ((), "wrong-token", "rejected the credentials"),
        (("+15559990000",), AUTH_TOKEN, "not a verified number"),
        (("12345",), AUTH_TOKEN, "not a valid phone number"),
        (("--from", "+15558887777"), AUTH_TOKEN, "is not a Twilio number"),
    ],
)
async def test_twilio_errors_become_one_clear_line(
    rest: FakeTwilioRest, args: tuple[str, ...], token: str, message: str
) -> None:
    code, out, err = await run_call_command(rest, *args, token=token)
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert token not in err
