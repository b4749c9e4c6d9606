"""The console's one way to act on a call: which verbs a call offers, and how each is done."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from callbridge.bridge.inputs import OperatorHangUp
from callbridge.console import actions


class Runner:
    """A call's runner as the console sees it; `say` only when the verb exists."""

    def __init__(self) -> None:
        self.fed: list[object] = []
        self.said: list[str] = []

    def end(self, event: object) -> None:
        self.fed.append(event)


class SpeakingRunner(Runner):
    async def say(self, text: str) -> None:
        self.said.append(text)


def state_with(runner: Runner) -> Any:
    return SimpleNamespace(registry=SimpleNamespace(live={"c1": runner}))


async def test_hang_up_ends_the_call_as_the_operator() -> None:
    runner = Runner()
    assert actions.verbs(runner) == ["hang-up"]  # type: ignore[arg-type]
    await actions.perform(state_with(runner), "c1", "hang-up", {})
    assert runner.fed == [OperatorHangUp()]


async def test_other_verbs_only_when_the_runner_has_them() -> None:
    plain, speaking = Runner(), SpeakingRunner()
    with pytest.raises(actions.ActionRefused, match="cannot be done"):
        await actions.perform(state_with(plain), "c1", "say", {"text": "hello"})
    assert actions.verbs(speaking) == ["hang-up", "say"]  # type: ignore[arg-type]
    await actions.perform(state_with(speaking), "c1", "say", {"text": " hello "})
    assert speaking.said == ["hello"]
    with pytest.raises(actions.ActionRefused, match="needs 'text'"):
        await actions.perform(state_with(speaking), "c1", "say", {"text": "  "})
    with pytest.raises(actions.ActionRefused, match="longer than"):
        await actions.perform(state_with(speaking), "c1", "say", {"text": "x" * 1001})


async def test_a_call_that_is_not_live_is_refused() -> None:
    with pytest.raises(actions.ActionRefused, match="not live"):
        await actions.perform(state_with(Runner()), "other", "hang-up", {})
