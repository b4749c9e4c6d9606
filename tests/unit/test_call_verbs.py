"""The verbs that act on the call, and re-attach, as the bridge's rules: plain function
calls, no sockets (`bridge/call_verbs.py`, `bridge/reattach.py`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from callbridge.agent import events as agent
from callbridge.bot import bot as default_bot
from callbridge.bot import with_settings
from callbridge.bridge.actions import (
    Action,
    CloseAgent,
    Finished,
    HangUp,
    Record,
    RedirectCall,
    SendToAgent,
    SendToTwilio,
    StartTimer,
)
from callbridge.bridge.call_bridge import CallBridge, EndReason, State
from callbridge.bridge.call_verbs import VERB_MARK
from callbridge.bridge.inputs import AgentClosed, AgentOpened, TimerFired, TwilioClosed
from callbridge.bridge.timers import Timer
from callbridge.bridge.verb_events import (
    AmdVerdict,
    CallCompleted,
    DialEnded,
    DigitsRequested,
    RedirectFinished,
    TransferAnswered,
    TransferRequested,
)
from callbridge.twilio import media_stream as twilio
from callbridge.verbs import CallVerbs, Transfer, TransferTarget, Voicemail
from tests.conftest import make_settings
from tests.unit.test_call_bridge import STREAM, start_frame

PERSON = "+15550009999"
VERBS = CallVerbs(
    transfer=Transfer(targets=(TransferTarget("sales", PERSON),)),
    keypad_out=True,
    voicemail=Voicemail("Call us back, {name}."),
)
STOP = twilio.Stop(stream_sid=STREAM)


def live(verbs: CallVerbs = VERBS, greeting: bool = False, **options: Any) -> CallBridge:
    config: dict[str, Any] = {"system_prompt": "hi"}
    if greeting:
        config["greeting"] = "Hello."
    bridge = CallBridge(session_config=config, tools=[], verbs=verbs, **options)
    bridge.handle(start_frame(name="Ann"))
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionReady(session_id="sess_1"))
    assert bridge.state is State.LIVE
    return bridge


def of(kind: type, actions: list[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def instructions(actions: list[Action]) -> list[str]:
    frames = [json.loads(a.frame) for a in actions if isinstance(a, SendToAgent)]
    return [f.get("instructions", "") for f in frames if f["type"] == "reply.create"]


def marks(actions: list[Action]) -> list[str]:
    frames = [json.loads(a.frame) for a in actions if isinstance(a, SendToTwilio)]
    return [f["mark"]["name"] for f in frames if f["event"] == "mark"]


def second_start() -> twilio.Start:
    start = start_frame(token="new")
    info = start.start
    return twilio.Start(
        start=twilio.StartInfo(
            stream_sid="MZ2",
            call_sid=info.call_sid,
            account_sid=info.account_sid,
            tracks=info.tracks,
            custom_parameters=info.custom_parameters,
            media_format=info.media_format,
        ),
        stream_sid="MZ2",
    )


def announce_and_dial(bridge: CallBridge) -> None:
    """A transfer asked for by the API: announced, played, redirected."""
    assert not bridge.transferring
    out = bridge.handle(TransferRequested("sales"))
    assert bridge.transferring  # the console shows it from the announcement on
    assert "transferring them to sales" in instructions(out)[0]
    assert not of(RedirectCall, out)  # not before the caller heard it
    bridge.handle(agent.ReplyStarted(reply_id="a1"))
    bridge.handle(agent.ReplyAudio(data=b"\xff" * 160, reply_id="a1"))
    out = bridge.handle(agent.ReplyDone(reply_id="a1", status="completed"))
    assert VERB_MARK in marks(out)
    out = bridge.handle(twilio.Mark(mark=twilio.MarkInfo(name=VERB_MARK), stream_sid=STREAM))
    assert of(RedirectCall, out) == [RedirectCall("transfer", to=PERSON)]
    bridge.handle(RedirectFinished("transfer"))


def test_a_stop_after_a_transfer_redirect_keeps_the_call_and_its_session() -> None:
    bridge = live()
    announce_and_dial(bridge)
    out = bridge.handle(STOP) + bridge.handle(TwilioClosed())
    assert not of(HangUp, out) and not of(Finished, out) and not of(CloseAgent, out)
    assert bridge.end_reason is None
    assert bridge.awaiting_stream
    assert [a.name for a in of(StartTimer, out)] == [Timer.REATTACH]
    assert not any(json.loads(a.frame)["type"] == "session.end" for a in of(SendToAgent, out))


def test_a_stop_without_a_redirect_ends_the_call() -> None:
    bridge = live()
    bridge.handle(STOP)
    assert bridge.end_reason is EndReason.STREAM_STOPPED
    assert not bridge.awaiting_stream


def test_a_failed_dial_reattaches_to_the_same_session_and_tells_the_agent() -> None:
    bridge = live()
    announce_and_dial(bridge)
    bridge.handle(STOP)
    bridge.handle(TwilioClosed())
    bridge.handle(DialEnded("no-answer"))
    assert bridge.awaiting_stream
    assert not bridge.transferring  # the caller is on the way back
    out = bridge.handle(second_start())
    assert bridge.stream_sid == "MZ2"
    assert bridge.session_id == "sess_1"
    [told] = instructions(out)
    assert "did not go through (nobody answered)" in told
    # Audio flows on the new stream.
    assert bridge.media_to_agent(
        twilio.Media(media=twilio.MediaInfo(payload=b"\x01"), stream_sid="MZ2")
    )


def test_an_answered_transfer_ends_the_agent_session_at_once() -> None:
    bridge = live()
    announce_and_dial(bridge)
    bridge.handle(STOP)
    bridge.handle(TwilioClosed())
    out = bridge.handle(TransferAnswered())
    assert any(json.loads(a.frame)["type"] == "session.end" for a in of(SendToAgent, out))
    out = bridge.handle(AgentClosed(1000))
    assert of(Finished, out) == [Finished("transferred")]


def test_no_new_stream_in_time_ends_the_call() -> None:
    bridge = live()
    bridge.handle(DigitsRequested("12"))
    bridge.handle(STOP)
    bridge.handle(TwilioClosed())
    bridge.handle(TimerFired(Timer.REATTACH))
    assert bridge.end_reason is EndReason.NO_NEW_STREAM


def test_digits_are_played_then_the_tool_is_answered_on_the_new_stream() -> None:
    bridge = live()
    call = agent.ToolCall(call_id="t1", name="send_digits", arguments={"digits": "1#"})
    out = bridge.handle(call)
    assert of(RedirectCall, out) == [RedirectCall("digits", digits="1#")]
    bridge.handle(STOP)
    bridge.handle(TwilioClosed())
    out = bridge.handle(second_start())
    results = [json.loads(a.frame) for a in of(SendToAgent, out)]
    sent = {"type": "tool.result", "call_id": "t1", "result": '{"sent": true}', "is_error": False}
    assert results == [sent]


@pytest.mark.parametrize(
    ("name", "arguments", "why"),
    [
        ("transfer_call", {"target": PERSON}, "unknown transfer target"),
        ("send_digits", {"digits": "1; rm"}, "digits must be"),
    ],
)
def test_the_model_can_only_use_what_the_bot_allows(
    name: str, arguments: dict[str, str], why: str
) -> None:
    bridge = live()
    out = bridge.handle(agent.ToolCall(call_id="t1", name=name, arguments=arguments))
    assert not of(RedirectCall, out)
    [result] = [json.loads(a.frame) for a in of(SendToAgent, out)]
    assert result["is_error"] is True and why in result["result"]


def test_a_failed_redirect_tells_the_agent_and_keeps_the_call() -> None:
    bridge = live()
    bridge.handle(DigitsRequested("5"))
    out = bridge.handle(RedirectFinished("digits", "the call has ended"))
    assert not bridge.awaiting_stream
    out = bridge.handle(STOP)
    assert bridge.end_reason is EndReason.STREAM_STOPPED
    assert out


def test_a_machine_gets_the_message_then_the_call_ends_once_it_played() -> None:
    bridge = live()
    bridge.handle(agent.ReplyStarted(reply_id="g1"))
    bridge.handle(agent.ReplyAudio(data=b"\xff" * 160, reply_id="g1"))
    out = bridge.handle(AmdVerdict("machine_end_beep"))
    assert [json.loads(a.frame)["event"] for a in of(SendToTwilio, out)] == ["clear"]
    assert instructions(out) == [
        "An answering machine is recording. Say this, word for word, and nothing else: "
        "Call us back, Ann."
    ]
    # The greeting's late audio is dropped; the message's plays, then the mark.
    assert bridge.audio_to_twilio(agent.ReplyAudio(data=b"\xff", reply_id="g1")) == []
    bridge.handle(agent.ReplyStarted(reply_id="m1"))
    bridge.handle(agent.ReplyAudio(data=b"\xff" * 160, reply_id="m1"))
    out = bridge.handle(agent.ReplyDone(reply_id="m1", status="completed"))
    assert VERB_MARK in marks(out)
    assert bridge.end_reason is None  # generated is not played
    out = bridge.handle(twilio.Mark(mark=twilio.MarkInfo(name=VERB_MARK), stream_sid=STREAM))
    assert bridge.end_reason is EndReason.VOICEMAIL_LEFT
    assert of(HangUp, out)


def test_a_verdict_before_the_greeting_replaces_the_greeting() -> None:
    bridge = live(greeting=True)
    assert instructions(bridge.handle(AmdVerdict("machine_end_silence"))) == []
    out = bridge.handle(agent.ReplyStarted(reply_id="g1"))
    assert len(instructions(out)) == 1


@pytest.mark.parametrize("verdict", ["human", "unknown", "machine_start"])
def test_a_person_or_no_verdict_yet_changes_nothing(verdict: str) -> None:
    bridge = live()
    out = bridge.handle(AmdVerdict(verdict))
    assert not instructions(out) and bridge.end_reason is None


def test_a_fax_or_a_machine_without_a_message_is_hung_up_on() -> None:
    bridge = live()
    bridge.handle(AmdVerdict("fax"))
    assert bridge.end_reason is EndReason.FAX
    bridge = live(CallVerbs())
    bridge.handle(AmdVerdict("machine_end_other"))
    assert bridge.end_reason is EndReason.ANSWERING_MACHINE


def test_one_verb_at_a_time() -> None:
    bridge = live()
    bridge.handle(DigitsRequested("1"))
    assert (
        bridge.verb_refusal("transfer", "sales") == "another action is under way (sending-digits)"
    )


def test_the_built_in_bot_offers_a_person_only_with_transfer_to_set() -> None:
    assert "transfer_call" not in str(default_bot.session_config("inbound")["tools"])
    settings = make_settings(callbridge_transfer_to="sip:desk@pbx.example.com")
    tools = with_settings(default_bot, settings).session_config("inbound")["tools"]
    [transfer] = [t for t in tools if t["name"] == "transfer_call"]
    assert transfer["parameters"]["properties"]["target"]["enum"] == ["a person"]
    assert "pbx.example.com" not in json.dumps(tools)  # the model never sees the address


def test_the_caller_hanging_up_between_streams_ends_the_call_at_once() -> None:
    bridge = live()
    announce_and_dial(bridge)
    bridge.handle(STOP)
    bridge.handle(TwilioClosed())
    out = bridge.handle(CallCompleted())
    assert bridge.end_reason is EndReason.STREAM_STOPPED
    [record] = [a.entry for a in of(Record, out)]
    assert (record.verb, record.outcome, record.target) == ("transfer", "canceled", "sales")


def test_a_verdict_before_the_session_is_ready_is_acted_on_once_it_is() -> None:
    bridge = CallBridge(session_config={"system_prompt": "hi"}, tools=[], verbs=VERBS)
    bridge.handle(start_frame(name="Ann"))
    bridge.handle(AgentOpened())
    assert instructions(bridge.handle(AmdVerdict("machine_end_beep"))) == []
    out = bridge.handle(agent.SessionReady(session_id="sess_1"))
    assert "Call us back, Ann." in instructions(out)[0]
