"""Changing a live session, as plain function calls: which changes are refused before
anything is sent, and what the bridge sends when (live, not yet live, after a resume or
a fresh session, a stored agent's follow-up), and the configuration it records."""

from __future__ import annotations

import json
from typing import Any

import pytest

from callbridge import SessionUpdateError, tool
from callbridge.agent import events as agent
from callbridge.bridge.actions import Record, SendToAgent
from callbridge.bridge.call_bridge import CallBridge, State
from callbridge.bridge.inputs import AgentClosed, AgentOpened, UpdateSession
from callbridge.bridge.session_changes import SessionChanges, check_changes, merged
from callbridge.records.config_redaction import HIDDEN
from callbridge.records.entries import CallError, SessionConfigured
from callbridge.twilio import media_stream as twilio


@tool
def lookup() -> str:
    """Look up."""
    return "x"


@tool
def book() -> str:
    """Book."""
    return "y"


@pytest.mark.parametrize(
    ("changes", "field", "immutable"),
    [
        ({"greeting": "Hi again"}, "greeting", True),
        ({"voice": "eve"}, "output.voice", True),
        ({"agent_id": "agent_1"}, "agent_id", True),
        ({"output.format": {}}, "the audio format", True),
        ({"temperature": 1}, "temperature", False),
        ({"keyterms": ["x"] * 101}, "input.keyterms", False),
        ({"keyterms": "x"}, "input.keyterms", False),
        ({"transcription_prompt": "x" * 1751}, "input.transcription_prompt", False),
        ({"system_prompt": 3}, "system_prompt", False),
        ({"tools": ["nope"]}, "tools", False),
        ({"tools": "lookup"}, "tools", False),
        ({"tools": [lookup, lookup]}, "tools", False),
    ],
)
def test_a_change_that_cannot_be_made_is_refused_with_its_field(
    changes: dict[str, Any], field: str, immutable: bool
) -> None:
    with pytest.raises(SessionUpdateError) as caught:
        check_changes(changes, {"lookup": lookup})
    assert caught.value.field == field
    assert caught.value.immutable is immutable
    assert str(caught.value).startswith(f"{field}: ")


def test_a_change_is_checked_into_its_wire_shape() -> None:
    changes = check_changes(
        {"system_prompt": "New.", "tools": ["lookup", book], "keyterms": ["Tern"]},
        {"lookup": lookup},
    )
    assert changes.names() == ["system_prompt", "tools", "keyterms"]
    assert changes.wire() == {
        "system_prompt": "New.",
        "tools": [lookup.definition(), book.definition()],
        "input": {"keyterms": ["Tern"]},
    }
    before = {"system_prompt": "Old.", "greeting": "Hi.", "input": {"format": {"e": 1}}}
    assert merged(before, changes) == {
        "system_prompt": "New.",
        "greeting": "Hi.",
        "tools": [lookup.definition(), book.definition()],
        "input": {"format": {"e": 1}, "keyterms": ["Tern"]},
    }


def _live(bridge: CallBridge) -> list[Any]:
    start = twilio.Start(
        stream_sid="MZ1",
        start=twilio.StartInfo(stream_sid="MZ1", call_sid="CA1", custom_parameters={}),
    )
    actions = bridge.handle(start)
    actions += bridge.handle(AgentOpened())
    actions += bridge.handle(agent.SessionReady(session_id="sess-1"))
    assert bridge.state is State.LIVE
    return actions


def _sent(actions: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(a.frame) for a in actions if isinstance(a, SendToAgent)]


def test_a_change_to_a_live_session_is_sent_and_new_tools_can_run() -> None:
    bridge = CallBridge(session_config={"system_prompt": "Old."}, tools=[lookup])
    _live(bridge)
    changes = check_changes({"system_prompt": "New.", "tools": [book]})
    actions = bridge.handle(UpdateSession(changes, "tool"))
    assert _sent(actions) == [
        {
            "type": "session.update",
            "session": {"system_prompt": "New.", "tools": [book.definition()]},
        }
    ]
    call = agent.ToolCall(call_id="c1", name="book", arguments={})
    assert any(type(a).__name__ == "RunTool" for a in bridge.handle(call))


