"""CallRunner's timers (the loop's timer handles, owned and cancelled by the runner) and
its per-frame rate rules for Twilio's messages.

The sockets and the bridge are stand-ins (the runner is the unit here); every real path
through the runner is covered end to end in tests/e2e.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from callbridge.bridge.actions import (
    Action,
    CancelTimer,
    Finished,
    HangUp,
    Log,
    StartTimer,
)
from callbridge.bridge.call_bridge import CallBridge, EndReason
from callbridge.bridge.inputs import StreamOpened, TimerFired, TwilioClosed
from callbridge.logs import EventLogger
from callbridge.server.call_runner import CallRunner, VerbRefused
from callbridge.twilio import media_stream as twilio
from callbridge.twilio.media_stream import TwilioProtocolError
from callbridge.twilio.socket import EventHandler, TextHandler
from tests.helpers.log_events import Events, caught


class _TwilioSocket:
    """Serves nothing until closed; remembers how."""

    def __init__(self) -> None:
        self.close_code: int | None = None
        self._closed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    ended_here = False

    def send(self, frame: bytes) -> None:
        pass

    async def serve(self, on_text: TextHandler, on_event: EventHandler) -> None:
        await self._closed.wait()

    async def close(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        self._closed.set()

    def fail(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code


class _ScriptedBridge:
    """Answers each event with what `script` returns for it; records what it was fed."""

    def __init__(self, script: Callable[[object], list[Action]]) -> None:
        self.script = script
        self.fed: list[object] = []
        self.state = "live"
        self.end_reason = None
        self.end_detail = ""
        self.session_id = None
        self.stats: dict[str, Any] = {}
        self.awaiting_stream = False  # its calls end with their stream

    def handle(self, event: object) -> list[Action]:
        self.fed.append(event)
        return self.script(event)

    def media_to_agent(self, msg: object) -> bytes:
        self.fed.append(msg)
        return b"to the agent"

    def timers_fired(self) -> list[str]:
        return [e.name for e in self.fed if isinstance(e, TimerFired)]


@pytest.fixture
def log_lines() -> Iterator[Events]:
    with caught() as handler:
        yield handler


async def _no_agent() -> Any:
    raise AssertionError("these calls never dial the agent")


async def _run(script: Callable[[object], list[Action]]) -> tuple[_ScriptedBridge, _TwilioSocket]:
    bridge = _ScriptedBridge(script)
    twilio = _TwilioSocket()
    runner = CallRunner(
        call_id="call-test",
        twilio_socket=twilio,
        bridge=cast(CallBridge, bridge),
        dial_agent=_no_agent,
        log=EventLogger("test", call_id="call-test"),
    )
    async with asyncio.timeout(5):
        await runner.run()
    return bridge, twilio


def _hang_up_on_start(first: list[Action]) -> Callable[[object], list[Action]]:
    def script(event: object) -> list[Action]:
        if isinstance(event, StreamOpened):
            return [*first, HangUp(1000)]
        return [Finished("test")] if isinstance(event, TwilioClosed) else []

    return script


def _hang_up_on(name: str, first: list[Action]) -> Callable[[object], list[Action]]:
    def script(event: object) -> list[Action]:
        if isinstance(event, StreamOpened):
            return first
        if isinstance(event, TimerFired) and event.name == name:
            return [HangUp(1000)]
        if isinstance(event, TwilioClosed):
            return [Finished("test")]
        return []

    return script


async def test_a_timer_fires_its_event_once() -> None:
    bridge, twilio = await _run(_hang_up_on("t", [StartTimer("t", 0.01)]))
    assert bridge.timers_fired() == ["t"]
    assert twilio.close_code == 1000


async def test_a_cancelled_timer_never_fires() -> None:
    first: list[Action] = [StartTimer("a", 0.01), StartTimer("b", 0.05), CancelTimer("a")]
    bridge, _ = await _run(_hang_up_on("b", first))
    assert bridge.timers_fired() == ["b"]


async def test_restarting_a_timer_replaces_it() -> None:
    # The first "t" would fire after the test's timeout; only the re-armed one may fire.
    first: list[Action] = [StartTimer("t", 60.0), StartTimer("t", 0.01)]
    bridge, _ = await _run(_hang_up_on("t", first))
    assert bridge.timers_fired() == ["t"]


async def test_timers_still_armed_when_the_call_ends_are_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    armed: list[asyncio.TimerHandle] = []
    call_later = loop.call_later

    def spy(delay: float, callback: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
        armed.append(call_later(delay, callback, *args))
        return armed[-1]

    monkeypatch.setattr(loop, "call_later", spy)
    first: list[Action] = [StartTimer("later", 60.0), StartTimer("now", 0.01)]
    bridge, _ = await _run(_hang_up_on("now", first))
    monkeypatch.undo()
    assert bridge.timers_fired() == ["now"]
    assert len(armed) == 2
    assert armed[0].cancelled()  # "later": nothing of the call outlives it


async def test_a_bridge_bug_on_a_timer_crashes_only_that_call(log_lines: Events) -> None:
    def buggy(event: object) -> list[Action]:
        if isinstance(event, StreamOpened):
            return [StartTimer("t", 0.01)]
        if isinstance(event, TimerFired):
            raise RuntimeError("a bug in the bridge")
        return []

    # Another call, whose timer fires after the first call's bug, carries on to its end.
    (bridge, twilio), (other, other_twilio) = await asyncio.gather(
        _run(buggy), _run(_hang_up_on("t", [StartTimer("t", 0.05)]))
    )
    assert bridge.timers_fired() == ["t"]
    assert log_lines.names.count("call.crashed") == 1
    assert twilio.close_code == 1011  # internal error: the caller is not left on a dead line
    assert other.timers_fired() == ["t"]
    assert other_twilio.close_code == 1000  # its own hang-up, after the other call's crash
    ended = [name for name in log_lines.names if name != "call.fast_path"]  # DEBUG, just before
    assert ended[-2:] == ["call.ended", "call.ended"]


# --- rate rules ---------------------------------------------------------------------------

_MEDIA_FRAME = json.dumps(
    {"event": "media", "streamSid": "MZ1", "media": {"payload": base64.b64encode(b"\xff").decode()}}
).encode()
_MARK_FRAME = json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": "x"}}).encode()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING"])
async def test_log_lines_below_the_loggers_level_when_the_call_starts_are_dropped(
    level: str,
) -> None:
    """The runner hands the logger only the lines at or above its level, as it stood when
    the call started: the bridge's DEBUG lines (about one an event) cost nothing more."""
    logger = logging.getLogger("callbridge.test")
    events = Events()
    logger.addHandler(events)
    logger.setLevel(level)

    lines = [Log.debug("a.debug", n=1), Log.info("a.info"), Log.warning("a.warning")]
    try:
        await _run(_hang_up_on_start(lines))
    finally:
        logger.removeHandler(events)
        logger.setLevel(logging.NOTSET)
    expected = {
        "DEBUG": ["a.debug", "a.info", "a.warning"],
        "INFO": ["a.info", "a.warning"],
        "WARNING": ["a.warning"],
    }[level]
    assert [n for n in events.names if n.startswith("a.")] == expected
    if level == "DEBUG":
        assert events.fields_of("a.debug") == [{"call_id": "call-test", "n": 1}]


