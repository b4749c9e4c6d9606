"""Changing a live session: which fields may change, checked before anything is sent.

The API lets a live session change its system prompt (from the next reply), its tools
(the list replaces the old one), and its speech-to-text hints (keyterms, transcription
prompt). The greeting, the voice, the audio formats and a stored agent's id are fixed by
the first `session.update`: a change to them is refused here, with a clear error, rather
than sent and refused by the agent. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from callbridge.call import SessionUpdateError
from callbridge.session_options import MAX_TRANSCRIPTION_PROMPT_CHARS, SessionOptions
from callbridge.tools import Tool

MUTABLE_FIELDS = ("system_prompt", "tools", "keyterms", "transcription_prompt")
_IMMUTABLE = {
    "greeting": "greeting",
    "voice": "output.voice",
    "output.voice": "output.voice",
    "format": "the audio format",
    "output.format": "the audio format",
    "input.format": "the audio format",
    "agent_id": "agent_id",
}
_MAX_PROMPT_CHARS = 100_000


class SessionChanges(msgspec.Struct, frozen=True):
    """Checked changes to a live session; None: left as it is."""

    system_prompt: str | None = None
    tools: tuple[Tool, ...] | None = None
    keyterms: tuple[str, ...] | None = None
    transcription_prompt: str | None = None

    def names(self) -> list[str]:
        return [name for name in MUTABLE_FIELDS if getattr(self, name) is not None]

    def wire(self, verb_tools: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """The `session` object of the `session.update` that makes these changes;
        `verb_tools`, the bot's verbs' definitions, stay beside any new tools."""
        session: dict[str, Any] = {}
        if self.system_prompt is not None:
            session["system_prompt"] = self.system_prompt
        if self.tools is not None:
            session["tools"] = [t.definition() for t in self.tools] + list(verb_tools)
        inputs: dict[str, Any] = {}
        if self.keyterms is not None:
            inputs["keyterms"] = list(self.keyterms)
        if self.transcription_prompt is not None:
            inputs["transcription_prompt"] = self.transcription_prompt
        if inputs:
            session["input"] = inputs
        return session


def check_changes(
    changes: Mapping[str, Any], tools_by_name: Mapping[str, Tool] | None = None
) -> SessionChanges:
    """`changes` as SessionChanges, or SessionUpdateError naming the first field that
    cannot change or has a bad value. Tools are `Tool`s, or names of `tools_by_name`."""
    for name in changes:
        if name in _IMMUTABLE:
            raise SessionUpdateError(
                _IMMUTABLE[name],
                "cannot be changed after the session starts "
                f"(only {', '.join(MUTABLE_FIELDS)} can)",
                immutable=True,
            )
        if name not in MUTABLE_FIELDS:
            allowed = ", ".join(MUTABLE_FIELDS)
            raise SessionUpdateError(
                str(name)[:60], f"not a session field that can change; use {allowed}"
            )
    prompt = changes.get("system_prompt")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > _MAX_PROMPT_CHARS):
        raise SessionUpdateError("system_prompt", f"text of at most {_MAX_PROMPT_CHARS} characters")
    tools = _tools(changes.get("tools"), tools_by_name or {})
    keyterms = changes.get("keyterms")
    if keyterms is not None:
        problems = SessionOptions(keyterms=keyterms).problems()
        if problems:
            raise SessionUpdateError(problems[0].field, problems[0].limit)
        keyterms = tuple(keyterms)
    transcription = changes.get("transcription_prompt")
    if transcription is not None and (
        not isinstance(transcription, str) or len(transcription) > MAX_TRANSCRIPTION_PROMPT_CHARS
    ):
        raise SessionUpdateError(
            "input.transcription_prompt",
            f"text of at most {MAX_TRANSCRIPTION_PROMPT_CHARS} characters",
        )
    return SessionChanges(prompt, tools, keyterms, transcription)


def _tools(given: object, by_name: Mapping[str, Tool]) -> tuple[Tool, ...] | None:
    if given is None:
        return None
    if isinstance(given, str | Tool) or not isinstance(given, Sequence):
        raise SessionUpdateError("tools", "a list of tools (the list replaces the current one)")
    out: list[Tool] = []
    for item in given:
        if isinstance(item, Tool):
            out.append(item)
        elif isinstance(item, str) and item in by_name:
            out.append(by_name[item])
        else:
            raise SessionUpdateError("tools", f"unknown tool {str(item)[:60]!r}")
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise SessionUpdateError("tools", "two tools with the same name")
    return tuple(out)


def merged(
    session: Mapping[str, Any],
    changes: SessionChanges,
    verb_tools: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """`session` (a `session.update`'s object) with `changes` made: what a new session
    after a lost one is opened with, so the changes outlive the old one."""
    out = dict(session)
    wire = changes.wire(verb_tools)
    inputs = wire.pop("input", None)
    out.update(wire)
    if inputs:
        out["input"] = {**out.get("input", {}), **inputs}
    return out
