"""The script of a call: what the "user said" in each turn and how the agent answers."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "END_CALL_GOODBYE",
    "REPLY_CREATE_TEXT",
    "TOOL_TIMEOUT_APOLOGY",
    "ScriptedTurn",
    "after_tool_text",
    "first_word",
    "next_turn",
    "take_turn",
]

TOOL_TIMEOUT_APOLOGY: Final = "Sorry, that is taking too long."
REPLY_CREATE_TEXT: Final = "How can I help?"  # spoken for a reply.create without instructions
# Spoken after an `end_call` result when the turn's script says nothing of its own, as a
# model does once the tool says the call ends after its goodbye.
END_CALL_GOODBYE: Final = "Thanks for calling. Goodbye!"


@dataclass
class ScriptedTurn:
    """What the fake does for one detected user turn.

    With ``tool_name`` set the reply is a silent tool pre-amble carrying ``tool.call``
    (``reply`` is not spoken); after the ``tool.result`` the agent speaks ``after_tool``.
    A ``str`` ``tool_arguments`` is sent as-is: fine under the legacy ``args`` field, but
    off-schema under ``arguments`` (an object), which ``validate_own_events`` reports.
    An empty ``reply`` makes the agent say nothing for that turn.
    """

    user_text: str = "hello"
    reply: str = "I heard you."
    tool_name: str | None = None
    tool_arguments: dict[str, Any] | str | None = None
    legacy_args: bool = False
    after_tool: str = "The result is {result}."


def next_turn(shared: deque[ScriptedTurn], own: deque[ScriptedTurn]) -> ScriptedTurn:
    """The turn the caller is in.

    That is the first turn of ``shared`` (queued on the fake for every session), else the
    first of the session's ``own`` script, else a default turn.
    """
    turns = shared or own
    return turns[0] if turns else ScriptedTurn()


def take_turn(shared: deque[ScriptedTurn], own: deque[ScriptedTurn]) -> ScriptedTurn:
    """Like `next_turn`, but the turn is used up: the caller finished it."""
    turns = shared or own
    return turns.popleft() if turns else ScriptedTurn()


def first_word(text: str) -> str:
    words = text.split(maxsplit=1)
    return words[0] if words else ""


def after_tool_text(template: str, result: str) -> str:
    """What the agent says once a tool answered: ``template`` with ``{result}`` filled in."""
    try:
        return template.format(result=result)
    except (KeyError, IndexError, ValueError):  # stray braces in a user template
        return template.replace("{result}", result)
