"""Hanging up and saying, as the bridge decides them: plain function calls, no sockets."""

from __future__ import annotations

from typing import Any

from callbridge.agent import events as agent
from callbridge.bridge.actions import Action, CancelTimer, HangUp, Record, StartTimer
from callbridge.bridge.call_bridge import CallBridge, EndReason, State
from callbridge.bridge.hang_up import HANG_UP_MARK
from callbridge.bridge.inputs import (
    AgentClosed,
    AgentOpened,
    HangUpRequested,
    SayRequested,
    TimerFired,
    TwilioClosed,
)
from callbridge.bridge.timers import Timer
from callbridge.records.entries import CallClosed
from callbridge.twilio import media_stream as twilio
from callbridge.verbs import end_call
from tests.unit.test_call_bridge import PAYLOAD, STREAM, lookup, start_frame, to_agent, to_twilio


def verb_bridge(**kwargs: Any) -> CallBridge:
    bridge = CallBridge(
        session_config={"system_prompt": "hi"},
        tools=[lookup, end_call],
        hang_up_wait_seconds=7.0,
        **kwargs,
    )
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionReady(session_id="sess_1"))
    assert bridge.state is State.LIVE
    return bridge


def echo(name: str) -> twilio.Mark:
    return twilio.Mark(mark=twilio.MarkInfo(name=name), stream_sid=STREAM)


def hung_up(actions: list[Action]) -> bool:
    return any(isinstance(a, HangUp) for a in actions)


def reply(bridge: CallBridge, reply_id: str, *, done: bool = True) -> list[Action]:
    actions = bridge.handle(agent.ReplyStarted(reply_id=reply_id))
    actions += bridge.handle(agent.ReplyAudio(data=PAYLOAD, reply_id=reply_id))
    if done:
        actions += bridge.handle(agent.ReplyDone(reply_id=reply_id, status="completed"))
    return actions


def call_end_call(bridge: CallBridge) -> list[Action]:
    """The model calls end_call in a reply of its own (the pre-amble), which then ends."""
    actions = bridge.handle(agent.ReplyStarted(reply_id="pre"))
    actions += bridge.handle(agent.ToolCall(call_id="t1", name="end_call", arguments={}))
    actions += bridge.handle(agent.ReplyDone(reply_id="pre", status="completed"))
    return actions


def test_end_call_answers_the_tool_and_hangs_up_only_once_the_goodbye_played() -> None:
    bridge = verb_bridge()
    actions = call_end_call(bridge)
    results = [f for f in to_agent(actions) if f["type"] == "tool.result"]
    assert [r["call_id"] for r in results] == ["t1"]
    assert StartTimer(Timer.HANG_UP, 7.0) in actions
    assert not hung_up(actions)

    actions = reply(bridge, "bye")  # the goodbye, generated in full
    assert not hung_up(actions)
    assert {"event": "mark", "streamSid": STREAM, "mark": {"name": HANG_UP_MARK}} in to_twilio(
        actions
    )
    assert bridge.end_reason is None  # generated is not played

    actions = bridge.handle(echo(HANG_UP_MARK))  # Twilio played everything before the mark
    assert hung_up(actions)
    assert CancelTimer(Timer.HANG_UP) in actions
    assert {"type": "session.end"} in to_agent(actions)
    assert bridge.end_reason is EndReason.AGENT_HUNG_UP

    closing = bridge.handle(agent.SessionEnded()) + bridge.handle(AgentClosed(1000))
    closing += bridge.handle(TwilioClosed())
    closed = [a.entry for a in closing if isinstance(a, Record) and isinstance(a.entry, CallClosed)]
    assert [(c.ended_by, c.reason) for c in closed] == [("agent", "agent-hung-up")]


def test_the_reply_that_called_end_call_is_not_taken_for_the_goodbye() -> None:
    bridge = verb_bridge()
    bridge.handle(agent.ReplyStarted(reply_id="pre"))
    bridge.handle(agent.ReplyAudio(data=PAYLOAD, reply_id="pre"))
    bridge.handle(agent.ToolCall(call_id="t1", name="end_call", arguments={}))
    actions = bridge.handle(agent.ReplyDone(reply_id="pre", status="completed"))
    assert HANG_UP_MARK not in str(to_twilio(actions))
    actions = reply(bridge, "bye")
    assert HANG_UP_MARK in str(to_twilio(actions))


