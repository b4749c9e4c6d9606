"""Keypad in, as the bridge gathers it: entries for the agent, keypad arguments for tools."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pytest

from callbridge.agent import events as agent
from callbridge.bridge.actions import Action, Log, Record, RunTool, StartTimer
from callbridge.bridge.call_bridge import CallBridge
from callbridge.bridge.inputs import (
    AgentClosed,
    AgentOpened,
    HangUpRequested,
    TimerFired,
    ToolFinished,
)
from callbridge.bridge.timers import Timer
from callbridge.keypad_input import Keypad, KeypadRules
from callbridge.tools import tool
from callbridge.twilio import media_stream as twilio
from tests.unit.test_call_bridge import STREAM, start_frame, to_agent

CARD = "4111222233334444"


@tool
def pay(
    amount: int,
    card: Annotated[str, Keypad("Enter your card number, then #.", 16, 16, sensitive=True)],
) -> str:
    """Take a payment."""
    return "paid" if card else "no card"


@tool
def pin(code: Annotated[str, Keypad("Enter your PIN.", min_digits=4, max_digits=6)]) -> str:
    """Check a PIN."""
    return "ok"


def keypad_bridge(rules: KeypadRules | None = None) -> CallBridge:
    bridge = CallBridge(session_config={}, tools=[pay, pin], keypad=rules)
    bridge.handle(start_frame())
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionReady(session_id="sess_1"))
    return bridge


def press(bridge: CallBridge, keys: str) -> list[Action]:
    actions: list[Action] = []
    for key in keys:
        actions += bridge.handle(twilio.Dtmf(dtmf=twilio.DtmfInfo(digit=key), stream_sid=STREAM))
    return actions


def instructions(actions: list[Action]) -> list[str]:
    return [f["instructions"] for f in to_agent(actions) if f["type"] == "reply.create"]


def test_an_entry_ended_by_the_terminator_reaches_the_agent_with_its_keys_in_order() -> None:
    bridge = keypad_bridge()
    assert instructions(press(bridge, "31")) == []
    said = instructions(press(bridge, "4#"))
    assert len(said) == 1
    assert "3, 1, 4." in said[0]


def test_the_clear_key_starts_the_entry_over() -> None:
    bridge = keypad_bridge()
    said = instructions(press(bridge, "12*78#"))
    assert len(said) == 1 and "7, 8." in said[0] and "1" not in said[0]


def test_a_pause_ends_the_entry() -> None:
    bridge = keypad_bridge(KeypadRules(inter_digit_seconds=2.0))
    actions = press(bridge, "5")
    assert StartTimer(Timer.KEYPAD, 2.0) in actions
    said = instructions(bridge.handle(TimerFired(Timer.KEYPAD)))
    assert len(said) == 1 and "5." in said[0]
    assert instructions(bridge.handle(TimerFired(Timer.KEYPAD))) == []  # nothing left


def test_an_entry_ends_at_max_digits_and_a_bare_terminator_sends_nothing() -> None:
    bridge = keypad_bridge(KeypadRules(max_digits=2))
    assert len(instructions(press(bridge, "98"))) == 1
    assert instructions(press(bridge, "#")) == []


def test_a_keypad_off_bot_ignores_keys() -> None:
    bridge = keypad_bridge(KeypadRules(enabled=False))
    assert instructions(press(bridge, "12#")) == []


def test_keypad_arguments_are_left_out_of_what_the_model_sees() -> None:
    schema = pay.definition()["parameters"]
    assert set(schema["properties"]) == {"amount"}
    assert "card" not in msgspec.json.encode(schema).decode()
    assert pay.agent_timeout_seconds > pay.timeout_seconds  # time to ask and type


def test_a_sensitive_keypad_argument_reaches_the_tool_and_nothing_else() -> None:
    bridge = keypad_bridge()
    actions = bridge.handle(agent.ToolCall(call_id="t1", name="pay", arguments={"amount": 5}))
    assert instructions(actions) and "card number" in instructions(actions)[0]
    assert not any(isinstance(a, RunTool) for a in actions)
    actions += press(bridge, CARD + "#")
    runs = [a for a in actions if isinstance(a, RunTool)]
    assert len(runs) == 1
    assert runs[0].arguments == {"amount": 5}
    assert dict(runs[0].keypad) == {"card": CARD}
    assert CARD not in repr(runs[0])
    # Nothing else the bridge asks for carries the digits: no frame, log line or record.
    actions += bridge.handle(ToolFinished("t1", '"paid"', False))
    others = [a for a in actions if not isinstance(a, RunTool)]
    assert others
    for action in others:
        assert CARD not in repr(action)
        if isinstance(action, Log | Record):
            assert CARD not in str(msgspec.to_builtins(action))
    for digit in set(CARD):
        assert all(f'"{digit}"' not in repr(a) for a in others if isinstance(a, Log))


def test_too_few_keys_answer_the_tool_call_with_an_error() -> None:
    bridge = keypad_bridge()
    bridge.handle(agent.ToolCall(call_id="t1", name="pin", arguments={}))
    actions = press(bridge, "12#")
    assert not any(isinstance(a, RunTool) for a in actions)
    results = [f for f in to_agent(actions) if f["type"] == "tool.result"]
    assert len(results) == 1 and results[0]["is_error"] is True
    assert "fewer than 4" in results[0]["result"]


def test_no_key_at_all_answers_the_tool_call_with_an_error_in_time() -> None:
    bridge = keypad_bridge()
    actions = bridge.handle(agent.ToolCall(call_id="t1", name="pin", arguments={}))
    assert any(isinstance(a, StartTimer) and a.name == Timer.KEYPAD for a in actions)
    actions = bridge.handle(TimerFired(Timer.KEYPAD))
    results = [f for f in to_agent(actions) if f["type"] == "tool.result"]
    assert len(results) == 1 and "entered nothing" in results[0]["result"]


def test_keys_for_a_keypad_argument_do_not_reach_the_agent_as_an_entry() -> None:
    bridge = keypad_bridge()
    bridge.handle(agent.ToolCall(call_id="t1", name="pin", arguments={}))
    assert instructions(press(bridge, "1234#")) == []


@pytest.mark.parametrize(
    "spec",
    [
        {"prompt": " "},
        {"prompt": "x", "min_digits": 5, "max_digits": 4},
        {"prompt": "x", "terminator": "x"},
        {"prompt": "x", "timeout_seconds": 0},
    ],
)
def test_a_keypad_declaration_that_cannot_work_is_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Keypad"):
        Keypad(**spec)


def test_a_keypad_parameter_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="must be a str"):

        @tool
        def bad(code: Annotated[int, Keypad("Enter it.")]) -> str:
            """Bad."""
            return ""


def test_the_prompt_waits_for_the_reply_that_called_the_tool_to_be_done() -> None:
    bridge = keypad_bridge()
    bridge.handle(agent.ReplyStarted(reply_id="pre"))
    actions = bridge.handle(agent.ToolCall(call_id="t1", name="pin", arguments={}))
    assert instructions(actions) == []
    actions = bridge.handle(agent.ReplyDone(reply_id="pre", status="completed"))
    assert len(instructions(actions)) == 1 and "PIN" in instructions(actions)[0]


def test_the_model_is_told_the_caller_types_the_keypad_arguments() -> None:
    assert "type the card on the phone keypad" in pay.definition()["description"]
    assert pin.definition()["description"].startswith("Check a PIN.")


def test_a_keypad_tool_whose_reply_is_talked_over_never_asks_nor_runs() -> None:
    bridge = keypad_bridge()
    bridge.handle(agent.ReplyStarted(reply_id="pre"))
    bridge.handle(agent.ToolCall(call_id="t1", name="pay", arguments={"amount": 5}))
    actions = bridge.handle(agent.ReplyDone(reply_id="pre", status="interrupted"))
    assert instructions(actions) == []
    assert [f for f in to_agent(actions) if f["type"] == "tool.result"] == []  # discarded
    assert any(isinstance(a, Log) and a.event == "tool.result_discarded" for a in actions)
    actions = press(bridge, CARD + "#")  # keys now are an entry for the agent, not the tool
    assert not any(isinstance(a, RunTool) for a in actions)


def test_keys_for_an_argument_start_over_with_the_clear_key() -> None:
    bridge = keypad_bridge()
    bridge.handle(agent.ToolCall(call_id="t1", name="pin", arguments={}))
    actions = press(bridge, "99*1234#")
    [run] = [a for a in actions if isinstance(a, RunTool)]
    assert dict(run.keypad) == {"code": "1234"}


def test_a_hang_up_answers_a_tool_still_waiting_for_its_keys() -> None:
    bridge = keypad_bridge()
    bridge.handle(agent.ToolCall(call_id="t1", name="pin", arguments={}))
    actions = bridge.handle(HangUpRequested("operator", "Goodbye."))
    results = [f for f in to_agent(actions) if f["type"] == "tool.result"]
    assert len(results) == 1 and results[0]["result"] == "the call is ending"
    assert not any(isinstance(a, RunTool) for a in press(bridge, "1234#"))


def test_a_pause_while_the_agent_reconnects_is_judged_once_it_is_back() -> None:
    bridge = keypad_bridge()
    bridge.handle(agent.ToolCall(call_id="t1", name="pin", arguments={}))
    press(bridge, "1234")
    bridge.handle(AgentClosed(1006))
    assert bridge.handle(TimerFired(Timer.KEYPAD)) == [StartTimer(Timer.KEYPAD, 1.0)]
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionReady(session_id="sess_1"))
    [run] = [a for a in bridge.handle(TimerFired(Timer.KEYPAD)) if isinstance(a, RunTool)]
    assert dict(run.keypad) == {"code": "1234"}
