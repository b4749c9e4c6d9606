"""The bridge's audio routes: what the sockets may relay without asking it
(`callbridge.fast_path`), the marks they may send after it, and the mark echoes they may
hold back. Relaying under the routes, then reporting with `relayed`, must leave the call
exactly as if every frame had gone through the bridge."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from callbridge.agent import events as agent
from callbridge.bridge.actions import Action, Record, SendToAgent, SendToTwilio
from callbridge.bridge.call_bridge import AudioRoute, CallBridge
from callbridge.bridge.playout_ledger import MARK_EVERY_BYTES, is_audible
from callbridge.twilio import media_stream as twilio
from tests.unit.test_call_bridge import STREAM, live_bridge, media, new_bridge, start_frame


def test_no_route_before_the_call_is_live() -> None:
    bridge = new_bridge()
    assert bridge.audio_route() == AudioRoute()
    bridge.handle(start_frame())
    assert bridge.audio_route() == AudioRoute()


def test_caller_audio_is_routed_once_live_and_agent_audio_after_a_replys_first_mark() -> None:
    bridge = live_bridge()
    assert bridge.audio_route() == AudioRoute(to_agent=True)
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    assert bridge.audio_route().stream_sid is None  # the first chunk carries a mark
    bridge.audio_to_twilio(agent.ReplyAudio(data=bytes(300), reply_id="r1"))
    # Mark 0 went with it: its echo may be held back; the fast path's marks start at 1.
    assert bridge.audio_route() == AudioRoute(True, STREAM, "r1", 2000 - 300, 0, 1)
    bridge.handle(agent.SpeechStarted())  # barge-in: the reply is fenced
    assert bridge.audio_route() == AudioRoute(True, None, None, 0, 0, 1)


def test_relayed_frames_count_as_if_the_bridge_had_sent_them() -> None:
    bridge = live_bridge()
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    bridge.audio_to_twilio(agent.ReplyAudio(data=bytes(300), reply_id="r1"))
    assert bridge.audio_route().budget == 1700
    bridge.relayed(to_agent=7, to_twilio=5, to_twilio_bytes=1500)
    assert (bridge.frames_to_agent, bridge.frames_to_twilio) == (7, 6)
    # 1800 of the first 2000 bytes gone: 200 left, so a 300-byte chunk now crosses the mark.
    assert bridge.audio_route().budget == 200
    out = bridge.audio_to_twilio(agent.ReplyAudio(data=bytes(300), reply_id="r1"))
    assert isinstance(out, list) and [type(a) for a in out] == [SendToTwilio, SendToTwilio]


def test_marks_the_fast_path_sent_and_echoes_it_held_back_count_as_the_bridges() -> None:
    clock = _Clock()
    bridge = live_bridge(clock=clock)
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    bridge.audio_to_twilio(agent.ReplyAudio(data=bytes(300), reply_id="r1"))  # mark 0
    # Relayed: 6 chunks, the sixth crossing 2000 bytes (mark 1 after 1800 relayed), then
    # 3 more; Twilio echoed marks 0 and 1 at t=100.5 and t=100.75.
    bridge.relayed(0, 9, 2700, marks=[1800], echoes=[(0, 100.5), (1, 100.75)])
    assert bridge.frames_to_twilio == 10
    assert bridge.audio_route() == AudioRoute(True, STREAM, "r1", 4000 - 3000, 2, 2)
    reply = bridge._ledger._by_id["r1"]
    clock.now = 100.8
    bridge.handle(agent.SpeechStarted())  # a barge-in: the clear estimates from mark 1
    done = bridge.handle(agent.ReplyDone(reply_id="r1", status="interrupted"))
    assert reply.settled and any(isinstance(a, Record) for a in done)
    assert (reply.first_played_at, reply.confirmed_at) == (100.5, 100.75)
    assert reply.bytes_played == 2100 + round(0.05 * 8000)  # confirmed, then estimated


def test_a_clear_goes_only_when_audio_went_since_the_last_one() -> None:
    bridge = live_bridge()
    assert _clears(bridge.handle(agent.SpeechStarted())) == 0  # nothing sent yet
    bridge.handle(agent.ReplyStarted(reply_id="r1"))
    bridge.audio_to_twilio(agent.ReplyAudio(data=bytes(300), reply_id="r1"))  # mark 0
    bridge.relayed(to_agent=0, to_twilio=3, to_twilio_bytes=900)  # and the sockets' own
    bridge.handle(agent.ReplyDone(reply_id="r1"))
    assert _clears(bridge.handle(agent.SpeechStarted())) == 1  # it may still be playing
    assert _clears(bridge.handle(agent.SpeechStarted())) == 0


def _clears(actions: list[Action]) -> int:
    return sum(1 for a in actions if isinstance(a, SendToTwilio) and b'"clear"' in a.frame)


# --- relaying under the routes changes nothing -------------------------------------------

Step = tuple[str, Any]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("caller"), st.integers(0, 2)),  # a caller frame (0: empty)
        # A chunk, quiet (False: a reply's silent lead-in) or audible (True).
        st.tuples(
            st.just("audio"),
            st.tuples(st.sampled_from(["r1", "r2", None]), st.integers(0, 700), st.booleans()),
        ),
        # A run of a reply's chunks, as the API sends them: marks fall inside it.
        st.tuples(
            st.just("chunks"),
            st.tuples(
                st.sampled_from(["r1", "r2"]),
                st.integers(1, 12),
                st.integers(1, 2500),
                st.booleans(),
            ),
        ),
        st.tuples(st.just("echo"), st.integers(0, 2)),  # of the first marks not yet echoed
        st.tuples(st.just("started"), st.sampled_from(["r1", "r2"])),
        st.tuples(st.just("done"), st.sampled_from(["r1", "r2"])),
        st.tuples(st.just("barge-in"), st.none()),
        st.tuples(st.just("mark"), st.integers(0, 30)),
        st.tuples(st.just("end mark"), st.integers(0, 30)),
    ),
    max_size=80,
)


def _events(step: Step, reference: CallBridge) -> list[object]:
    kind, arg = step
    if kind == "caller":
        return [media(bytes([0xFE]) * 160 * arg)]
    if kind == "audio":
        reply_id, size, loud = arg
        return [agent.ReplyAudio(data=_audio(size, loud), reply_id=reply_id)]
    if kind == "chunks":
        reply_id, count, size, loud = arg
        return [agent.ReplyAudio(data=_audio(size, loud), reply_id=reply_id)] * count
    if kind == "started":
        return [agent.ReplyStarted(reply_id=arg)]
    if kind == "done":
        return [agent.ReplyDone(reply_id=arg)]
    if kind == "barge-in":
        return [agent.SpeechStarted()]
    if kind == "echo":  # as Twilio does: in order, once the audio before them played
        first, end = reference._ledger.relay_window(())[2:4]
        arg = min(first + arg, end - 1)
        if arg < 0:
            return []
    name = f"cb-{arg}" if kind in ("mark", "echo") else f"cb-{arg}:end"
    return [twilio.Mark(mark=twilio.MarkInfo(name=name), stream_sid=STREAM)]


def _audio(size: int, loud: bool) -> bytes:
    """μ-law: digital silence (0x7F), or full scale (0x00) in the bytes the ledger samples."""
    return bytes([0x00 if loud else 0x7F]) * size


def _entries(actions: list[Action]) -> list[object]:
    return [a.entry for a in actions if isinstance(a, Record)]


def _through_the_bridge(bridge: CallBridge, event: object, records: list[object]) -> list[bytes]:
    """As the runner does without a fast path: every frame judged by the bridge. The
    records it makes are added to `records`; the frames it sends are returned."""
    if isinstance(event, twilio.Media):
        out = bridge.media_to_agent(event)
    elif isinstance(event, agent.ReplyAudio):
        out = bridge.audio_to_twilio(event)
    else:
        out = bridge.handle(event)
    if isinstance(out, bytes):
        return [out]
    records += _entries(out)
    return [a.frame for a in out if isinstance(a, SendToAgent | SendToTwilio)]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _FastPath:
    """What the compiled sockets do with the routes (`fast_path/_compiled.pyx`)."""

    def __init__(self, bridge: CallBridge, clock: _Clock) -> None:
        self.bridge = bridge
        self.clock = clock
        self.records: list[object] = []  # what the bridge recorded, in order
        self._take_route()

    def _take_route(self) -> None:
        self.route = route = self.bridge.audio_route()
        self.budget, self.marks_from, self.next_mark = route.budget, *route[4:6]
        self.up = self.down = self.down_bytes = 0
        self.marks: list[int] = []
        self.echoes: list[tuple[int, float]] = []

    def take(self, event: object) -> list[bytes] | None:
        route = self.route
        if isinstance(event, twilio.Media) and route.to_agent and event.media.payload:
            self.up += 1
            return [agent.encode_input_audio(event.media.payload)]
        if (
            isinstance(event, agent.ReplyAudio)
            and route.stream_sid is not None
            and event.reply_id == route.reply_id
            and event.data
            and not (route.quiet_only and is_audible(event.data))
        ):
            size = len(event.data)
            self.down += 1
            self.down_bytes += size
            out = [twilio.encode_media(route.stream_sid, event.data)]
            self.budget -= size
            if self.budget > 0:
                return out
            self.marks.append(self.down_bytes)
            while self.budget <= 0:
                self.budget += MARK_EVERY_BYTES
            out.append(twilio.encode_mark(route.stream_sid, f"cb-{self.next_mark}"))
            self.next_mark += 1
            return out
        if isinstance(event, twilio.Mark) and route.to_agent:
            digits = event.mark.name.removeprefix("cb-")
            if digits.isascii() and digits.isdigit() and digits != event.mark.name:
                number = int(digits)
                if self.marks_from <= number < self.next_mark:
                    self.echoes.append((number, self.clock()))
                    self.marks_from = number + 1
                    return []
        return None

    def full_path(self, event: object) -> list[bytes]:
        """As the runner does: counts handed back first, routes taken again after."""
        self.records += _entries(
            self.bridge.relayed(
                self.up, self.down, self.down_bytes, self.marks or None, self.echoes or None
            )
        )
        out = _through_the_bridge(self.bridge, event, self.records)
        self._take_route()
        return out


@settings(max_examples=300, deadline=None)
@given(steps)
# A held echo that settles a reply must settle it when handed back: a chunk that comes
# for the same reply id afterwards starts a new reply (with a mark), as it would have.
@example([("audio", ("r1", 1, True)), ("done", "r1"), ("echo", 0), ("audio", ("r1", 1, True))])
# A silent lead-in relayed under quiet-only routes, marks inside it, then the first words.
@example([("chunks", ("r1", 12, 300, False)), ("echo", 1), ("chunks", ("r1", 4, 300, True))])
def test_relaying_under_the_routes_sends_and_counts_what_the_bridge_would(
    script: list[Step],
) -> None:
    clock = _Clock()  # both bridges, and the fast path's echoes, by one clock
    plain = live_bridge(clock=clock, wall_clock=lambda: 1e9)
    routed = live_bridge(clock=clock, wall_clock=lambda: 1e9)
    fast = _FastPath(routed, clock)
    records: list[object] = []
    for step in script:
        for event in _events(step, plain):
            clock.now += 0.01
            expected = _through_the_bridge(plain, event, records)
            got = fast.take(event)
            if got is None:
                got = fast.full_path(event)
            assert got == expected, step
    done = agent.ReplyDone(reply_id="r-last")
    assert fast.full_path(done) == _through_the_bridge(plain, done, records)
    assert routed.stats == plain.stats
    # The same records in the same order (a held echo's when the counts are handed back).
    assert fast.records == records
    assert [vars(r) for r in routed._ledger.settled(everything=True)] == [
        vars(r) for r in plain._ledger.settled(everything=True)
    ]
