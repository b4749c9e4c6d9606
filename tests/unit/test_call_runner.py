"""CallRunner's timers: the loop's timer handles, owned and cancelled by the runner.

The sockets and the bridge are stand-ins (the runner is the unit here); every real path
through the runner is covered end to end in tests/e2e.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from callbridge.bridge.actions import (
    Action,
    CancelTimer,
    Finished,
    HangUp,
    StartTimer,
)
from callbridge.bridge.call_bridge import CallBridge
from callbridge.bridge.inputs import StreamOpened, TimerFired, TwilioClosed
from callbridge.logs import EventLogger
from callbridge.server.call_runner import CallRunner
from callbridge.server.twilio_socket import EventHandler, TextHandler
from tests.log_events import Events, caught


class _TwilioSocket:
    """Serves nothing until closed; remembers how."""

    def __init__(self) -> None:
        self.close_code: int | None = None
        self._closed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def send(self, frame: bytes) -> None:
        pass

    async def serve(self, on_text: TextHandler, on_event: EventHandler) -> None:
        await self._closed.wait()

    async def close(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        self._closed.set()


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

    def handle(self, event: object) -> list[Action]:
        self.fed.append(event)
        return self.script(event)

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
    assert log_lines.names[-2:] == ["call.ended", "call.ended"]
