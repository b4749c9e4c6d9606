"""The console's one way to act on a call: which verbs a call offers, and how each is done."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from callbridge.console import actions


class Runner:
    """A call's runner as the console sees it: the verbs it was asked for."""

    def __init__(self, targets: tuple[str, ...] = ()) -> None:
        self.bridge = SimpleNamespace(transfer_targets=targets)
        self.hung_up: list[str | None] = []
        self.said: list[str] = []
        self.verbs: list[tuple[str, str]] = []
        self.refusal: str | None = None

    def hang_up(self, goodbye: str | None = None, *, by: str = "operator") -> None:
        self.hung_up.append(goodbye)

    def say(self, text: str) -> None:
        self.said.append(text)

    def request_verb(self, verb: str, argument: str) -> str | None:
        self.verbs.append((verb, argument))
        return self.refusal


def state_with(runner: Runner) -> Any:
    return SimpleNamespace(
        registry=SimpleNamespace(live={"c1": runner}), shared=SimpleNamespace(distributed=False)
    )


async def test_hang_up_hangs_up_the_call() -> None:
    runner = Runner()
    await actions.perform(state_with(runner), "c1", "hang-up", {})
    assert runner.hung_up == [None]


async def test_say_and_its_argument_checks() -> None:
    runner = Runner()
    assert actions.verbs(runner) == ["hang-up", "say"]  # type: ignore[arg-type]
    await actions.perform(state_with(runner), "c1", "say", {"text": " hello "})
    assert runner.said == ["hello"]
    with pytest.raises(actions.ActionRefused, match="needs 'text'"):
        await actions.perform(state_with(runner), "c1", "say", {"text": "  "})
    with pytest.raises(actions.ActionRefused, match="longer than"):
        await actions.perform(state_with(runner), "c1", "say", {"text": "x" * 1001})


async def test_transfer_only_when_the_bot_has_targets() -> None:
    plain, transferring = Runner(), Runner(targets=("sales",))
    with pytest.raises(actions.ActionRefused, match="cannot be done"):
        await actions.perform(state_with(plain), "c1", "transfer", {"to": "sales"})
    assert actions.verbs(transferring) == ["hang-up", "say", "transfer"]  # type: ignore[arg-type]
    await actions.perform(state_with(transferring), "c1", "transfer", {"to": "sales"})
    assert transferring.verbs == [("transfer", "sales")]
    transferring.refusal = "the call is ending"
    with pytest.raises(actions.ActionRefused, match=r"^transfer: the call is ending$"):
        await actions.perform(state_with(transferring), "c1", "transfer", {"to": "sales"})


async def test_no_verb_for_a_call_not_live_here() -> None:
    with pytest.raises(actions.ActionRefused, match="not live"):
        await actions.perform(state_with(Runner()), "other", "hang-up", {})
