"""A call's log lines, from the real server between the Twilio simulator and the fake agent:
every line of a call carries its id, a tool call's lines carry the tool call's id besides;
what every call does is not a warning; the call ends with one readable line."""

from __future__ import annotations

import logging

from callbridge.bot import Bot
from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_simulator import TwilioSimulator
from callbridge.tools import tool
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, ServerFactory
from tests.helpers.log_events import caught


@tool
def explode() -> str:
    """Always fails."""
    raise RuntimeError("a bug in the tool")


BOT = Bot(system_prompt="x", greeting="Hello.", tools=(explode,))


async def test_a_tool_calls_lines_carry_the_call_id_and_the_tool_call_id(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    server = await start_server(bot=BOT, assemblyai_agent_url=fake_agent.url)
    with caught() as events:
        async with TwilioSimulator(
            server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL
        ) as simulator:
            call = await simulator.place_inbound_call()
            session = await fake_agent.wait_for_session()
            await session.wait_sent("reply.done")  # the greeting
            tool_call_id = await session.call_tool("explode", {})
            await session.wait_for(lambda m: m.get("type") == "tool.result")
            await call.hangup()
            await events.wait_for("call.ended")
    [started] = events.fields_of("stream.started")
    call_id = started["call_id"]
    assert isinstance(call_id, str) and call_id != tool_call_id
    tool_lines = [
        (name, fields)
        for name, fields in zip(events.names, events.fields, strict=True)
        if name.startswith("tool.")
    ]
    # Called (DEBUG), raised (the runner's, with the exception), finished (the one INFO).
    assert [name for name, _ in tool_lines] == ["tool.called", "tool.raised", "tool.finished"]
    for name, fields in tool_lines:
        assert (fields["call_id"], fields["tool_call_id"]) == (call_id, tool_call_id), name
    # Filtering by the call's id finds its tool's lines.
    assert all(
        fields["call_id"] == call_id
        for name, fields in zip(events.names, events.fields, strict=True)
        if name.startswith(("tool.", "call.", "stream.", "agent."))
    )


async def test_caller_audio_before_the_agent_is_ready_is_no_warning_and_the_end_is_one_line(
    start_server: ServerFactory,
) -> None:
    # The agent takes its time to be ready: Twilio streams caller audio from the start.
    async with FakeVoiceAgent(api_key="test-key", ready_delay=0.3) as slow_agent:
        server = await start_server(bot=BOT, assemblyai_agent_url=slow_agent.url)
        with caught() as events:
            async with TwilioSimulator(
                server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL
            ) as simulator:
                call = await simulator.place_inbound_call()
                session = await slow_agent.wait_for_session()
                await session.wait_sent("reply.done")  # the greeting
                await call.hangup()
                await events.wait_for("call.ended")
    drops = [
        (fields["reason"], level)
        for fields, level in zip(
            events.fields_of("audio.dropped"), events.levels_of("audio.dropped"), strict=True
        )
    ]
    assert ("before-ready", logging.DEBUG) in drops
    assert logging.WARNING not in events.levels
    [ended] = events.fields_of("call.ended")
    assert events.levels_of("call.ended") == [logging.INFO]
    assert ended["reason"] == "stream-stopped"
    assert ended["session_id"] == session.session_id
    assert isinstance(ended["duration_seconds"], float) and ended["duration_seconds"] > 0
    dropped = ended["dropped"]
    assert isinstance(dropped, dict) and dropped["before-ready"] > 0
    assert not any(key.startswith("fast_path") for key in ended)  # a DEBUG line of its own
    assert not any(value in (0, None, "") for value in ended.values())  # nothing to say
    assert events.names[-1] == "call.ended"
