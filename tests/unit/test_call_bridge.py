"""The call bridge as a state machine: plain function calls, no sockets."""

from __future__ import annotations

import base64
import json
import logging
import math
from typing import Any

import pytest

from callbridge.agent import events as agent
from callbridge.bridge.actions import (
    Action,
    CloseAgent,
    Finished,
    HangUp,
    Log,
    OpenAgent,
    RunTool,
    SendToAgent,
    SendToTwilio,
    StartTimer,
)
from callbridge.bridge.call_bridge import (
    APOLOGY_MARK,
    GOODBYE_MARK,
    CallBridge,
    EndReason,
    State,
)
from callbridge.bridge.call_limits import SHUTDOWN_INSTRUCTIONS, WRAP_UP_INSTRUCTIONS
from callbridge.bridge.inputs import (
    AgentClosed,
    AgentOpened,
    AgentOpenFailed,
    ServerShutdown,
    StreamOpened,
    TimerFired,
    ToolFinished,
    TwilioClosed,
)
from callbridge.bridge.reconnect import LOST_YOU_GREETING
from callbridge.bridge.timers import Timer
from callbridge.tools import tool
from callbridge.twilio import media_stream as twilio
from callbridge.twilio.media_stream import TwilioProtocolError

STREAM = "MZ00000000000000000000000000000001"
PAYLOAD_B64 = "//7+/f38+/r5+A=="  # as it crosses both sockets
PAYLOAD = base64.b64decode(PAYLOAD_B64)  # as the decoders hand it to the bridge


@tool
def lookup(order: str) -> str:
    """Look up an order."""
    return order


def start_frame(**params: str) -> twilio.Start:
    frame = json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": STREAM,
            "start": {
                "streamSid": STREAM,
                "callSid": "CA1",
                "accountSid": "AC1",
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )
    message = twilio.decode(frame)
    assert isinstance(message, twilio.Start)
    return message


def media(payload: bytes = PAYLOAD) -> twilio.Media:
    return twilio.Media(media=twilio.MediaInfo(payload=payload), stream_sid=STREAM)


def new_bridge(**kwargs: Any) -> CallBridge:
    return CallBridge(
        session_config={"system_prompt": "hi"},
        tools=[lookup],
        apology_payloads=(b"\x00\x00\x00", b"\x04\x10\x41"),
        apology_seconds=1.0,
        **kwargs,
    )


def live_bridge(**kwargs: Any) -> CallBridge:
    bridge = new_bridge(**kwargs)
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionUpdated())
    bridge.handle(agent.SessionReady(session_id="sess_1"))
    assert bridge.state is State.LIVE
    return bridge


def playing_bridge() -> CallBridge:
    """A live call with reply r1 started and one chunk of it sent to Twilio."""
    bridge = live_bridge()
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    bridge.handle(agent.ReplyAudio(data=PAYLOAD, reply_id="r1"))
    return bridge


def to_agent(actions: list[Action]) -> list[dict[str, Any]]:
    return [json.loads(a.frame) for a in actions if isinstance(a, SendToAgent)]


def to_twilio(actions: list[Action], marks: bool = False) -> list[dict[str, Any]]:
    """Frames for Twilio; the playout ledger's own marks only when asked for."""
    frames = [json.loads(a.frame) for a in actions if isinstance(a, SendToTwilio)]
    if marks:
        return frames
    return [f for f in frames if not f.get("mark", {}).get("name", "").startswith("cb-")]


def test_start_opens_agent_and_session_update_goes_first() -> None:
    bridge = new_bridge()
    actions = bridge.handle(start_frame(direction="inbound"))
    assert any(isinstance(a, OpenAgent) for a in actions)
    assert bridge.custom_parameters == {"direction": "inbound"}
    actions = bridge.handle(AgentOpened())
    sent = to_agent(actions)
    assert sent == [{"type": "session.update", "session": {"system_prompt": "hi"}}]
    assert StartTimer(Timer.READY, 15.0) in actions


