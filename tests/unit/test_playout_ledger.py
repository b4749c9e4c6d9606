"""The playout ledger: what the caller heard, from Twilio's mark echoes, with a fake clock."""

from __future__ import annotations

import base64
import json
from typing import Any

from callbridge.agent import events as agent
from callbridge.bridge.actions import Action, Record, SendToTwilio
from callbridge.bridge.call_bridge import CallBridge
from callbridge.bridge.inputs import AgentOpened
from callbridge.bridge.playout_ledger import MARK_EVERY_BYTES, PlayoutLedger
from callbridge.records import entries as records
from callbridge.twilio import media_stream as twilio
from tests.unit.test_call_bridge import STREAM, start_frame

CHUNK_BYTES = 300  # 37.5 ms, as the API sends
CHUNK = b"\xff" * CHUNK_BYTES


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _sent(ledger: PlayoutLedger, reply_id: str | None, size: int) -> str | None:
    """A chunk sent to Twilio, as the bridge counts it; the mark to send after it, if due."""
    if ledger.count_unmarked(reply_id, size):
        return None
    return ledger.count_marked(reply_id, size)


def test_reply_audio_is_decoded_from_base64_and_refused_when_it_is_not() -> None:
    for n in range(0, 20):
        data = base64.b64encode(b"x" * n).decode()
        event = agent.decode(json.dumps({"type": "reply.audio", "data": data}))
        assert isinstance(event, agent.ReplyAudio)
        assert event.data == b"x" * n
    for bad in ("not base64!", "QQ", "QU JD", "QUJD\n"):
        event = agent.decode(json.dumps({"type": "reply.audio", "data": bad}))
        assert isinstance(event, agent.InvalidEvent), bad
        assert "reply.audio" in event.reason


def test_marks_go_with_the_first_chunk_then_every_quarter_second_and_at_the_end() -> None:
    ledger = PlayoutLedger(Clock())
    ledger.reply_started("r1")
    marks = [_sent(ledger, "r1", CHUNK_BYTES) for _ in range(20)]  # 6000 bytes
    sent = [m for m in marks if m]
    assert marks[0] is not None  # first audio
    assert len(sent) == 1 + 6000 // MARK_EVERY_BYTES
    end = ledger.reply_done("r1", interrupted=False)
    assert end is not None and end.endswith(":end")


def test_completed_reply_is_heard_in_full_once_its_end_mark_is_played() -> None:
    clock = Clock()
    ledger = PlayoutLedger(clock)
    ledger.reply_started("r1")
    names = [m for _ in range(10) if (m := _sent(ledger, "r1", CHUNK_BYTES))]
    ledger.transcript("r1", "Hello there.", interrupted=False)
    names.append(ledger.reply_done("r1", interrupted=False) or "")
    assert ledger.settled() == []  # sent, but not played yet
    for name in names:
        clock.now += 0.2
        assert ledger.mark_echoed(name)
    [reply] = ledger.settled()
    assert reply.bytes_played == reply.bytes_sent == 3000
    assert (reply.text, reply.interrupted) == ("Hello there.", False)


def test_clear_estimates_what_was_heard_and_flushed_marks_confirm_nothing() -> None:
    clock = Clock()
    ledger = PlayoutLedger(clock)
    ledger.reply_started("r1")
    names = [m for _ in range(20) if (m := _sent(ledger, "r1", CHUNK_BYTES))]
    clock.now += 0.05
    ledger.mark_echoed(names[0])  # the first 300 bytes played at t=100.05
    clock.now += 0.1  # 800 more bytes play before the caller barges in
    ledger.cleared()
    for name in names[1:]:  # Twilio echoes the pending marks at once on clear
        ledger.mark_echoed(name)
    ledger.transcript("r1", "Hello th", interrupted=True)
    ledger.reply_done("r1", interrupted=True)
    [reply] = ledger.settled()
    assert reply.interrupted
    assert reply.bytes_played == 300 + 800
    assert reply.bytes_sent == 6000


def test_a_clear_after_every_mark_echoed_still_cuts_the_reply_where_the_caller_was() -> None:
    # Audio at real-time pace: each mark echoes at once, so at a barge-in often none is
    # pending; the audio sent since the last one was still queued, and is cut too.
    clock = Clock()
    ledger = PlayoutLedger(clock)
    ledger.reply_started("r1")
    names = [m for _ in range(8) if (m := _sent(ledger, "r1", CHUNK_BYTES))]
    assert len(names) == 2  # after 300 and 2100 of the 2400 bytes
    for name in names:
        ledger.mark_echoed(name)
    clock.now += 0.02  # 160 more bytes play before the caller barges in
    ledger.cleared()
    assert ledger.reply_done("r1", interrupted=True) is None  # cut: no end mark to wait for
    [reply] = ledger.settled()
    assert reply.interrupted
    assert (reply.bytes_played, reply.bytes_sent) == (2100 + 160, 2400)