def test_a_goodbye_talked_over_is_said_again_by_the_next_reply() -> None:
    bridge = verb_bridge()
    call_end_call(bridge)
    reply(bridge, "bye", done=False)
    actions = bridge.handle(agent.ReplyDone(reply_id="bye", status="interrupted"))
    assert HANG_UP_MARK not in str(to_twilio(actions))
    actions = reply(bridge, "bye-again")
    assert HANG_UP_MARK in str(to_twilio(actions))


def test_a_goodbye_that_never_plays_ends_the_call_at_the_end_of_the_wait() -> None:
    bridge = verb_bridge()
    call_end_call(bridge)
    reply(bridge, "bye")  # its mark is never echoed
    actions = bridge.handle(TimerFired(Timer.HANG_UP))
    assert hung_up(actions)
    assert {"type": "session.end"} in to_agent(actions)
    assert bridge.end_reason is EndReason.AGENT_HUNG_UP
    assert bridge.end_detail == "no goodbye played in time"


def test_an_operator_hangs_up_at_once_without_a_goodbye() -> None:
    bridge = verb_bridge()
    actions = bridge.handle(HangUpRequested())
    assert hung_up(actions)
    assert bridge.end_reason is EndReason.OPERATOR_HUNG_UP
    assert bridge.handle(HangUpRequested()) == []  # ended already: nothing more, no error


def test_an_operator_goodbye_is_said_then_the_call_ends_once_it_played() -> None:
    bridge = verb_bridge()
    actions = bridge.handle(HangUpRequested(goodbye="Our office is closing now."))
    creates = [f for f in to_agent(actions) if f["type"] == "reply.create"]
    assert len(creates) == 1 and "Our office is closing now." in creates[0]["instructions"]
    assert not hung_up(actions)
    reply(bridge, "bye")
    actions = bridge.handle(echo(HANG_UP_MARK))
    assert hung_up(actions)
    assert bridge.end_reason is EndReason.OPERATOR_HUNG_UP


def test_a_second_hang_up_while_the_goodbye_plays_changes_nothing() -> None:
    bridge = verb_bridge()
    call_end_call(bridge)
    actions = bridge.handle(agent.ToolCall(call_id="t2", name="end_call", arguments={}))
    assert not hung_up(actions)
    assert [a for a in actions if isinstance(a, StartTimer) and a.name == Timer.HANG_UP] == []


def test_say_makes_the_agent_speak_with_instructions() -> None:
    bridge = verb_bridge()
    actions = bridge.handle(SayRequested("Your table is ready."))
    creates = [f for f in to_agent(actions) if f["type"] == "reply.create"]
    assert len(creates) == 1
    assert "Your table is ready." in creates[0]["instructions"]


def test_verbs_are_refused_once_the_call_ends() -> None:
    bridge = verb_bridge()
    assert bridge.live_refusal() is None
    bridge.handle(HangUpRequested())
    assert bridge.live_refusal() == "the call is ending"
    assert to_agent(bridge.handle(SayRequested("hello?"))) == []


def test_say_before_the_agent_is_ready_is_refused() -> None:
    bridge = CallBridge(session_config={}, tools=[])
    bridge.handle(start_frame())
    assert bridge.live_refusal() == "the call is not live yet"
    assert to_agent(bridge.handle(SayRequested("hello?"))) == []


def test_the_caller_hanging_up_during_the_goodbye_ends_the_call_as_theirs() -> None:
    bridge = verb_bridge()
    call_end_call(bridge)
    reply(bridge, "bye", done=False)
    actions = bridge.handle(twilio.Stop(stream_sid=STREAM))
    assert bridge.end_reason is EndReason.STREAM_STOPPED
    assert bridge.handle(echo(HANG_UP_MARK)) == []  # a late echo changes nothing
    actions += bridge.handle(TimerFired(Timer.HANG_UP))  # nor does the wait running out
    assert not any(isinstance(a, Record) and "hang-up" in repr(a.entry) for a in actions)


def test_keys_pressed_while_the_goodbye_plays_reach_nobody() -> None:
    bridge = verb_bridge()
    call_end_call(bridge)
    actions: list[Action] = []
    for key in "12#":
        actions += bridge.handle(twilio.Dtmf(dtmf=twilio.DtmfInfo(digit=key), stream_sid=STREAM))
    assert to_agent(actions) == []
