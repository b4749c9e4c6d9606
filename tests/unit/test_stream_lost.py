"""A stream that breaks without `stop` (a blip between Twilio and us): the call keeps its
agent session and waits for Twilio's next stream (`bridge/reattach.py`), as rules with no
sockets."""

from __future__ import annotations

import json

from callbridge.agent import events as agent
from callbridge.bridge.actions import (
    Action,
    CancelTimer,
    CloseAgent,
    Finished,
    HangUp,
    Log,
    Record,
    SendToAgent,
    SendToTwilio,
    StartTimer,
)
from callbridge.bridge.call_bridge import CallBridge, EndReason
from callbridge.bridge.inputs import (
    AgentClosed,
    HangUpRequested,
    TimerFired,
    TwilioClosed,
    TwilioStreamEnded,
)
from callbridge.bridge.reattach import STREAM_LOST
from callbridge.bridge.silence import SilenceRules
from callbridge.bridge.timers import Timer
from callbridge.bridge.verb_events import CallCompleted
from callbridge.records.entries import CallAction
from tests.unit.test_call_verbs import live, of, second_start


def lost_records(actions: list[Action]) -> list[CallAction]:
    entries = [a.entry for a in of(Record, actions)]
    return [e for e in entries if isinstance(e, CallAction) and e.verb == STREAM_LOST]


def ends_the_agent_session(actions: list[Action]) -> bool:
    return any(json.loads(a.frame)["type"] == "session.end" for a in of(SendToAgent, actions))


def test_a_broken_socket_keeps_the_call_and_waits_for_the_next_stream() -> None:
    bridge = live(stream_lost_seconds=7.0)
    out = bridge.handle(TwilioClosed())
    assert bridge.end_reason is None
    assert bridge.awaiting_stream
    assert of(StartTimer, out) == [StartTimer(Timer.REATTACH, 7.0)]
    assert "stream.lost" in [a.event for a in of(Log, out)]
    assert not of(HangUp, out) and not of(CloseAgent, out) and not ends_the_agent_session(out)


def test_the_next_stream_rejoins_the_same_session_and_is_recorded() -> None:
    bridge = live()
    bridge.handle(TwilioClosed())
    out = bridge.handle(second_start())
    assert bridge.stream_sid == "MZ2"
    assert bridge.session_id == "sess_1"
    assert not bridge.awaiting_stream
    assert CancelTimer(Timer.REATTACH) in out
    [record] = lost_records(out)
    assert record.outcome == "reattached" and record.started_at is not None
    # The agent's audio goes to the new stream.
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    sent = of(SendToTwilio, bridge.handle(agent.ReplyAudio(data=b"\xff" * 160, reply_id="r1")))
    assert sent and all(json.loads(a.frame)["streamSid"] == "MZ2" for a in sent)


def test_no_stream_in_time_ends_the_call_as_disconnected() -> None:
    bridge = live()
    bridge.handle(TwilioClosed())
    out = bridge.handle(TimerFired(Timer.REATTACH))
    assert bridge.end_reason is EndReason.TWILIO_DISCONNECTED
    assert [r.outcome for r in lost_records(out)] == ["not-back"]
    assert ends_the_agent_session(out)
    assert not bridge.awaiting_stream


def test_twilio_saying_the_stream_ended_closes_a_half_open_socket() -> None:
    bridge = live()
    out = bridge.handle(TwilioStreamEnded())
    assert HangUp() in out  # what is left of the old socket
    assert bridge.awaiting_stream and bridge.end_reason is None
    assert bridge.handle(TwilioClosed()) == []  # that socket's close changes nothing now
    bridge.handle(second_start())
    assert bridge.stream_sid == "MZ2" and bridge.session_id == "sess_1"


def test_twilio_saying_the_stream_ended_after_our_close_changes_nothing() -> None:
    bridge = live()
    bridge.handle(TwilioClosed())
    assert bridge.handle(TwilioStreamEnded()) == []
    assert bridge.awaiting_stream


def test_with_waiting_off_a_broken_socket_ends_the_call() -> None:
    bridge = live(stream_lost_seconds=0)
    bridge.handle(TwilioClosed())
    assert bridge.end_reason is EndReason.TWILIO_DISCONNECTED
    other = live(stream_lost_seconds=0)
    other.handle(TwilioStreamEnded())
    assert other.end_reason is EndReason.TWILIO_DISCONNECTED


def test_a_stream_that_breaks_during_the_goodbye_ends_the_call() -> None:
    bridge = live()
    bridge.handle(HangUpRequested("agent", "Say goodbye."))
    bridge.handle(TwilioClosed())
    assert bridge.end_reason is not None
    assert not bridge.awaiting_stream


def test_a_break_before_the_stream_started_ends_the_call() -> None:
    bridge = CallBridge(session_config={"system_prompt": "hi"}, tools=[])
    bridge.handle(TwilioClosed())
    assert not bridge.awaiting_stream
    assert bridge.end_reason is EndReason.TWILIO_DISCONNECTED


def test_the_caller_hanging_up_while_the_stream_is_lost_ends_the_call() -> None:
    bridge = live()
    bridge.handle(TwilioClosed())
    out = bridge.handle(CallCompleted())
    assert [r.outcome for r in lost_records(out)] == ["call-ended"]
    assert bridge.end_reason is EndReason.STREAM_STOPPED
    assert of(Finished, bridge.handle(AgentClosed(1000)))


def test_no_silence_check_in_while_there_is_no_stream() -> None:
    bridge = live(silence=SilenceRules(5.0, 2))
    bridge.handle(TwilioClosed())
    out = bridge.handle(TimerFired(Timer.SILENCE))
    assert not of(SendToAgent, out)
    assert not of(Record, out)
