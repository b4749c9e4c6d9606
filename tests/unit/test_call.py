"""The `Call` a tool is given: filled in by callbridge, never described to the model, and
its verbs handed to the call's control."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from callbridge import Call, CallVerbError, SessionUpdateError, ToolError, tool
from callbridge.tools import run_tool


class Control:
    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []

        self.verbs: list[tuple[str, dict[str, Any]]] = []
        self.refusal: str | None = None

    def update_session(self, changes: Mapping[str, Any]) -> None:
        self.updates.append(dict(changes))

    def perform(self, verb: str, args: Mapping[str, Any]) -> str | None:
        self.verbs.append((verb, dict(args)))
        return self.refusal


def make_call(control: Control | None = None) -> Call:
    return Call(
        call_id="call-1",
        direction="inbound",
        call_sid="CA1",
        from_number="+15550001111",
        to_number="+15552223333",
        parameters={"order": "42"},
        control=control or Control(),
    )


@tool
async def order_status(call: Call, verbose: bool = False) -> dict[str, Any]:
    """The caller's order."""
    call.state["asked"] = call.state.get("asked", 0) + 1
    return {"order": call.parameters["order"], "verbose": verbose, "asked": call.state["asked"]}


@tool
def sync_status(detail: str, the_call: Call) -> str:
    """A sync tool taking the call after another parameter."""
    return f"{detail} {the_call.call_id} {the_call.state.get('asked')}"


def test_the_call_parameter_is_left_out_of_the_schema() -> None:
    assert order_status.call_parameter == "call"
    assert order_status.definition()["parameters"] == {
        "type": "object",
        "properties": {"verbose": {"type": "boolean", "default": False}},
        "additionalProperties": False,
    }
    assert sync_status.definition()["parameters"]["required"] == ["detail"]
    assert "the_call" not in sync_status.definition()["parameters"]["properties"]


async def test_tools_get_the_call_and_share_its_state() -> None:
    call = make_call()
    first = await run_tool(order_status, {"verbose": True}, call)
    assert first.result == '{"order":"42","verbose":true,"asked":1}'
    second = await run_tool(sync_status, {"detail": "seen"}, call)
    assert second.result == '"seen call-1 1"'
    # The model cannot pass the call itself.
    refused = await run_tool(order_status, {"call": {"call_id": "x"}}, call)
    assert refused.is_error and "call" in refused.result
    # Another call has a state of its own.
    other = await run_tool(order_status, {}, make_call())
    assert '"asked":1' in other.result


async def test_a_tool_that_needs_the_call_fails_cleanly_without_one() -> None:
    outcome = await run_tool(order_status, {})
    assert outcome.is_error and outcome.result == "order_status can only run during a call"
    with pytest.raises(ToolError):
        await order_status.run({})


def test_only_one_parameter_may_take_the_call() -> None:
    def two(a: Call, b: Call) -> str:
        return ""

    with pytest.raises(TypeError, match="only one parameter may take the Call"):
        tool(two)


def test_update_session_hands_the_changes_to_the_control() -> None:
    control = Control()
    call = make_call(control)
    call.update_session(system_prompt="New.", keyterms=["Tern"])
    call.update_session(greeting="Hi")  # checked by the control, which here takes anything
    assert control.updates == [{"system_prompt": "New.", "keyterms": ["Tern"]}, {"greeting": "Hi"}]
    with pytest.raises(SessionUpdateError, match="nothing to change"):
        call.update_session()


def test_the_call_verbs_go_to_the_control_and_a_refusal_raises() -> None:
    control = Control()
    call = make_call(control)
    call.hang_up("Goodbye!")
    call.say("One moment.")
    call.transfer("a person")
    call.send_digits("12#")
    assert control.verbs == [
        ("hangup", {"goodbye": "Goodbye!"}),
        ("say", {"text": "One moment."}),
        ("transfer", {"target": "a person"}),
        ("digits", {"digits": "12#"}),
    ]
    control.refusal = "the call is ending"
    with pytest.raises(CallVerbError, match=r"^say: the call is ending$"):
        call.say("Hello?")