def test_a_reply_settles_on_whichever_comes_last_its_done_its_clear_or_its_end_mark() -> None:
    ledger = PlayoutLedger(Clock())
    ledger.reply_started("done-then-cleared")
    _sent(ledger, "done-then-cleared", CHUNK_BYTES)
    ledger.reply_done("done-then-cleared", interrupted=False)
    assert ledger.settled() == []  # still playing
    ledger.cleared()
    assert [r.reply_id for r in ledger.settled()] == ["done-then-cleared"]
    assert ledger.settled() == []  # each once

    ledger.reply_started("cleared-then-done")
    _sent(ledger, "cleared-then-done", CHUNK_BYTES)
    ledger.cleared()
    assert ledger.settled() == []  # the agent is still generating it
    ledger.reply_done("cleared-then-done", interrupted=True)
    assert [r.reply_id for r in ledger.settled()] == ["cleared-then-done"]

    ledger.reply_started("played")
    names = [m for _ in range(10) if (m := _sent(ledger, "played", CHUNK_BYTES))]
    names.append(ledger.reply_done("played", interrupted=False) or "")
    ledger.mark_echoed(names[0])
    assert ledger.settled() == []  # not all of it played yet
    for name in names[1:]:
        ledger.mark_echoed(name)
    assert [r.reply_id for r in ledger.settled()] == ["played"]


def test_bridge_records_heard_and_generated_audio_and_turn_latency() -> None:
    clock = Clock()
    bridge = CallBridge(session_config={}, tools=[], call_id="call-1", clock=clock)
    bridge.handle(start_frame(direction="inbound", **{"from": "+15550001111"}))
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionReady(session_id="s"))
    bridge.handle(agent.SpeechStopped())
    clock.now += 0.7
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    marks: list[str] = []
    for _ in range(8):
        marks += mark_names(bridge.handle(agent.ReplyAudio(data=CHUNK, reply_id="r1")))
    bridge.handle(agent.AgentTranscript(text="Sure.", reply_id="r1"))
    marks += mark_names(bridge.handle(agent.ReplyDone(reply_id="r1")))
    entries: list[Any] = []
    for name in marks:
        clock.now += 0.1
        entries += recorded(bridge.handle(twilio.Mark(mark=twilio.MarkInfo(name=name))))
    line = next(e for e in entries if isinstance(e, records.TranscriptLine))
    assert (line.role, line.text, line.interrupted) == ("agent", "Sure.", False)
    assert line.generated_seconds == line.heard_seconds == 0.3
    latency = next(e for e in entries if isinstance(e, records.TurnLatency))
    assert latency.to_first_audio_sent_ms == 700.0
    assert latency.to_first_audio_played_ms == 800.0
    assert all(e.call_id == "call-1" for e in entries)


def mark_names(actions: list[Action]) -> list[str]:
    frames = [json.loads(a.frame) for a in actions if isinstance(a, SendToTwilio)]
    return [f["mark"]["name"] for f in frames if f["event"] == "mark" and f["streamSid"] == STREAM]


def recorded(actions: list[Action]) -> list[Any]:
    return [a.entry for a in actions if isinstance(a, Record)]


def test_the_ledger_knows_whether_audio_went_since_the_last_clear() -> None:
    ledger = PlayoutLedger(lambda: 0.0)
    assert not ledger.sent_since_clear()
    ledger.reply_started("r1")
    _sent(ledger, "r1", CHUNK_BYTES)  # through the bridge, with a mark
    assert ledger.sent_since_clear()
    ledger.cleared()
    assert not ledger.sent_since_clear()
    ledger.count_relayed(0)  # the sockets relayed nothing
    assert not ledger.sent_since_clear()
    ledger.count_relayed(CHUNK_BYTES)  # relayed by the sockets alone
    assert ledger.sent_since_clear()
    ledger.cleared()
    assert ledger.count_unmarked("r1", 1)  # under the mark: no mark after it
    assert ledger.sent_since_clear()


LOUD = bytes(CHUNK_BYTES)  # μ-law 0x00: full scale, audible


def _live(clock: Clock) -> CallBridge:
    bridge = CallBridge(session_config={}, tools=[], call_id="call-1", clock=clock)
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionReady(session_id="s"))
    return bridge


def _send(bridge: CallBridge, reply_id: str, chunk: bytes) -> list[str]:
    return mark_names(bridge.handle(agent.ReplyAudio(data=chunk, reply_id=reply_id)))