def test_audio_is_gated_on_session_ready_not_session_updated() -> None:
    bridge = new_bridge()
    assert to_agent(bridge.handle(media())) == []  # before start
    bridge.handle(start_frame())
    assert to_agent(bridge.handle(media())) == []  # connecting
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionUpdated())
    assert to_agent(bridge.handle(media())) == []  # updated is not ready
    bridge.handle(agent.SessionReady(session_id="sess_1"))
    assert to_agent(bridge.handle(media())) == [{"type": "input.audio", "audio": PAYLOAD_B64}]
    assert bridge.dropped == {"before-start": 1, "before-ready": 2}
    assert bridge.frames_to_agent == 1


def test_empty_payload_is_dropped_and_counted() -> None:
    bridge = live_bridge()
    assert to_agent(bridge.handle(media(b""))) == []
    assert bridge.media_to_agent(media(b"")) == []  # the fast path too: no frame, no line
    assert bridge.dropped["bad-payload"] == 2
    assert (bridge.frames_from_twilio, bridge.frames_to_agent) == (2, 0)


def test_a_payload_that_is_not_base64_is_a_rejected_frame_not_audio() -> None:
    bridge = live_bridge()
    for payload in ("not base64!", "QQ", "QU JD"):
        frame = json.dumps({"event": "media", "media": {"payload": payload}})
        message = twilio.decode(frame)
        assert isinstance(message, twilio.InvalidFrame), payload
        assert "media" in message.reason
        assert to_agent(bridge.handle(message)) == []
    assert bridge.rejected_frames == 3
    assert bridge.frames_to_agent == 0


def test_fast_paths_return_the_frame_or_the_actions_handle_would() -> None:
    bridge = new_bridge()
    early = bridge.media_to_agent(media())  # before start: a drop, and its one log line
    assert isinstance(early, list) and to_agent(early) == [] and len(early) == 1
    assert bridge.dropped["before-start"] == 1
    bridge = live_bridge()
    frame = bridge.media_to_agent(media())
    assert isinstance(frame, bytes)
    assert json.loads(frame) == {"type": "input.audio", "audio": PAYLOAD_B64}
    assert (bridge.frames_from_twilio, bridge.frames_to_agent) == (1, 1)
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    chunk = agent.ReplyAudio(data=PAYLOAD, reply_id="r1")
    first = bridge.audio_to_twilio(chunk)  # the first chunk of a reply carries a mark
    assert isinstance(first, list)
    assert [m["event"] for m in to_twilio(first, marks=True)] == ["media", "mark"]
    down = bridge.audio_to_twilio(chunk)
    assert isinstance(down, bytes)
    assert json.loads(down) == {
        "event": "media",
        "streamSid": STREAM,
        "media": {"payload": PAYLOAD_B64},
    }
    assert bridge.frames_to_twilio == 2
    bridge.handle(agent.SpeechStarted())  # barge-in: r1 is fenced
    assert bridge.audio_to_twilio(chunk) == []
    assert to_twilio(bridge.handle(chunk)) == []
    assert bridge.dropped["agent-audio-interrupted"] == 2
    assert bridge.frames_to_twilio == 2


def test_reply_audio_goes_to_twilio_unchanged_with_stream_sid() -> None:
    bridge = live_bridge()
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    sent = to_twilio(bridge.handle(agent.ReplyAudio(data=PAYLOAD, reply_id="r1")))
    assert sent == [{"event": "media", "streamSid": STREAM, "media": {"payload": PAYLOAD_B64}}]


def test_barge_in_clears_at_once_and_fences_the_reply() -> None:
    bridge = playing_bridge()
    assert to_twilio(bridge.handle(agent.SpeechStarted())) == [
        {"event": "clear", "streamSid": STREAM}
    ]
    # Late audio of the interrupted reply must not reach the caller.
    assert to_twilio(bridge.handle(agent.ReplyAudio(data=PAYLOAD, reply_id="r1"))) == []
    # Nothing went to Twilio since that clear: a second one would change nothing.
    done = bridge.handle(agent.ReplyDone(reply_id="r1", status="interrupted"))
    assert to_twilio(done) == []
    bridge.handle(agent.ReplyStarted(reply_id="r2"))
    assert len(to_twilio(bridge.handle(agent.ReplyAudio(data=PAYLOAD, reply_id="r2")))) == 1


