"""Property-based tests: whatever arrives from either side, in whatever order, the bridge
never raises, never sends audio upstream before session.ready, never sends Twilio a frame
without the call's streamSid, and answers every tool call it accepted; and its audio fast
path does exactly what `handle()` would have done."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callbridge.agent import events as agent
from callbridge.bridge.actions import Action, Finished, Log, RunTool, SendToAgent, SendToTwilio
from callbridge.bridge.call_bridge import (
    APOLOGY_MARK,
    GOODBYE_MARK,
    CallBridge,
    State,
)
from callbridge.bridge.hang_up import HANG_UP_MARK
from callbridge.bridge.inputs import (
    AgentClosed,
    AgentOpened,
    AgentOpenFailed,
    HangUpRequested,
    SayRequested,
    ServerShutdown,
    StreamOpened,
    TimerFired,
    ToolFinished,
    TwilioClosed,
)
from callbridge.bridge.playout_ledger import MARK_PREFIX
from callbridge.bridge.silence import SilenceRules
from callbridge.bridge.timers import Timer
from callbridge.keypad_input import Keypad
from callbridge.tools import tool
from callbridge.twilio import media_stream as twilio
from callbridge.twilio.media_stream import TwilioProtocolError
from callbridge.verbs import end_call


@tool
def echo(text: str = "") -> str:
    """Echo."""
    return text


@tool
def pin(code: Annotated[str, Keypad("Your PIN?", min_digits=2, max_digits=4)]) -> str:
    """Check a PIN."""
    return code


STREAM = "MZ" + "f" * 32
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
twilio_events = ["connected", "start", "media", "mark", "dtmf", "stop", "clear", "x"]
agent_types = [*sorted(agent._KNOWN_TYPES), "error", "bogus"]


@st.composite
def json_frames(draw: st.DrawFn, key: str, kinds: list[str]) -> str:
    body = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=5))
    if draw(st.booleans()):
        body[key] = draw(st.sampled_from(kinds))
    return json.dumps(body)


@st.composite
def mangled(draw: st.DrawFn, frames: st.SearchStrategy[str]) -> bytes:
    """A frame's bytes with arbitrary bytes spliced in: often not UTF-8, sometimes still
    JSON (inside a string, say), so the decoders meet bad text in every field."""
    data = bytearray(draw(frames).encode())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


# Frames that are JSON but for one byte in a string: the typed decoders get past the JSON.
NOT_UTF8_FRAMES = [
    b'{"event":"\xff"}',
    b'{"event":"media","streamSid":"\xc3","media":{"payload":"AAAA"}}',
    b'{"event":"media","media":{"payload":"AA\xffA"}}',
    b'{"event":"mark","mark":{"name":"\xed\xa0\x80"}}',  # a UTF-16 surrogate, encoded
    b'{"\xff":1}',
    b'{"type":"transcript.user","text":"\xf0\x9f"}',
    b'{"type":"reply.audio","data":"AA\xffA"}',
    b'{"type":"tool.call","call_id":"c","name":"\x80","arguments":{}}',
]


def utf8(frame: str | bytes) -> bool:
    if isinstance(frame, str):
        return True
    try:
        frame.decode()
    except UnicodeDecodeError:
        return False
    return True


any_twilio_frame = st.one_of(
    st.text(),
    st.binary(),
    json_frames("event", twilio_events),
    mangled(json_frames("event", twilio_events)),
    st.sampled_from(NOT_UTF8_FRAMES),
)
any_agent_frame = st.one_of(
    st.text(),
    st.binary(),
    json_frames("type", agent_types),
    mangled(json_frames("type", agent_types)),
    st.sampled_from(NOT_UTF8_FRAMES),
)


@given(any_twilio_frame)
def test_twilio_decoder_never_raises(frame: str | bytes) -> None:
    decoded = twilio.decode(frame)
    # Only text that is not UTF-8 fails the connection; any other frame is at worst invalid.
    if isinstance(decoded, twilio.InvalidText):
        assert not utf8(frame)
    # The per-frame path's pair (the decoder, then `undecodable` when it raises) likewise.
    try:
        strict: object = twilio.decode_strict(frame)
    except twilio.DECODE_ERRORS as exc:
        strict = twilio.undecodable(frame, exc)
    assert strict == decoded


@given(any_agent_frame)
def test_agent_decoder_never_raises(frame: str | bytes) -> None:
    decoded = agent.decode(frame)
    if isinstance(decoded, agent.InvalidText):
        assert not utf8(frame)
    try:
        strict: object = agent.decode_strict(frame)
    except agent.DECODE_ERRORS as exc:
        strict = agent.undecodable(frame, exc)
    assert strict == decoded
    if isinstance(decoded, agent.ToolCall):
        with contextlib.suppress(agent.ToolArgumentsError):
            agent.tool_arguments(decoded)


def test_text_that_is_not_utf8_is_invalid_text_wherever_the_decoder_reads_it() -> None:
    for frame in NOT_UTF8_FRAMES:
        if b'"event"' in frame or frame.startswith(b'{"\xff"'):
            assert twilio.decode(frame) == twilio.INVALID_TEXT, frame
        if b'"type"' in frame or frame.startswith(b'{"\xff"'):
            assert agent.decode(frame) == agent.INVALID_TEXT, frame


# Sizes that cross the ledger's mark boundaries (every 2000 bytes) at different points.
payloads = st.sampled_from([b"\xff\xfe\xfd\xfc", b"", b"\x00" * 300, b"\x7f" * 1999])
reply_ids = st.sampled_from(["r1", "r2", "r3", None])
call_ids = st.sampled_from(["c1", "c2", "c3"])
timers = [
    Timer.READY,
    Timer.SESSION_END,
    Timer.APOLOGY,
    Timer.IDLE,
    Timer.MAX_CALL,
    Timer.WRAP_UP,
    Timer.HANG_UP,
    Timer.KEYPAD,
    Timer.SILENCE,
    "other",
]

events = st.one_of(
    st.builds(
        lambda params: twilio.Start(
            start=twilio.StartInfo(stream_sid=STREAM, call_sid="CA1", custom_parameters=params),
            stream_sid=STREAM,
        ),
        st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
    ),
    st.builds(lambda p: twilio.Media(media=twilio.MediaInfo(payload=p)), payloads),
    st.builds(
        lambda n: twilio.Mark(mark=twilio.MarkInfo(name=n)),
        st.sampled_from([APOLOGY_MARK, GOODBYE_MARK, HANG_UP_MARK, "other"]),
    ),
    st.builds(lambda d: twilio.Dtmf(dtmf=twilio.DtmfInfo(digit=d)), st.sampled_from("0*#x")),
    st.builds(
        HangUpRequested, st.sampled_from(["operator", "agent"]), st.sampled_from([None, "Bye."])
    ),
    st.builds(SayRequested, st.text(max_size=5)),
    st.just(twilio.Stop()),
    st.just(twilio.Connected()),
    st.builds(twilio.InvalidFrame, st.text(max_size=10)),
    st.just(StreamOpened()),
    st.just(AgentOpened()),
    st.builds(AgentOpenFailed, st.text(max_size=5)),
    st.builds(AgentClosed, st.sampled_from([None, 1000, 1006, 1008, 1011])),
    st.just(TwilioClosed()),
    st.builds(TwilioProtocolError, st.text(max_size=5)),
    st.builds(TimerFired, st.sampled_from(timers)),
    st.just(ServerShutdown()),
    st.builds(lambda c: ToolFinished(c, '"x"', False), call_ids),
    st.builds(lambda s: agent.SessionReady(session_id=s), st.sampled_from(["s1", "s2"])),
    st.just(agent.SessionUpdated()),
    st.builds(
        lambda c: agent.SessionError(code=c),
        st.sampled_from(["invalid_value", "immutable_field", "unauthorized", "x"]),
    ),
    st.just(agent.SessionEnded()),
    st.just(agent.SpeechStarted()),
    st.just(agent.SpeechStopped()),
    st.builds(lambda t: agent.UserTranscript(text=t), st.text(max_size=5)),
    st.builds(lambda r: agent.ReplyStarted(reply_id=r), reply_ids),
    st.builds(lambda p, r: agent.ReplyAudio(data=p, reply_id=r), payloads, reply_ids),
    st.builds(
        lambda r, s: agent.ReplyDone(reply_id=r, status=s),
        reply_ids,
        st.sampled_from(["completed", "interrupted", "weird"]),
    ),
    st.builds(
        lambda t, i: agent.AgentTranscript(text=t, interrupted=i),
        st.text(max_size=5),
        st.booleans(),
    ),
    st.builds(
        lambda c, n, a: agent.ToolCall(call_id=c, name=n, arguments=a),
        call_ids,
        st.sampled_from(["echo", "nope", "end_call", "pin"]),
        st.one_of(st.just({"text": "hi"}), st.just({"text": 5}), json_values),
    ),
    st.builds(lambda c: agent.ToolCall(call_id=c, name="echo", args='{"text": "a"}'), call_ids),
    st.builds(agent.UnknownEvent, st.text(max_size=5)),
    st.builds(agent.InvalidEvent, st.text(max_size=5)),
)


class Observer:
    """Feeds a bridge and checks every invariant on every action it returns."""

    def __init__(self) -> None:
        self.bridge = CallBridge(
            session_config={"system_prompt": "x"},
            tools=[echo, end_call, pin],
            apology_payloads=(b"\x00\x00\x00",),
            apology_seconds=1.0,
            idle_seconds=8.0,
            max_call_seconds=60.0,
            silence=SilenceRules(prompt_seconds=5.0, prompts=1),
        )
        self.accepted_tools: set[str] = set()
        self.answered: set[str] = set()
        self.discarded: set[str] = set()
        self.running: list[str] = []
        self.finished = 0

    def feed(self, event: object) -> list[Action]:
        ready_before = self.bridge.session_id is not None
        actions = self.bridge.handle(event)
        for action in actions:
            self.check(action, ready_before)
        return actions

    def check(self, action: Action, ready_before: bool) -> None:
        if isinstance(action, SendToAgent):
            message: dict[str, Any] = json.loads(action.frame)
            if message["type"] == "input.audio":
                assert ready_before, "audio sent upstream before session.ready"
            if message["type"] == "tool.result":
                assert message["call_id"] not in self.answered, "tool answered twice"
                self.answered.add(message["call_id"])
        elif isinstance(action, SendToTwilio):
            frame = json.loads(action.frame)
            assert frame["streamSid"] == STREAM, "Twilio frame without the call's streamSid"
        elif isinstance(action, RunTool):
            self.running.append(action.call_id)
        elif isinstance(action, Finished):
            self.finished += 1
            assert self.finished == 1, "finished twice"
        elif isinstance(action, Log):
            if action.event == "tool.called":
                self.accepted_tools.add(action.fields["tool_call_id"])
            if action.event == "tool.result_discarded":
                self.discarded.add(action.fields["tool_call_id"])


START = twilio.Start(start=twilio.StartInfo(stream_sid=STREAM, call_sid="CA1"), stream_sid=STREAM)
# Random events alone rarely reach the interesting states, so sequences often begin the way
# a real call does and stop at any point of the set-up.
call_openings = st.sampled_from(
    [
        [],
        [StreamOpened(), START],
        [StreamOpened(), START, AgentOpened()],
        [StreamOpened(), START, AgentOpened(), agent.SessionUpdated()],
        [StreamOpened(), START, AgentOpened(), agent.SessionReady(session_id="s0")],
        [
            StreamOpened(),
            START,
            AgentOpened(),
            agent.SessionReady(session_id="s0"),
            agent.ToolCall(call_id="k1", name="pin", arguments={}),
        ],
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call_openings, st.lists(events, max_size=40))
def test_bridge_invariants_hold_for_any_event_sequence(
    opening: list[object], rest: list[object]
) -> None:
    sequence = [*opening, *rest]
    observer = Observer()
    for event in sequence:
        observer.feed(event)
    # Let every tool still running finish, then let a reply complete: results may flow.
    for call_id in list(observer.running):
        observer.feed(ToolFinished(call_id, '"done"', False))
    # A dropped session comes back (resumed) before we judge what it was told.
    if observer.bridge.state is State.RECONNECTING:
        observer.feed(AgentOpened())
    if observer.bridge.state in (State.RESUMING, State.CONFIGURING):
        observer.feed(agent.SessionReady(session_id=observer.bridge.session_id or "s9"))
    # Keypad arguments still awaited time out (their tools run, or are answered as failed).
    for _ in range(3):
        observer.feed(TimerFired(Timer.KEYPAD))
    for call_id in list(observer.running):
        observer.feed(ToolFinished(call_id, '"done"', False))
    observer.feed(agent.ReplyStarted(reply_id="final"))
    observer.feed(agent.ReplyDone(reply_id="final", status="completed"))
    bridge = observer.bridge
    # (A fresh session after a refused resume never asked for the old session's tools.)
    if bridge.state is State.LIVE and bridge.end_reason is None and not bridge.fresh_sessions:
        unanswered = observer.accepted_tools - observer.answered - observer.discarded
        assert not unanswered, f"tool calls left unanswered: {unanswered}"


def _outcome(actions: list[Action]) -> list[object]:
    return [
        ("agent", a.frame)
        if isinstance(a, SendToAgent)
        else ("twilio", a.frame)
        if isinstance(a, SendToTwilio)
        else a
        for a in actions
    ]


def _fixed_bridge() -> CallBridge:
    return CallBridge(
        session_config={"system_prompt": "x"},
        tools=[echo],
        apology_payloads=(b"\x00\x00\x00",),
        apology_seconds=1.0,
        idle_seconds=8.0,
        jitter=lambda: 0.5,
        clock=lambda: 100.0,
        wall_clock=lambda: 1_700_000_000.0,
    )


def _fast_first(bridge: CallBridge, event: object) -> list[object]:
    """What CallRunner does with an event: audio to the fast path (a frame to send, or
    actions), anything else to `handle()`."""
    if type(event) is twilio.Media:
        out = bridge.media_to_agent(event)
        return [("agent", out)] if isinstance(out, bytes) else _outcome(out)
    if type(event) is agent.ReplyAudio:
        out = bridge.audio_to_twilio(event)
        return [("twilio", out)] if isinstance(out, bytes) else _outcome(out)
    return _outcome(bridge.handle(event))


# Mostly audio, with what changes its fate: replies starting and ending, barge-ins, the
# ledger's own marks coming back, the call ending.
audio_events = st.one_of(
    st.builds(lambda p: twilio.Media(media=twilio.MediaInfo(payload=p)), payloads),
    st.builds(lambda p, r: agent.ReplyAudio(data=p, reply_id=r), payloads, reply_ids),
    st.builds(lambda p, r: agent.ReplyAudio(data=p, reply_id=r), payloads, reply_ids),
    st.builds(lambda r: agent.ReplyStarted(reply_id=r), reply_ids),
    st.builds(
        lambda r, s: agent.ReplyDone(reply_id=r, status=s),
        reply_ids,
        st.sampled_from(["completed", "interrupted"]),
    ),
    st.just(agent.SpeechStarted()),
    st.builds(
        lambda n: twilio.Mark(mark=twilio.MarkInfo(name=f"{MARK_PREFIX}{n}")),
        st.integers(0, 6),
    ),
    events,
)
live_openings = st.sampled_from(
    [
        [StreamOpened(), START, AgentOpened(), agent.SessionReady(session_id="s0")],
        [StreamOpened(), START, AgentOpened()],
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(live_openings, st.lists(audio_events, max_size=60))
def test_the_fast_path_does_exactly_what_handle_does(
    opening: list[object], rest: list[object]
) -> None:
    # The runner sends audio straight to the fast path and never through handle(): the
    # two must agree on every frame, in every state the call can reach.
    slow, fast = _fixed_bridge(), _fixed_bridge()
    for event in [*opening, *rest]:
        assert _fast_first(fast, event) == _outcome(slow.handle(event)), event
    assert fast.stats == slow.stats
    assert (fast.state, fast.end_reason) == (slow.state, slow.end_reason)
    final = [agent.ReplyDone(reply_id=r, status="completed") for r in ("r1", "r2", "r3", None)]
    for event in [*final, ServerShutdown(), TwilioClosed()]:
        assert _fast_first(fast, event) == _outcome(slow.handle(event)), event