def _runner_at(
    clock: _Clock, max_messages_per_second: int = 200
) -> tuple[CallRunner, _ScriptedBridge]:
    bridge = _ScriptedBridge(lambda event: [])
    runner = CallRunner(
        call_id="call-test",
        twilio_socket=_TwilioSocket(),
        bridge=cast(CallBridge, bridge),
        dial_agent=_no_agent,
        log=EventLogger("test", call_id="call-test"),
        max_messages_per_second=max_messages_per_second,
    )
    runner._now = clock
    return runner, bridge


def _relayed(bridge: _ScriptedBridge) -> int:
    return sum(isinstance(e, twilio.Media) for e in bridge.fed)


def _errors(bridge: _ScriptedBridge) -> list[str]:
    return [e.reason for e in bridge.fed if isinstance(e, TwilioProtocolError)]


def test_caller_audio_may_run_a_second_ahead_of_real_time_and_no_more() -> None:
    clock = _Clock()
    runner, bridge = _runner_at(clock)
    for _ in range(51):  # a stalled network delivers a burst
        assert runner._on_twilio_text(_MEDIA_FRAME)
    assert (_relayed(bridge), runner.rate_limited_frames) == (50, 1)
    clock.now += 0.019
    runner._on_twilio_text(_MEDIA_FRAME)  # not yet due
    clock.now += 0.002
    runner._on_twilio_text(_MEDIA_FRAME)  # the next 20 ms have passed
    assert (_relayed(bridge), runner.rate_limited_frames) == (51, 2)


