"""The call a tool is running in.

A tool that declares a parameter of type `Call` gets the call it runs in; the model never
sees that parameter. The call carries its ids, numbers, direction and custom parameters,
a `state` dict that every tool of the same call shares (and no other call sees), and its
verbs, such as `update_session`.

The verbs are performed by the call's runner through `CallControl`, a small protocol:
each new verb is a method here and one there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from callbridge.tools import Tool


class SessionUpdateError(ValueError):
    """A session change that cannot be made: an immutable or unknown field, or a bad value.
    Raised before anything is sent."""

    def __init__(self, field: str, reason: str, *, immutable: bool = False) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.immutable = immutable  # the field is fixed once the session has started


class CallVerbError(RuntimeError):
    """A verb the call cannot take now (it is ending, the agent is not ready, an unknown
    transfer target, ...); the message says why."""


class CallControl(Protocol):
    """What a call's verbs ask of the runner that serves the call."""

    def perform(self, verb: str, args: Mapping[str, Any]) -> str | None:
        """Perform `verb` (hangup, say, transfer, digits) on the call: None if under way,
        else why not."""
        ...

    def update_session(self, changes: Mapping[str, Any]) -> None:
        """Check `changes` (the fields `Call.update_session` takes) and send them to the
        agent as a `session.update`; SessionUpdateError if they cannot be made."""
        ...


@dataclass(eq=False)
class Call:
    """One phone call, as its tools see it."""

    call_id: str
    direction: Literal["inbound", "outbound"]
    call_sid: str | None
    from_number: str | None
    to_number: str | None
    parameters: Mapping[str, str]
    control: CallControl = field(repr=False)
    # Shared by all of this call's tools, for the length of the call.
    state: dict[str, Any] = field(default_factory=dict, repr=False)
    bot_name: str = "default"

    def hang_up(self, goodbye: str | None = None) -> None:
        """End the call: at once, or once the agent has said `goodbye` and the caller has
        heard it. (A tool that ends a conversation is better served by `end_call`.)"""
        self._perform("hangup", {"goodbye": goodbye} if goodbye else {})

    def say(self, text: str) -> None:
        """Make the agent say `text` now."""
        self._perform("say", {"text": text})

    def transfer(self, target: str) -> None:
        """Hand the caller to one of the bot's transfer targets, by name, once the agent
        has told them."""
        self._perform("transfer", {"target": target})

    def send_digits(self, digits: str) -> None:
        """Press keys on the far end's keypad (`<Play digits>`: 0-9, A-D, # and *, w for
        half a second's pause)."""
        self._perform("digits", {"digits": digits})

    def _perform(self, verb: str, args: Mapping[str, Any]) -> None:
        refusal = self.control.perform(verb, args)
        if refusal is not None:
            raise CallVerbError(f"{verb}: {refusal}")

    def update_session(
        self,
        *,
        system_prompt: str | None = None,
        tools: Sequence[Tool] | None = None,
        keyterms: Sequence[str] | None = None,
        transcription_prompt: str | None = None,
        **other: Any,
    ) -> None:
        """Change the agent's session for the rest of the call.

        Only the fields the API lets a live session change are taken: the system prompt
        (from the next reply), the tools (the list replaces the current one), the
        keyterms and the transcription prompt. Anything else, such as `greeting` or
        `voice`, raises SessionUpdateError before anything is sent, as do values outside
        the API's limits. Safe to call from sync tools (which run in a worker thread).
        """
        changes: dict[str, Any] = dict(other)
        if system_prompt is not None:
            changes["system_prompt"] = system_prompt
        if tools is not None:
            changes["tools"] = tools
        if keyterms is not None:
            changes["keyterms"] = keyterms
        if transcription_prompt is not None:
            changes["transcription_prompt"] = transcription_prompt
        if not changes:
            raise SessionUpdateError("session", "nothing to change")
        self.control.update_session(changes)
