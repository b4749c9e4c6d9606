"""The call verbs end to end: hang up, say, keypad in and silence, through a running server
between the Twilio simulator and the fake agent, from the agent, the API and the command
line."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import pytest

from callbridge import Bot, Keypad, SilenceRules, end_call, tool
from callbridge.bridge.keypad import entry_instructions
from callbridge.bridge.silence import CHECK_IN_INSTRUCTIONS
from callbridge.server.state import APP_STATE
from callbridge.testing.audio import silence, tone
from callbridge.testing.fake_agent import FakeVoiceAgent, ScriptedTurn
from callbridge.testing.fake_agent.script import END_CALL_GOODBYE
from callbridge.testing.twilio_simulator import SimulatedCall, TwilioSimulator
from tests.conftest import API_KEY, API_TOKEN, AUTH_TOKEN, PUBLIC_URL, RunningServer, ServerFactory
from tests.helpers.log_events import caught
from tests.helpers.records import fetch_record, metrics_text
from tests.helpers.server_process import run_command
from tests.records.test_api import checked

GREETING = "Hi."
GOODBYE = END_CALL_GOODBYE  # what the fake agent says after end_call's result
CARD = "4111222233334444"
cards_taken: list[str] = []


@tool
async def pay(
    amount: int,
    card: Annotated[
        str, Keypad("Please type your card number, then the pound key.", 16, 16, sensitive=True)
    ],
) -> str:
    """Take a payment by card."""
    cards_taken.append(card)
    return f"paid {amount} with the card ending {card[-1:]}x"  # never the number back


@tool
async def pay_badly(
    card: Annotated[str, Keypad("Type your card number.", 16, 16, sensitive=True)],
) -> str:
    """Take a payment, and fail."""
    raise ValueError(f"card {card} declined")  # a careless message: it must go nowhere


QUIET = SilenceRules(prompt_seconds=30)  # no check-ins unless a test wants them
BOT = Bot(system_prompt="x", greeting=GREETING, tools=(end_call, pay, pay_badly), silence=QUIET)


@pytest.fixture
async def fast_agent() -> AsyncIterator[FakeVoiceAgent]:
    """Audio generated four times faster than it plays, as the live API does: a reply is
    done well before the caller has heard it."""
    agent = FakeVoiceAgent(api_key=API_KEY, validate_own_events=True, pace=4.0, ms_per_char=20)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()
    assert agent.violations == [], agent.violations


@pytest.fixture
async def server(start_server: ServerFactory, fast_agent: FakeVoiceAgent) -> RunningServer:
    return await start_server(bot=BOT, assemblyai_agent_url=fast_agent.url)


@pytest.fixture
async def simulator(server: RunningServer) -> AsyncIterator[TwilioSimulator]:
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        yield sim
    for call in sim.calls:
        assert call.warnings == [], call.warnings


async def answered(sim: TwilioSimulator, agent: FakeVoiceAgent) -> SimulatedCall:
    call = await sim.place_inbound_call()
    await agent.wait_for_session()
    await call.wait_heard(len(agent.reply_audio_for(GREETING)))
    await call.wait_playback_idle()
    return call


async def post_verb(
    server: RunningServer, key: str, verb: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST a verb; the answer is checked against openapi.yaml."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.url}/api/calls/{key}/{verb}",
            json=body or {},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as response,
    ):
        return response.status, await checked(response, f"/api/calls/{{call}}/{verb}", "post")


# --- hang up ------------------------------------------------------------------------------


async def test_end_call_hangs_up_only_once_the_goodbye_has_played(
    server: RunningServer, simulator: TwilioSimulator, fast_agent: FakeVoiceAgent
) -> None:
    fast_agent.turns.append(
        ScriptedTurn(user_text="bye now", tool_name="end_call", tool_arguments={})
    )
    call = await answered(simulator, fast_agent)
    session = await fast_agent.wait_for_session()
    call.speak(tone(300, 300) + silence(500))
    await session.wait_sent(
        lambda e: e["type"] == "transcript.agent" and e["text"] == GOODBYE, timeout=10
    )
    # The goodbye was generated in full long before it played: the line is still open.
    assert not call.ended.is_set()
    await call.wait_ended(timeout=15)
    assert call.end_reason == "hangup-verb"  # the <Redirect> after </Connect>: <Hangup>
    assert call.unplayed_at_stream_end == 0  # the caller heard all of it
    assert bytes(call.heard).endswith(fast_agent.reply_audio_for(GOODBYE))
    await session.ended.wait()
    assert session.end_reason == "session.end"
    record = await fetch_record(server, call.call_sid)
    assert (record["ended_by"], record["end_reason"]) == ("agent", "agent-hung-up")
    actions = [(a["verb"], a["by"], a["outcome"]) for a in record["actions"]]
    assert actions == [("hang-up", "agent", "after-goodbye")]


async def test_a_goodbye_that_does_not_play_in_time_is_cut_short(
    start_server: ServerFactory, fast_agent: FakeVoiceAgent
) -> None:
    server = await start_server(
        bot=BOT, assemblyai_agent_url=fast_agent.url, callbridge_goodbye_wait_seconds=1.0
    )
    fast_agent.turns.append(
        ScriptedTurn(user_text="bye now", tool_name="end_call", tool_arguments={})
    )
    # A line that plays a tenth as fast as it should: the goodbye cannot be heard in 1 s.
    async with TwilioSimulator(
        server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL, playback_rate=800.0
    ) as sim:
        with caught() as events:
            call = await sim.place_inbound_call()
            session = await fast_agent.wait_for_session()
            await session.wait_sent("session.ready")
            call.speak(tone(300, 300) + silence(500))
            await session.wait_sent(
                lambda e: e["type"] == "transcript.agent" and e["text"] == GOODBYE, timeout=10
            )
            await call.wait_ended(timeout=10)
            await events.wait_for("call.ended")
    assert events.fields_of("call.goodbye_not_played")[0]["within_seconds"] == 1.0
    assert call.unplayed_at_stream_end  # the line closed with the goodbye still playing
    record = await fetch_record(server, call.call_sid)
    assert (record["ended_by"], record["end_reason"]) == ("agent", "agent-hung-up")
    actions = [(a["verb"], a["by"], a["outcome"]) for a in record["actions"]]
    assert actions == [("hang-up", "agent", "goodbye-not-played")]


# --- hang up and say from the API and the command line -----------------------------------


async def test_say_then_hang_up_through_the_api(
    server: RunningServer, simulator: TwilioSimulator, fast_agent: FakeVoiceAgent
) -> None:
    call = await answered(simulator, fast_agent)
    session = await fast_agent.wait_for_session()
    status, body = await post_verb(server, call.call_sid, "say", {"text": "Your order shipped."})
    assert status == 202, body
    create = await session.wait_for("reply.create")
    assert "Your order shipped." in create["instructions"]

    [runner] = server.app[APP_STATE].registry.live.values()
    status, body = await post_verb(server, runner.call_id, "hangup", {"goodbye": "Bye now."})
    assert (status, body["verb"]) == (202, "hangup")
    await call.wait_ended(timeout=15)
    assert call.unplayed_at_stream_end == 0
    assert bytes(call.heard).endswith(
        fast_agent.reply_audio_for(
            [r for r in session.received if r["type"] == "reply.create"][-1]["instructions"]
        )
    )
    record = await fetch_record(server, call.call_sid)
    assert (record["ended_by"], record["end_reason"]) == ("operator", "operator-hung-up")
    actions = [(a["verb"], a["by"], a["outcome"]) for a in record["actions"]]
    assert actions == [("say", "operator", "sent"), ("hang-up", "operator", "after-goodbye")]

    # The call is over: a clear refusal, never a crash.
    status, body = await post_verb(server, call.call_sid, "say", {"text": "Anyone there?"})
    assert (status, body["error"]) == (409, "call_ended")
    status, body = await post_verb(server, "CA" + "0" * 32, "hangup")
    assert (status, body["error"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("body", "error"),
    [({"text": ""}, "invalid_body"), ({"words": "x"}, "invalid_body"), ({}, "invalid_body")],
)
async def test_a_say_without_text_is_a_bad_request(
    server: RunningServer, body: dict[str, Any], error: str
) -> None:
    status, answer = await post_verb(server, "whatever", "say", body)
    assert (status, answer["error"]) == (400, error)


async def run_cli(server: RunningServer, *args: str) -> tuple[int, str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CALLBRIDGE_API_TOKEN": API_TOKEN,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "ASSEMBLYAI_API_KEY": API_KEY,
    }
    return await run_command(
        "calls", *args, "--server", server.url, env=env, cwd=Path(__file__).parent
    )


async def test_say_and_hang_up_from_the_command_line(
    server: RunningServer, simulator: TwilioSimulator, fast_agent: FakeVoiceAgent
) -> None:
    call = await answered(simulator, fast_agent)
    session = await fast_agent.wait_for_session()
    code, out, err = await run_cli(server, "say", call.call_sid, "Hold on a moment.")
    assert code == 0, err
    assert "says it now" in out
    create = await session.wait_for("reply.create")
    assert "Hold on a moment." in create["instructions"]
    code, out, err = await run_cli(server, "hangup", call.call_sid)
    assert code == 0, err
    assert out.startswith("hanging up")
    await call.wait_ended(timeout=10)
    code, _, err = await run_cli(server, "hangup", call.call_sid)
    assert code == 1
    assert "ended" in err or "no live call" in err


# --- keypad in ----------------------------------------------------------------------------


async def test_keypad_entries_reach_the_agent_in_order(
    simulator: TwilioSimulator, fast_agent: FakeVoiceAgent
) -> None:
    call = await answered(simulator, fast_agent)
    session = await fast_agent.wait_for_session()
    for key in "7*314#":
        await call.send_dtmf(key)
    create = await session.wait_for("reply.create")
    assert create["instructions"] == entry_instructions("314")
    for key in "95#":
        await call.send_dtmf(key)
    await session.wait_for(
        lambda m: m["type"] == "reply.create" and m["instructions"] == entry_instructions("95")
    )
    await call.hangup()


async def test_a_sensitive_keypad_argument_reaches_the_tool_and_nowhere_else(
    server: RunningServer, simulator: TwilioSimulator, fast_agent: FakeVoiceAgent
) -> None:
    cards_taken.clear()
    fast_agent.turns.append(
        ScriptedTurn(
            user_text="I want to pay",
            tool_name="pay",
            tool_arguments={"amount": 20},
            after_tool="Done: {result}.",
        )
    )
    with caught() as events:
        call = await answered(simulator, fast_agent)
        session = await fast_agent.wait_for_session()
        call.speak(tone(300, 300) + silence(500))
        prompt = await session.wait_for("reply.create", timeout=10)
        assert "card number" in prompt["instructions"]
        for key in CARD + "#":
            await call.send_dtmf(key)
        result = await session.wait_for("tool.result", timeout=10)
        assert result["is_error"] is False
        assert cards_taken == [CARD]
        await session.wait_sent(
            lambda e: e["type"] == "transcript.agent" and e["text"].startswith("Done"), timeout=10
        )
        await call.hangup()
        await call.wait_ended()
        await server.app[APP_STATE].records.flush()
    # Nowhere else: what the agent received, the logs, the spool and database, the metrics.
    assert CARD not in str(session.received)
    assert CARD not in str(list(zip(events.names, events.fields, strict=True)))
    folder = Path(server.settings.callbridge_spool_path).parent
    for path in folder.iterdir():
        assert CARD.encode() not in path.read_bytes(), path
    text = await metrics_text(server)  # asserts the 200
    assert CARD not in text
    assert 'callbridge_call_actions_total{outcome="entered",verb="keypad-argument"} 1.0' in text
    record = await fetch_record(server, call.call_sid)
    assert [(a["verb"], a["detail"]) for a in record["actions"]] == [
        ("keypad-argument", "card: 16 keys")
    ]
    assert "keypad.argument" in events.names


async def test_a_tool_that_fails_quoting_sensitive_keys_logs_only_the_error_type(
    simulator: TwilioSimulator, fast_agent: FakeVoiceAgent
) -> None:
    fast_agent.turns.append(ScriptedTurn(user_text="pay", tool_name="pay_badly", tool_arguments={}))
    with caught() as events:
        call = await answered(simulator, fast_agent)
        session = await fast_agent.wait_for_session()
        call.speak(tone(300, 300) + silence(500))
        await session.wait_for("reply.create", timeout=10)
        for key in CARD:
            await call.send_dtmf(key)  # the 16th key completes it
        result = await session.wait_for("tool.result", timeout=10)
        await call.hangup()
    assert result["is_error"] is True and CARD not in result["result"]
    assert events.fields_of("tool.raised")[0]["error"] == "ValueError"
    assert CARD not in str(list(zip(events.names, events.fields, strict=True)))
    assert CARD not in "".join(events.tracebacks)


# --- silence ------------------------------------------------------------------------------


async def test_a_silent_caller_is_checked_on_then_the_call_ends(
    start_server: ServerFactory, fast_agent: FakeVoiceAgent
) -> None:
    bot = Bot(system_prompt="x", greeting=GREETING, silence=SilenceRules(1.0, prompts=1))
    server = await start_server(bot=bot, assemblyai_agent_url=fast_agent.url)
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        call = await sim.place_inbound_call()
        session = await fast_agent.wait_for_session()
        check_in = await session.wait_for("reply.create", timeout=10)
        assert check_in["instructions"] == CHECK_IN_INSTRUCTIONS
        await call.wait_ended(timeout=20)
        creates = [m for m in session.received if m["type"] == "reply.create"]
        assert len(creates) == 2 and "goodbye" in creates[1]["instructions"]
        assert call.unplayed_at_stream_end == 0
        assert bytes(call.heard).endswith(fast_agent.reply_audio_for(creates[1]["instructions"]))
        record = await fetch_record(server, call.call_sid)
        assert (record["ended_by"], record["end_reason"]) == ("agent", "caller-silent")
        actions = [(a["verb"], a["by"], a["outcome"]) for a in record["actions"]]
        assert actions == [
            ("silence-check-in", "silence", "asked"),
            ("hang-up", "silence", "after-goodbye"),
        ]


async def test_say_before_the_agent_is_ready_is_refused_and_counted(
    start_server: ServerFactory,
) -> None:
    slow = FakeVoiceAgent(api_key=API_KEY, validate_own_events=True, ready_delay=30)
    await slow.start()
    try:
        server = await start_server(bot=BOT, assemblyai_agent_url=slow.url)
        async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
            call = await sim.place_inbound_call()
            await slow.wait_for_session()
            status, body = await post_verb(server, call.call_sid, "say", {"text": "Hello?"})
            assert (status, body["error"]) == (409, "call_ending")
            assert "not live yet" in body["message"]
            text = await metrics_text(server)
            assert 'callbridge_call_actions_total{outcome="refused",verb="say"} 1.0' in text
            await call.hangup()
    finally:
        await slow.stop()
    assert slow.violations == [], slow.violations