def _echo(bridge: CallBridge, clock: Clock, at: float, name: str) -> list[Any]:
    clock.now = at
    return recorded(bridge.handle(twilio.Mark(mark=twilio.MarkInfo(name=name))))


def test_a_silent_lead_in_is_timed_apart_from_the_first_words() -> None:
    clock = Clock()
    bridge = _live(clock)
    bridge.handle(agent.SpeechStopped())  # at 100.0
    clock.now = 100.2
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    marks = _send(bridge, "r1", CHUNK)  # the lead-in's first chunk: a mark after it
    for _ in range(3):
        clock.now += 0.05
        marks += _send(bridge, "r1", CHUNK)
    assert marks == ["cb-0"]  # quiet chunks within the quarter second: no other mark
    clock.now = 101.2
    marks += _send(bridge, "r1", LOUD)  # the first words: a mark of their own
    marks += _send(bridge, "r1", LOUD)
    bridge.handle(agent.AgentTranscript(text="Sure.", reply_id="r1"))
    marks += mark_names(bridge.handle(agent.ReplyDone(reply_id="r1")))
    assert marks == ["cb-0", "cb-1", "cb-2:end"]
    entries = _echo(bridge, clock, 100.3, "cb-0") + _echo(bridge, clock, 101.4, "cb-1")
    entries += _echo(bridge, clock, 101.5, "cb-2:end")
    latency = next(e for e in entries if isinstance(e, records.TurnLatency))
    # The old figures, to the lead-in, are kept; the new ones are to the first words.
    assert (latency.to_first_audio_sent_ms, latency.to_first_audio_played_ms) == (200.0, 300.0)
    assert latency.to_first_audible_sent_ms == 1200.0
    assert latency.to_first_audible_played_ms == 1400.0
    [line] = [e for e in entries if isinstance(e, records.TranscriptLine)]
    assert (line.text, line.generated_seconds) == ("Sure.", 0.225)


def test_a_silent_pre_amble_is_no_row_and_the_answer_is_timed_from_the_turn() -> None:
    clock = Clock()
    bridge = _live(clock)
    bridge.handle(agent.SpeechStopped())  # at 100.0
    clock.now = 100.3
    bridge.handle(agent.ReplyStarted(reply_id="pre-amble"))
    marks = [m for _ in range(3) for m in _send(bridge, "pre-amble", CHUNK)]
    marks += mark_names(bridge.handle(agent.ReplyDone(reply_id="pre-amble")))
    entries = [e for name in marks for e in _echo(bridge, clock, 100.5, name)]
    # Silence and no words: no line of the transcript; its latency has no audible figure.
    assert not any(isinstance(e, records.TranscriptLine) for e in entries)
    [first] = [e for e in entries if isinstance(e, records.TurnLatency)]
    assert (first.reply_id, first.to_first_audio_sent_ms) == ("pre-amble", 300.0)
    assert first.to_first_audible_sent_ms is None

    clock.now = 102.0  # the tool's answer, a reply of its own
    bridge.handle(agent.ReplyStarted(reply_id="answer"))
    marks = _send(bridge, "answer", CHUNK)
    clock.now = 102.5
    marks += _send(bridge, "answer", LOUD)
    bridge.handle(agent.AgentTranscript(text="It is 7.", reply_id="answer"))
    marks += mark_names(bridge.handle(agent.ReplyDone(reply_id="answer")))
    entries = [e for name in marks for e in _echo(bridge, clock, 102.6, name)]
    [line] = [e for e in entries if isinstance(e, records.TranscriptLine)]
    assert line.text == "It is 7."
    [answer] = [e for e in entries if isinstance(e, records.TurnLatency)]
    assert answer.reply_id == "answer"
    assert answer.to_first_audio_sent_ms is None  # the turn's first audio was the pre-amble's
    assert (answer.to_first_audible_sent_ms, answer.to_first_audible_played_ms) == (
        2500.0,
        2600.0,
    )


def test_the_turn_is_answered_once() -> None:
    """A later audible reply (no new turn since) has no audible figure of its own."""
    clock = Clock()
    bridge = _live(clock)
    bridge.handle(agent.SpeechStopped())
    entries: list[Any] = []
    for reply_id in ("first", "second"):
        clock.now += 0.5
        bridge.handle(agent.ReplyStarted(reply_id=reply_id))
        marks = _send(bridge, reply_id, LOUD)
        bridge.handle(agent.AgentTranscript(text="Words.", reply_id=reply_id))
        marks += mark_names(bridge.handle(agent.ReplyDone(reply_id=reply_id)))
        entries += [e for name in marks for e in _echo(bridge, clock, clock.now, name)]
    [latency] = [e for e in entries if isinstance(e, records.TurnLatency)]
    assert (latency.reply_id, latency.to_first_audible_sent_ms) == ("first", 500.0)
