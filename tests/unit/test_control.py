"""Commands for a live call (`server/control.py`) and the in-process shared state
(`server/shared_state.py`), as plain calls."""

from __future__ import annotations

from typing import Any

import pytest

from callbridge.bridge.verb_events import AmdVerdict, DialEnded, TransferAnswered
from callbridge.logs import EventLogger
from callbridge.server import control
from callbridge.server.call_registry import CallInfo, CallRegistry
from callbridge.server.shared_state import GLOBAL_LIMIT, Command, LocalState


class _Runner:
    """Stands in for a CallRunner: what was fed to it from outside the call."""

    def __init__(self) -> None:
        self.fed: list[object] = []
        self.log = EventLogger("call", call_id="c1")

        self.hung_up: list[str | None] = []

    def end(self, event: object) -> None:
        self.fed.append(event)

    def hang_up(self, goodbye: str | None = None, *, by: str = "operator") -> None:
        self.hung_up.append(goodbye)


def _registry_with(runner: _Runner) -> CallRegistry:
    registry = CallRegistry()
    registry.live["c1"] = runner  # type: ignore[assignment]
    return registry


def test_hangup_hangs_up_the_live_call() -> None:
    runner = _Runner()
    perform = control.command_handler(_registry_with(runner), EventLogger("server"))
    assert perform(Command(name="hangup", call_id="c1")) is None
    assert perform(Command(name="hangup", call_id="c1", args={"goodbye": "Bye!"})) is None
    assert runner.hung_up == [None, "Bye!"]


@pytest.mark.parametrize(
    ("command", "why"),
    [
        (Command(name="dance", call_id="c1"), "unknown command"),
        (Command(name="hangup", call_id="elsewhere"), "call is not live here"),
    ],
)
def test_a_command_that_cannot_be_performed_says_why(command: Command, why: str) -> None:
    runner = _Runner()
    perform = control.command_handler(_registry_with(runner), EventLogger("server"))
    assert perform(command) == why
    assert runner.fed == []


def test_a_failing_handler_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(runner: Any, args: dict[str, Any]) -> str | None:
        raise RuntimeError("bug")

    monkeypatch.setitem(control.HANDLERS, "broken", broken)
    perform = control.command_handler(_registry_with(_Runner()), EventLogger("server"))
    assert perform(Command(name="broken", call_id="c1")) == "command failed"


async def test_local_state_sends_a_command_to_its_own_live_call() -> None:
    runner = _Runner()
    registry = _registry_with(runner)
    shared = LocalState(registry, "box")

    async def nobody_lost(instance_id: str, calls: list[str]) -> None:
        raise AssertionError("one instance loses nobody")

    await shared.start(control.command_handler(registry, EventLogger("server")), nobody_lost)
    delivered = await shared.send(Command(name="hangup", call_id="c1"))
    assert (delivered.delivered, delivered.instance_id) == (True, "box")
    missing = await shared.send(Command(name="hangup", call_id="c2"))
    assert (missing.delivered, missing.error) == (False, "call is not live")


async def test_local_state_holds_the_global_cap_as_a_second_local_one() -> None:
    registry = CallRegistry()
    shared = LocalState(registry, "box")
    first = CallInfo(call_id="a", direction="inbound", call_sid="CA1", stream_token="t1")
    second = CallInfo(call_id="b", direction="inbound", call_sid="CA2", stream_token="t2")
    assert await shared.announce(first, limit=1) is None
    assert await shared.announce(second, limit=1) == GLOBAL_LIMIT
    assert await shared.announce(second, limit=None) is None
    assert await shared.call_id_for_sid("CA1") == "a"
    assert await shared.admit_stream("a", "t1", "CA1") is None
    assert await shared.admit_stream("a", "t1", "CA1") == "stream token already used"


def test_twilios_callbacks_for_a_call_held_here_feed_its_bridge() -> None:
    runner = _Runner()
    perform = control.command_handler(_registry_with(runner), EventLogger("server"))
    assert perform(Command(name="dial-ended", call_id="c1", args={"status": "busy"})) is None
    assert perform(Command(name="transfer-answered", call_id="c1")) is None
    assert perform(Command(name="amd", call_id="c1", args={"answered_by": "fax"})) is None
    assert perform(Command(name="amd", call_id="c1", args={"answered_by": "?"})) == (
        "unknown verdict"
    )
    assert runner.fed == [DialEnded("busy"), TransferAnswered(), AmdVerdict("fax")]