def test_an_interruption_without_a_barge_in_clears() -> None:
    bridge = playing_bridge()
    done = bridge.handle(agent.ReplyDone(reply_id="r1", status="interrupted"))
    assert to_twilio(done) == [{"event": "clear", "streamSid": STREAM}]


def test_speech_started_after_a_finished_reply_still_clears() -> None:
    # The agent is done sending, but Twilio may still be playing the end of it.
    bridge = playing_bridge()
    bridge.handle(agent.ReplyDone(reply_id="r1", status="completed"))
    assert to_twilio(bridge.handle(agent.SpeechStarted())) == [
        {"event": "clear", "streamSid": STREAM}
    ]
    # Once cleared, the next turn's speech has nothing to clear until audio goes again.
    assert to_twilio(bridge.handle(agent.SpeechStarted())) == []


def test_speech_started_before_any_audio_sends_no_clear() -> None:
    bridge = live_bridge()
    assert to_twilio(bridge.handle(agent.SpeechStarted())) == []


def test_tool_call_runs_and_result_waits_for_reply_done() -> None:
    bridge = live_bridge()
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    actions = bridge.handle(agent.ToolCall(call_id="c1", name="lookup", arguments={"order": "7"}))
    run = [a for a in actions if isinstance(a, RunTool)]
    assert len(run) == 1 and run[0].arguments == {"order": "7"}
    # Finished while the pre-amble reply is still open: held.
    assert to_agent(bridge.handle(ToolFinished("c1", '"7"', False))) == []
    flushed = to_agent(bridge.handle(agent.ReplyDone(reply_id="r1", status="completed")))
    assert flushed == [{"type": "tool.result", "call_id": "c1", "result": '"7"', "is_error": False}]


def _logs(actions: list[Any]) -> list[tuple[int, str, dict[str, Any]]]:
    return [(a.level, a.event, a.fields) for a in actions if isinstance(a, Log)]


def test_a_tool_call_has_one_info_line_when_it_is_over() -> None:
    bridge = live_bridge()
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    called = _logs(bridge.handle(agent.ToolCall(call_id="c1", name="lookup", arguments={})))
    assert [(level, event) for level, event, _ in called] == [(logging.DEBUG, "tool.called")]
    finished = _logs(bridge.handle(ToolFinished("c1", '"7"', False)))
    assert [(level, event) for level, event, _ in finished] == [(logging.INFO, "tool.finished")]
    fields = finished[0][2]
    assert fields["name"] == "lookup" and fields["is_error"] is False
    assert fields["duration_ms"] >= 0


def test_an_interruption_is_one_info_line_after_a_barge_in_and_one_without() -> None:
    bridge = playing_bridge()
    barge_in = _logs(bridge.handle(agent.SpeechStarted()))
    done = _logs(bridge.handle(agent.ReplyDone(reply_id="r1", status="interrupted")))
    assert [(level, event) for level, event, _ in barge_in + done] == [
        (logging.INFO, "caller.barged_in"),
        (logging.DEBUG, "agent.reply_interrupted"),
    ]
    # Cut without the caller speaking (the agent's own doing): the only news of it.
    bridge.handle(agent.ReplyStarted(reply_id="r2"))
    bridge.handle(agent.ReplyAudio(data=PAYLOAD, reply_id="r2"))
    done = _logs(bridge.handle(agent.ReplyDone(reply_id="r2", status="interrupted")))
    assert [(level, event) for level, event, _ in done] == [
        (logging.INFO, "agent.reply_interrupted")
    ]


def test_tool_result_after_reply_done_goes_at_once() -> None:
    bridge = live_bridge()
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    bridge.handle(agent.ToolCall(call_id="c1", name="lookup", arguments={"order": "7"}))
    bridge.handle(agent.ReplyDone(reply_id="r1", status="completed"))
    sent = to_agent(bridge.handle(ToolFinished("c1", '"7"', False)))
    assert [m["call_id"] for m in sent] == ["c1"]