def test_a_change_before_ready_waits_for_the_session() -> None:
    bridge = CallBridge(session_config={"system_prompt": "Old."}, tools=[])
    start = twilio.Start(
        stream_sid="MZ1",
        start=twilio.StartInfo(stream_sid="MZ1", call_sid="CA1", custom_parameters={}),
    )
    bridge.handle(start)
    bridge.handle(AgentOpened())  # the first update is out; no ready yet
    assert _sent(bridge.handle(UpdateSession(SessionChanges(system_prompt="New."), "tool"))) == []
    sent = _sent(bridge.handle(agent.SessionReady(session_id="sess-1")))
    assert sent == [{"type": "session.update", "session": {"system_prompt": "New."}}]


def test_a_change_while_reconnecting_reaches_the_resumed_and_a_fresh_session() -> None:
    bridge = CallBridge(
        session_config={"system_prompt": "Old.", "greeting": "Hi."}, tools=[], jitter=lambda: 0.0
    )
    _live(bridge)
    bridge.handle(AgentClosed(1006))
    assert bridge.state is State.RECONNECTING
    bridge.handle(UpdateSession(SessionChanges(keyterms=("Tern",)), "operator"))
    bridge.handle(AgentOpened())  # resuming
    sent = _sent(bridge.handle(agent.SessionReady(session_id="sess-1")))
    assert sent == [{"type": "session.update", "session": {"input": {"keyterms": ["Tern"]}}}]
    # A fresh session later starts with the change in its first update.
    bridge.handle(AgentClosed(1006))
    bridge.handle(AgentOpened())
    bridge.handle(agent.SessionError(code="session_not_found", message="gone"))
    bridge.handle(AgentClosed(1000))
    [first] = _sent(bridge.handle(AgentOpened()))
    assert first["session"]["input"] == {"keyterms": ["Tern"]}
    assert first["session"]["system_prompt"] == "Old."


def test_a_stored_agents_mutable_fields_follow_each_new_session() -> None:
    follow = {"tools": [lookup.definition()], "input": {"keyterms": ["k"]}}
    bridge = CallBridge(session_config={"agent_id": "agent_1"}, tools=[lookup], follow_up=follow)
    actions = _live(bridge)
    assert _sent(actions) == [
        {"type": "session.update", "session": {"agent_id": "agent_1"}},
        {"type": "session.update", "session": follow},
    ]
    # A resumed session has them already; nothing is sent again.
    bridge.handle(AgentClosed(1006))
    bridge.handle(AgentOpened())
    assert _sent(bridge.handle(agent.SessionReady(session_id="sess-1"))) == []


def test_a_change_while_the_call_ends_is_dropped() -> None:
    bridge = CallBridge(session_config={}, tools=[])
    _live(bridge)
    bridge.handle(twilio.Stop(stream_sid="MZ1"))
    assert _sent(bridge.handle(UpdateSession(SessionChanges(system_prompt="x"), "tool"))) == []


def test_the_confirmed_configuration_is_recorded_without_secrets() -> None:
    bridge = CallBridge(session_config={}, tools=[], call_id="call-1")
    _live(bridge)
    config = {
        "system_prompt": "Hi",
        "llm": [{"base_url": "u", "api_key": "sk-secret"}],
        "webhook": {"url": "u", "events": [], "secret": "whsec"},
        "tools": [{"name": "t", "http": {"headers": [{"name": "X-Key", "value": "abc"}]}}],
    }
    [_, record] = bridge.handle(agent.SessionUpdated(config=config))
    assert isinstance(record, Record) and isinstance(record.entry, SessionConfigured)
    stored = record.entry.config
    assert stored["llm"][0]["api_key"] == HIDDEN
    assert stored["webhook"]["secret"] == HIDDEN
    assert stored["tools"][0]["http"]["headers"] == [{"name": "X-Key", "value": HIDDEN}]
    assert "sk-secret" not in json.dumps(stored) and "whsec" not in json.dumps(stored)
    # Tolerant of a server that sends no config.
    assert not any(isinstance(a, Record) for a in bridge.handle(agent.SessionUpdated()))


def test_a_failed_set_up_is_recorded_when_the_stream_starts() -> None:
    bridge = CallBridge(session_config={}, tools=[], call_id="c", setup_error="KeyError: 'x'")
    actions = _live(bridge)
    errors = [a.entry for a in actions if isinstance(a, Record) and isinstance(a.entry, CallError)]
    assert [(e.source, e.code, e.message) for e in errors] == [
        ("setup", "setup_failed", "KeyError: 'x'")
    ]
