"""The bridge's audio routes: what the sockets may relay without asking it
(`callbridge.fast_path`). Relaying under the routes, then reporting with `relayed`, must
leave the call exactly as if every frame had gone through the bridge."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from callbridge.agent import events as agent
from callbridge.bridge.actions import SendToAgent, SendToTwilio
from callbridge.bridge.call_bridge import AudioRoute, CallBridge
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
    assert bridge.audio_route() == AudioRoute(True, STREAM, "r1", 2000 - 300)
    bridge.handle(agent.SpeechStarted())  # barge-in: the reply is fenced
    assert bridge.audio_route() == AudioRoute(to_agent=True)


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


# --- relaying under the routes changes nothing -------------------------------------------

Step = tuple[str, Any]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("caller"), st.integers(0, 2)),  # a caller frame (0: empty)
        st.tuples(
            st.just("audio"), st.tuples(st.sampled_from(["r1", "r2", None]), st.integers(0, 700))
        ),
        st.tuples(st.just("started"), st.sampled_from(["r1", "r2"])),
        st.tuples(st.just("done"), st.sampled_from(["r1", "r2"])),
        st.tuples(st.just("barge-in"), st.none()),
        st.tuples(st.just("mark"), st.integers(0, 30)),
    ),
    max_size=80,
)


def _event(step: Step) -> object:
    kind, arg = step
    if kind == "caller":
        return media(bytes([0xFE]) * 160 * arg)
    if kind == "audio":
        reply_id, size = arg
        return agent.ReplyAudio(data=bytes([0x7F]) * size, reply_id=reply_id)
    if kind == "started":
        return agent.ReplyStarted(reply_id=arg)
    if kind == "done":
        return agent.ReplyDone(reply_id=arg)
    if kind == "barge-in":
        return agent.SpeechStarted()
    return twilio.Mark(mark=twilio.MarkInfo(name=f"cb-{arg}"), stream_sid=STREAM)


def _through_the_bridge(bridge: CallBridge, event: object) -> list[bytes]:
    """As the runner does without a fast path: every frame judged by the bridge."""
    if isinstance(event, twilio.Media):
        out = bridge.media_to_agent(event)
    elif isinstance(event, agent.ReplyAudio):
        out = bridge.audio_to_twilio(event)
    else:
        out = bridge.handle(event)
    if isinstance(out, bytes):
        return [out]
    return [a.frame for a in out if isinstance(a, SendToAgent | SendToTwilio)]


class _FastPath:
    """What the compiled sockets do with the routes (`fast_path/_compiled.pyx`)."""

    def __init__(self, bridge: CallBridge) -> None:
        self.bridge = bridge
        self.route = bridge.audio_route()
        self.budget = self.route.budget
        self.up = self.down = self.down_bytes = 0

    def take(self, event: object) -> list[bytes] | None:
        route = self.route
        if isinstance(event, twilio.Media) and route.to_agent and event.media.payload:
            self.up += 1
            return [agent.encode_input_audio(event.media.payload)]
        if (
            isinstance(event, agent.ReplyAudio)
            and route.stream_sid is not None
            and event.reply_id == route.reply_id
            and 0 < len(event.data) < self.budget
        ):
            self.budget -= len(event.data)
            self.down += 1
            self.down_bytes += len(event.data)
            return [twilio.encode_media(route.stream_sid, event.data)]
        return None

    def full_path(self, event: object) -> list[bytes]:
        """As the runner does: counts handed back first, routes taken again after."""
        self.bridge.relayed(self.up, self.down, self.down_bytes)
        self.up = self.down = self.down_bytes = 0
        out = _through_the_bridge(self.bridge, event)
        self.route = self.bridge.audio_route()
        self.budget = self.route.budget
        return out


@settings(max_examples=300, deadline=None)
@given(steps)
def test_relaying_under_the_routes_sends_and_counts_what_the_bridge_would(
    script: list[Step],
) -> None:
    still = {"clock": lambda: 100.0, "wall_clock": lambda: 1e9}  # the same times for both
    plain, routed = live_bridge(**still), live_bridge(**still)
    fast = _FastPath(routed)
    for step in script:
        event = _event(step)
        expected = _through_the_bridge(plain, event)
        got = fast.take(event)
        if got is None:
            got = fast.full_path(event)
        assert got == expected, step
    done = agent.ReplyDone(reply_id="r-last")
    assert fast.full_path(done) == _through_the_bridge(plain, done)
    assert routed.stats == plain.stats
    assert [vars(r) for r in routed._ledger.settled(everything=True)] == [
        vars(r) for r in plain._ledger.settled(everything=True)
    ]