def test_result_is_held_when_a_new_reply_started_meanwhile() -> None:
    bridge = live_bridge()
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    bridge.handle(agent.ToolCall(call_id="c1", name="lookup", arguments={"order": "7"}))
    bridge.handle(agent.ReplyDone(reply_id="r1", status="completed"))
    bridge.handle(agent.ReplyStarted(reply_id="r2"))
    assert to_agent(bridge.handle(ToolFinished("c1", '"7"', False))) == []
    sent = to_agent(bridge.handle(agent.ReplyDone(reply_id="r2", status="completed")))
    assert [m["call_id"] for m in sent] == ["c1"]


def test_results_of_an_interrupted_reply_are_discarded() -> None:
    bridge = live_bridge()
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    bridge.handle(agent.ToolCall(call_id="c1", name="lookup", arguments={"order": "1"}))
    bridge.handle(agent.ToolCall(call_id="c2", name="lookup", arguments={"order": "2"}))
    bridge.handle(ToolFinished("c1", '"1"', False))  # held, reply still open
    bridge.handle(agent.SpeechStarted())
    bridge.handle(agent.ReplyDone(reply_id="r1", status="interrupted"))
    # c2 was still running; when it finishes it is discarded too.
    assert to_agent(bridge.handle(ToolFinished("c2", '"2"', False))) == []
    bridge.handle(agent.ReplyStarted(reply_id="r2"))
    assert to_agent(bridge.handle(agent.ReplyDone(reply_id="r2", status="completed"))) == []


def test_unknown_tool_and_bad_arguments_get_error_results() -> None:
    bridge = live_bridge()
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    bridge.handle(agent.ToolCall(call_id="c1", name="nope", arguments={}))
    bridge.handle(agent.ToolCall(call_id="c2", name="lookup", args="{not json"))
    bridge.handle(agent.ToolCall(call_id="c3", name="lookup", args="[1, 2]"))
    sent = to_agent(bridge.handle(agent.ReplyDone(reply_id="r1")))
    assert [(m["call_id"], m["is_error"]) for m in sent] == [
        ("c1", True),
        ("c2", True),
        ("c3", True),
    ]
    assert "unknown tool" in sent[0]["result"]


def test_legacy_args_as_json_string_are_accepted() -> None:
    bridge = live_bridge()
    actions = bridge.handle(agent.ToolCall(call_id="c1", name="lookup", args='{"order": "9"}'))
    run = [a for a in actions if isinstance(a, RunTool)]
    assert run[0].arguments == {"order": "9"}


def test_caller_stop_ends_session_then_finishes_when_both_closed() -> None:
    bridge = live_bridge()
    actions = bridge.handle(twilio.Stop(stream_sid=STREAM))
    assert to_agent(actions) == [{"type": "session.end"}]
    assert StartTimer(Timer.SESSION_END, 2.0) in actions
    assert any(isinstance(a, HangUp) for a in actions)
    assert not any(isinstance(a, Finished) for a in bridge.handle(TwilioClosed()))
    assert any(isinstance(a, CloseAgent) for a in bridge.handle(agent.SessionEnded()))
    finished = [a for a in bridge.handle(AgentClosed(1000)) if isinstance(a, Finished)]
    assert finished == [Finished(EndReason.STREAM_STOPPED.value)]


def test_session_end_timer_closes_a_silent_agent() -> None:
    bridge = live_bridge(stream_lost_seconds=0)  # a broken stream ends the call at once
    bridge.handle(TwilioClosed())
    assert bridge.end_reason is EndReason.TWILIO_DISCONNECTED
    assert any(isinstance(a, CloseAgent) for a in bridge.handle(TimerFired(Timer.SESSION_END)))


def test_agent_session_ended_hangs_up() -> None:
    bridge = live_bridge()
    actions = bridge.handle(agent.SessionEnded(session_duration_seconds=3.0))
    assert any(isinstance(a, HangUp) for a in actions)
    assert any(isinstance(a, CloseAgent) for a in actions)
    assert bridge.end_reason is EndReason.AGENT_ENDED


