"""The silence rule, as the bridge applies it: check-ins, then a goodbye and a hang-up."""

from __future__ import annotations

import pytest

from callbridge.agent import events as agent
from callbridge.bridge.actions import Action, CancelTimer, HangUp, StartTimer
from callbridge.bridge.call_bridge import CallBridge, EndReason
from callbridge.bridge.hang_up import HANG_UP_MARK
from callbridge.bridge.inputs import AgentClosed, AgentOpened, TimerFired
from callbridge.bridge.silence import CHECK_IN_INSTRUCTIONS, SilenceRules
from callbridge.bridge.timers import Timer
from callbridge.twilio import media_stream as twilio
from tests.unit.test_call_bridge import PAYLOAD, STREAM, start_frame, to_agent

ARMED = StartTimer(Timer.SILENCE, 4.0)


def silence_bridge(prompts: int = 2) -> CallBridge:
    bridge = CallBridge(
        session_config={}, tools=[], silence=SilenceRules(prompt_seconds=4.0, prompts=prompts)
    )
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionReady(session_id="sess_1"))
    return bridge


def echo(name: str) -> twilio.Mark:
    return twilio.Mark(mark=twilio.MarkInfo(name=name), stream_sid=STREAM)


def play_reply(bridge: CallBridge, reply_id: str) -> list[Action]:
    """A reply sent in full, then played in full (Twilio echoes every mark)."""
    actions = bridge.handle(agent.ReplyStarted(reply_id=reply_id))
    actions += bridge.handle(agent.ReplyAudio(data=PAYLOAD, reply_id=reply_id))
    actions += bridge.handle(agent.ReplyDone(reply_id=reply_id, status="completed"))
    played: list[Action] = []
    for frame in actions:
        if hasattr(frame, "frame") and b'"mark"' in frame.frame and b"cb-" in frame.frame:
            name = frame.frame.split(b'"name":"')[1].split(b'"')[0].decode()
            played += bridge.handle(echo(name))
    return actions + played


def check_ins(actions: list[Action]) -> int:
    return sum(
        1
        for f in to_agent(actions)
        if f["type"] == "reply.create" and f["instructions"] == CHECK_IN_INSTRUCTIONS
    )


def test_the_wait_starts_once_the_reply_has_played_not_when_it_was_sent() -> None:
    bridge = silence_bridge()
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    sent = bridge.handle(agent.ReplyAudio(data=PAYLOAD, reply_id="r1"))
    sent += bridge.handle(agent.ReplyDone(reply_id="r1", status="completed"))
    assert ARMED not in sent
    assert ARMED in play_reply(bridge, "r2")


def test_check_ins_then_a_goodbye_then_the_call_ends() -> None:
    bridge = silence_bridge(prompts=2)
    assert ARMED in play_reply(bridge, "greeting")
    assert check_ins(bridge.handle(TimerFired(Timer.SILENCE))) == 1
    assert ARMED in play_reply(bridge, "check-in-1")
    assert check_ins(bridge.handle(TimerFired(Timer.SILENCE))) == 1
    assert ARMED in play_reply(bridge, "check-in-2")
    actions = bridge.handle(TimerFired(Timer.SILENCE))
    assert check_ins(actions) == 0
    goodbye = [f for f in to_agent(actions) if f["type"] == "reply.create"]
    assert len(goodbye) == 1 and "goodbye" in goodbye[0]["instructions"]
    actions = play_reply(bridge, "goodbye")
    assert ARMED not in actions  # hanging up: no more waiting
    actions = bridge.handle(echo(HANG_UP_MARK))
    assert any(isinstance(a, HangUp) for a in actions)
    assert bridge.end_reason is EndReason.CALLER_SILENT


def test_caller_speech_stops_the_wait_and_starts_the_check_ins_over() -> None:
    bridge = silence_bridge(prompts=1)
    play_reply(bridge, "greeting")
    assert check_ins(bridge.handle(TimerFired(Timer.SILENCE))) == 1
    play_reply(bridge, "check-in")
    actions = bridge.handle(agent.SpeechStarted())
    assert CancelTimer(Timer.SILENCE) in actions
    bridge.handle(agent.SpeechStopped())
    play_reply(bridge, "answer")
    assert check_ins(bridge.handle(TimerFired(Timer.SILENCE))) == 1  # a check-in, not an end
    assert bridge.end_reason is None


def test_no_wait_while_the_caller_speaks() -> None:
    bridge = silence_bridge()
    bridge.handle(agent.SpeechStarted())
    assert ARMED not in play_reply(bridge, "r1")


@pytest.mark.parametrize("rules", [None, SilenceRules(prompts=0)])
def test_silence_rule_off(rules: SilenceRules | None) -> None:
    bridge = CallBridge(session_config={}, tools=[], silence=rules)
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionReady(session_id="sess_1"))
    actions = play_reply(bridge, "r1")
    assert not any(isinstance(a, StartTimer) and a.name == Timer.SILENCE for a in actions)


def test_without_a_greeting_the_wait_starts_when_the_session_is_ready() -> None:
    bridge = CallBridge(
        session_config={}, tools=[], silence=SilenceRules(prompt_seconds=4.0, prompts=1)
    )
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    assert ARMED in bridge.handle(agent.SessionReady(session_id="sess_1"))
    greeted = CallBridge(
        session_config={"greeting": "Hi."}, tools=[], silence=SilenceRules(4.0, prompts=1)
    )
    greeted.handle(start_frame())
    greeted.handle(AgentOpened())
    assert ARMED not in greeted.handle(agent.SessionReady(session_id="sess_1"))


def test_a_wait_that_runs_out_while_the_agent_reconnects_starts_again_later() -> None:
    bridge = silence_bridge()
    play_reply(bridge, "greeting")
    bridge.handle(AgentClosed(1006))
    assert check_ins(bridge.handle(TimerFired(Timer.SILENCE))) == 0
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionReady(session_id="sess_1"))
    assert ARMED in play_reply(bridge, "after")
