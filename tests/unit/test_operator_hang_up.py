"""An operator's hang-up: the bridge ends the call in order and the record says who."""

from __future__ import annotations

from callbridge.agent import events as agent
from callbridge.bridge.actions import Action, HangUp, Record
from callbridge.bridge.call_bridge import EndReason, State
from callbridge.bridge.inputs import AgentClosed, OperatorHangUp, TwilioClosed
from callbridge.records.entries import CallClosed
from tests.unit.test_call_bridge import live_bridge, to_agent


def _closed(actions: list[Action]) -> list[CallClosed]:
    return [a.entry for a in actions if isinstance(a, Record) and isinstance(a.entry, CallClosed)]


def test_operator_hang_up_ends_both_sides_and_is_recorded() -> None:
    bridge = live_bridge()
    actions = bridge.handle(OperatorHangUp())
    assert to_agent(actions) == [{"type": "session.end"}]
    assert HangUp(1000) in actions
    assert bridge.state is State.ENDING
    assert bridge.end_reason is EndReason.OPERATOR_HANG_UP
    bridge.handle(TwilioClosed())
    bridge.handle(agent.SessionEnded())
    [closed] = _closed(bridge.handle(AgentClosed(1000)))
    assert closed.ended_by == "operator"
    assert closed.reason == "operator-hang-up"


def test_operator_hang_up_after_the_end_changes_nothing() -> None:
    bridge = live_bridge()
    bridge.handle(TwilioClosed())  # the caller went first
    assert bridge.handle(OperatorHangUp()) == []
    assert bridge.end_reason is EndReason.TWILIO_DISCONNECTED