def test_fatal_error_plays_apology_then_hangs_up_on_its_mark() -> None:
    bridge = new_bridge()
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    actions = bridge.handle(agent.SessionError(code="invalid_value", param="output.voice"))
    sent = to_twilio(actions)
    # No agent audio went out, so there is nothing to clear before the apology.
    assert [m["media"]["payload"] for m in sent[0:2]] == ["AAAA", "BBBB"]  # base64
    assert sent[2] == {"event": "mark", "streamSid": STREAM, "mark": {"name": APOLOGY_MARK}}
    assert len(sent) == 3
    assert not any(isinstance(a, HangUp) for a in actions)
    assert bridge.state is State.APOLOGIZING
    hang = bridge.handle(twilio.Mark(mark=twilio.MarkInfo(name=APOLOGY_MARK), stream_sid=STREAM))
    assert any(isinstance(a, HangUp) for a in hang)


def test_fatal_error_mid_reply_clears_the_reply_before_the_apology() -> None:
    bridge = playing_bridge()
    actions = bridge.handle(agent.SessionError(code="forbidden", message="no agent access"))
    sent = to_twilio(actions)
    assert sent[0] == {"event": "clear", "streamSid": STREAM}
    assert [m["media"]["payload"] for m in sent[1:3]] == ["AAAA", "BBBB"]
    assert sent[3] == {"event": "mark", "streamSid": STREAM, "mark": {"name": APOLOGY_MARK}}
    assert bridge.state is State.APOLOGIZING


def test_mid_session_config_error_is_not_fatal() -> None:
    bridge = live_bridge()
    actions = bridge.handle(agent.SessionError(code="immutable_field", param="output.voice"))
    assert bridge.state is State.LIVE
    assert to_twilio(actions) == []


def test_unreachable_agent_is_retried_with_backoff_then_apologised_for() -> None:
    bridge = new_bridge(jitter=lambda: 1.0)
    bridge.handle(start_frame())
    first = bridge.handle(AgentOpenFailed("refused"))
    assert StartTimer(Timer.RETRY_BUDGET, 10.0) in first
    assert OpenAgent(0.25) in first
    assert OpenAgent(0.5) in bridge.handle(AgentOpenFailed("refused"))
    assert OpenAgent(1.0) in bridge.handle(AgentOpenFailed("refused"))
    assert bridge.end_reason is None
    actions = bridge.handle(TimerFired(Timer.RETRY_BUDGET))
    assert bridge.end_reason is EndReason.AGENT_UNAVAILABLE
    assert len(to_twilio(actions)) == 3  # the two apology payloads, the mark (no clear:
    # no agent audio ever went out)


def test_at_capacity_is_retried_and_then_the_call_goes_on() -> None:
    bridge = new_bridge()
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    actions = bridge.handle(agent.SessionError(code="at_capacity"))
    assert CloseAgent() in actions and bridge.end_reason is None
    assert any(isinstance(a, OpenAgent) for a in bridge.handle(AgentClosed(1008)))
    sent = to_agent(bridge.handle(AgentOpened()))
    assert sent == [{"type": "session.update", "session": {"system_prompt": "hi"}}]
    bridge.handle(agent.SessionReady(session_id="sess_1"))
    assert bridge.state is State.LIVE


def test_no_session_ready_in_time_means_a_new_socket() -> None:
    bridge = new_bridge()
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    assert bridge.handle(TimerFired(Timer.READY))[-1] == CloseAgent()
    assert any(isinstance(a, OpenAgent) for a in bridge.handle(AgentClosed(1000)))


def test_a_drop_right_after_a_barge_in_sends_no_second_clear() -> None:
    bridge = playing_bridge()
    assert to_twilio(bridge.handle(agent.SpeechStarted())) == [
        {"event": "clear", "streamSid": STREAM}
    ]
    dropped = bridge.handle(AgentClosed(1006))
    assert to_twilio(dropped) == []  # nothing went since that clear
    assert any(isinstance(a, OpenAgent) for a in dropped)