def test_caller_audio_at_real_time_with_jitter_is_never_dropped() -> None:
    clock = _Clock()
    runner, bridge = _runner_at(clock)
    for i in range(500):
        # Frames every 20 ms, every tenth held back 200 ms and delivered with the next ones.
        clock.now = 1000.0 + 0.02 * i + (0.2 if i % 10 == 9 else 0.0)
        runner._on_twilio_text(_MEDIA_FRAME)
    assert (_relayed(bridge), runner.rate_limited_frames) == (500, 0)


def test_more_messages_than_the_limit_within_a_second_end_the_stream() -> None:
    clock = _Clock()
    runner, bridge = _runner_at(clock, max_messages_per_second=20)
    for _ in range(20):
        assert runner._on_twilio_text(_MARK_FRAME)
    clock.now += 0.999
    assert not runner._on_twilio_text(_MARK_FRAME)
    assert _errors(bridge) == ["more than 20 messages per second"]


def test_the_message_limit_is_per_second() -> None:
    clock = _Clock()
    runner, bridge = _runner_at(clock, max_messages_per_second=20)
    for _ in range(5):
        for _ in range(20):
            assert runner._on_twilio_text(_MARK_FRAME)
        clock.now += 1.0
    assert _errors(bridge) == []


def test_caller_audio_counts_towards_the_message_limit_only_past_real_time() -> None:
    clock = _Clock()
    runner, bridge = _runner_at(clock, max_messages_per_second=20)
    for i in range(150):  # three seconds of audio at Twilio's pace, with marks between
        clock.now = 1000.0 + 0.02 * i
        assert runner._on_twilio_text(_MEDIA_FRAME)
        if i % 10 == 0:
            assert runner._on_twilio_text(_MARK_FRAME)
    assert _errors(bridge) == []


def test_a_flood_of_caller_audio_ends_the_stream() -> None:
    clock = _Clock()
    runner, bridge = _runner_at(clock, max_messages_per_second=20)
    # The second's burst is relayed, then each refused frame counts towards the limit.
    results = [runner._on_twilio_text(_MEDIA_FRAME) for _ in range(50 + 21)]
    assert results == [True] * 70 + [False]
    assert (_relayed(bridge), runner.rate_limited_frames) == (50, 21)
    assert _errors(bridge) == ["more than 20 messages per second"]


class _ServingSocket(_TwilioSocket):
    def __init__(self) -> None:
        super().__init__()
        self.serving = asyncio.Event()

    async def serve(self, on_text: TextHandler, on_event: EventHandler) -> None:
        self.serving.set()
        await super().serve(on_text, on_event)


async def test_verbs_before_a_call_runs_hang_up_at_once_and_after_it_are_refused() -> None:
    twilio = _ServingSocket()
    runner = CallRunner(
        call_id="call-test",
        twilio_socket=twilio,
        bridge=CallBridge(session_config={}, tools=[]),
        dial_agent=_no_agent,
        log=EventLogger("test", call_id="call-test"),
    )
    with pytest.raises(VerbRefused, match="not live yet"):
        runner.say("hello")
    with pytest.raises(VerbRefused, match="not live yet"):
        runner.hang_up()
    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        running = tg.create_task(runner.run())
        await twilio.serving.wait()
        with pytest.raises(VerbRefused, match="not live yet"):
            runner.say("hello")  # no agent yet
        runner.hang_up()  # no start yet: the call ends at once
        await running
    assert twilio.close_code == 1000
    assert runner.bridge.end_reason is EndReason.OPERATOR_HUNG_UP
    for verb in (runner.hang_up, lambda: runner.say("hello")):
        with pytest.raises(VerbRefused, match="ending"):
            verb()