def test_dropped_session_is_resumed_and_held_results_delivered() -> None:
    bridge = playing_bridge()
    bridge.handle(agent.ToolCall(call_id="c1", name="lookup", arguments={"order": "1"}))
    bridge.handle(agent.ReplyDone(reply_id="r1"))
    dropped = bridge.handle(AgentClosed(1006))
    # The half-played reply is cleared; a new socket is on its way.
    assert to_twilio(dropped) == [{"event": "clear", "streamSid": STREAM}]
    assert any(isinstance(a, OpenAgent) for a in dropped)
    assert StartTimer(Timer.RETRY_BUDGET, 25.0) in dropped
    # The tool finishes while we are away: held, not sent into a dead socket.
    assert to_agent(bridge.handle(ToolFinished("c1", '"1"', False))) == []
    assert to_agent(bridge.handle(media())) == []
    assert bridge.dropped["reconnecting"] == 1
    assert to_agent(bridge.handle(AgentOpened())) == [
        {"type": "session.resume", "session_id": "sess_1"}
    ]
    resumed = to_agent(bridge.handle(agent.SessionReady(session_id="sess_1")))
    assert resumed == [{"type": "tool.result", "call_id": "c1", "result": '"1"', "is_error": False}]
    assert bridge.resumes == 1
    assert len(to_agent(bridge.handle(media()))) == 1


def test_refused_resume_starts_a_fresh_session_without_a_second_greeting() -> None:
    bridge = CallBridge(session_config={"greeting": "Hello!", "system_prompt": "x"}, tools=[])
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionReady(session_id="sess_1"))
    bridge.handle(AgentClosed(None))
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionError(code="session_not_found"))
    bridge.handle(AgentClosed(1008))
    [update] = to_agent(bridge.handle(AgentOpened()))
    assert update["type"] == "session.update"
    assert update["session"]["greeting"] == LOST_YOU_GREETING
    assert update["session"]["system_prompt"] == "x"
    bridge.handle(agent.SessionReady(session_id="sess_2"))
    assert bridge.state is State.LIVE and bridge.fresh_sessions == 1


def test_refused_resume_dials_the_fresh_session_at_once() -> None:
    bridge = live_bridge(jitter=lambda: 1.0)
    assert OpenAgent(0.25) in bridge.handle(AgentClosed(1006))
    assert OpenAgent(0.5) in bridge.handle(AgentOpenFailed("refused"))  # a long outage
    bridge.handle(AgentOpened())
    assert bridge.state is State.RESUMING
    assert CloseAgent() in bridge.handle(agent.SessionError(code="session_not_found"))
    # The old session is gone: no backoff before the fresh one, whatever the attempt.
    assert OpenAgent(0.0) in bridge.handle(AgentClosed(1008))
    # The fresh session's own connect failures are backed off as usual.
    assert OpenAgent(2.0) in bridge.handle(AgentOpenFailed("refused"))


def test_a_resume_lost_without_a_refusal_is_backed_off() -> None:
    bridge = live_bridge(jitter=lambda: 1.0)
    bridge.handle(AgentClosed(1006))
    bridge.handle(AgentOpened())
    assert bridge.state is State.RESUMING
    # No answer to the resume: the old session may still be there, so the usual backoff.
    assert OpenAgent(0.5) in bridge.handle(AgentClosed(1006))


def test_unauthorized_is_never_retried() -> None:
    bridge = live_bridge()
    bridge.handle(agent.SessionError(code="UNAUTHORIZED"))
    assert bridge.end_reason is EndReason.AGENT_ERROR


def test_caller_leaving_while_reconnecting_ends_the_dropped_session() -> None:
    bridge = live_bridge()
    bridge.handle(AgentClosed(1006))
    bridge.handle(twilio.Stop(stream_sid=STREAM))
    # The new socket resumes the old session only to end it: no 30 s of billed grace.
    assert to_agent(bridge.handle(AgentOpened())) == [
        {"type": "session.resume", "session_id": "sess_1"},
        {"type": "session.end"},
    ]


def test_polite_shutdown_asks_for_a_goodbye() -> None:
    bridge = live_bridge()
    actions = bridge.handle(ServerShutdown(polite=True))
    [create] = to_agent(actions)
    # The goodbye says why: a closing line, not a call that ran out of time.
    assert create == {"type": "reply.create", "instructions": SHUTDOWN_INSTRUCTIONS}
    bridge.handle(TimerFired(Timer.WRAP_UP))
    assert bridge.end_reason is EndReason.SERVER_SHUTDOWN
    now = live_bridge()
    assert to_agent(now.handle(ServerShutdown())) == [{"type": "session.end"}]


def test_caller_gone_while_connecting_closes_agent_when_it_opens() -> None:
    bridge = new_bridge(stream_lost_seconds=0)
    bridge.handle(start_frame())
    bridge.handle(TwilioClosed())
    actions = bridge.handle(AgentOpened())
    assert actions == [CloseAgent()]
    assert any(isinstance(a, Finished) for a in bridge.handle(AgentClosed(1000)))


def test_oversize_frame_ends_the_call_in_order() -> None:
    bridge = live_bridge()
    actions = bridge.handle(TwilioProtocolError("frame larger than the size limit"))
    assert to_agent(actions) == [{"type": "session.end"}]
    assert bridge.end_reason is EndReason.TWILIO_PROTOCOL_ERROR


def test_invalid_frames_are_logged_and_the_call_goes_on() -> None:
    bridge = live_bridge()
    for frame in ["{", '{"event": "nope"}', '{"event": "media"}', "[]"]:
        message = twilio.decode(frame)
        assert isinstance(message, twilio.InvalidFrame)
        bridge.handle(message)
    assert bridge.state is State.LIVE
    assert bridge.rejected_frames == 4
    assert len(to_agent(bridge.handle(media()))) == 1


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _live_idle_bridge(clock: _Clock) -> CallBridge:
    bridge = CallBridge(
        session_config={},
        tools=[],
        apology_payloads=(b"\x00\x00\x00",),
        idle_seconds=8.0,
        clock=clock,
    )
    assert bridge.handle(StreamOpened()) == [StartTimer(Timer.IDLE, 2.0)]
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionReady(session_id="s"))
    return bridge


def test_idle_stream_ends_the_call_after_the_idle_period() -> None:
    """Without the time of the last audio (a bridge fed directly), a check every quarter
    period: four in a row that see no new audio end the call."""
    clock = _Clock()
    bridge = _live_idle_bridge(clock)
    bridge.handle(media())
    clock.now += 2.0
    assert StartTimer(Timer.IDLE, 2.0) in bridge.handle(TimerFired(Timer.IDLE))  # activity seen
    for _ in range(3):
        clock.now += 2.0
        assert bridge.end_reason is None
        bridge.handle(TimerFired(Timer.IDLE))
    bridge.handle(media())  # activity resets the count
    clock.now += 2.0
    bridge.handle(TimerFired(Timer.IDLE))
    for _ in range(3):
        clock.now += 2.0
        bridge.handle(TimerFired(Timer.IDLE))
    assert bridge.end_reason is None
    clock.now += 2.0
    actions = bridge.handle(TimerFired(Timer.IDLE))
    assert bridge.end_reason is EndReason.TWILIO_IDLE
    assert to_agent(actions) == [{"type": "session.end"}]


def test_idle_check_with_the_time_of_the_last_audio_checks_once_a_period() -> None:
    """The runner says when caller audio last came: while it flows the next check is a
    whole period on (not a quarter), and a stream that stops is ended exactly one idle
    period after its last audio."""
    clock = _Clock()
    bridge = _live_idle_bridge(clock)
    bridge.handle(media())
    clock.now += 2.0
    # Audio up to 20 ms ago: the period runs out 7.98 s from now.
    assert bridge.handle(TimerFired(Timer.IDLE, clock.now - 0.02)) == [
        StartTimer(Timer.IDLE, pytest.approx(7.98))
    ]
    bridge.handle(media())
    last = clock.now + 3.0  # the stream's last frame
    clock.now += 7.98
    assert bridge.handle(TimerFired(Timer.IDLE, last)) == [
        StartTimer(Timer.IDLE, pytest.approx(3.02))
    ]
    clock.now += 3.01  # a check that comes a little early (a coarser clock) waits a little
    assert bridge.handle(TimerFired(Timer.IDLE, last)) == [
        StartTimer(Timer.IDLE, pytest.approx(0.05))
    ]
    assert bridge.end_reason is None
    clock.now += 0.06
    actions = bridge.handle(TimerFired(Timer.IDLE, last))
    assert bridge.end_reason is EndReason.TWILIO_IDLE
    assert to_agent(actions) == [{"type": "session.end"}]


def test_idle_check_takes_no_audio_time_from_the_future_and_none_for_no_audio() -> None:
    """A pace ahead of the bridge's clock (a burst of early frames) counts as audio now;
    a stream that never sent audio is idle one period after it opened."""
    clock = _Clock()
    bridge = _live_idle_bridge(clock)
    bridge.handle(media())
    clock.now += 2.0
    assert bridge.handle(TimerFired(Timer.IDLE, clock.now + 0.9)) == [StartTimer(Timer.IDLE, 8.0)]

    silent = _Clock()
    quiet = _live_idle_bridge(silent)
    silent.now += 2.0
    assert quiet.handle(TimerFired(Timer.IDLE, -math.inf)) == [StartTimer(Timer.IDLE, 6.0)]
    silent.now += 6.0
    quiet.handle(TimerFired(Timer.IDLE, -math.inf))
    assert quiet.end_reason is EndReason.TWILIO_IDLE


def test_maximum_length_asks_for_a_goodbye_then_hangs_up_once_it_played() -> None:
    bridge = CallBridge(session_config={}, tools=[], max_call_seconds=100.0, wrap_up_seconds=20.0)
    assert bridge.handle(StreamOpened()) == [StartTimer(Timer.MAX_CALL, 80.0)]
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionReady(session_id="s"))
    bridge.handle(agent.ReplyStarted(reply_id="r0"))  # a reply already under way
    actions = bridge.handle(TimerFired(Timer.MAX_CALL))
    [create] = to_agent(actions)
    assert create == {"type": "reply.create", "instructions": WRAP_UP_INSTRUCTIONS}
    # The reply that was playing ends first: no hang-up on its account.
    assert to_twilio(bridge.handle(agent.ReplyDone(reply_id="r0"))) == []
    bridge.handle(agent.ReplyStarted(reply_id="bye"))
    marks = to_twilio(bridge.handle(agent.ReplyDone(reply_id="bye")))
    assert marks == [{"event": "mark", "streamSid": STREAM, "mark": {"name": GOODBYE_MARK}}]
    assert bridge.end_reason is None
    played = twilio.Mark(mark=twilio.MarkInfo(name=GOODBYE_MARK), stream_sid=STREAM)
    actions = bridge.handle(played)
    assert bridge.end_reason is EndReason.MAX_DURATION
    assert to_agent(actions) == [{"type": "session.end"}]
    assert any(isinstance(a, HangUp) for a in actions)


def test_wrap_up_without_a_goodbye_still_ends() -> None:
    bridge = CallBridge(session_config={}, tools=[], max_call_seconds=60.0)
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionReady(session_id="s"))
    bridge.handle(TimerFired(Timer.MAX_CALL))
    bridge.handle(TimerFired(Timer.WRAP_UP))
    assert bridge.end_reason is EndReason.MAX_DURATION


def test_per_call_state_stays_bounded_over_a_long_call() -> None:
    # A soak showed memory per call growing with every barge-in: ids were kept forever.
    bridge = live_bridge()
    for n in range(1000):
        bridge.handle(agent.ReplyStarted(reply_id=f"r{n}"))
        bridge.handle(agent.ToolCall(call_id=f"c{n}", name="lookup", arguments={"order": "1"}))
        bridge.handle(agent.SpeechStarted())
        bridge.handle(agent.ReplyDone(reply_id=f"r{n}", status="interrupted"))
        bridge.handle(ToolFinished(f"c{n}", '"1"', False))
    results = bridge._results
    assert len(bridge._fenced_replies) <= 16
    assert len(results._interrupted) <= 16
    assert len(results._seen) <= 256
    assert results._reply_of == {} and results._started == {}
