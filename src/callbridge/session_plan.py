"""What a call's agent session is opened with: the bot's defaults, with the call's own
configuration (from the bot's set-up) on top. No I/O.

μ-law both ways: it is Twilio's native format, so audio crosses untouched. A stored agent
(`SessionOptions.agent_id`) is named alone in the first `session.update`, as the API
requires; the mutable fields (prompt, tools, speech-to-text hints, volume) follow in a
second update once the session is ready.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from callbridge.call_setup import CallConfig
from callbridge.session_options import OptionProblem, SessionOptions
from callbridge.tools import Tool

if TYPE_CHECKING:
    from callbridge.bot import Bot

_VOICE = re.compile(r"^[a-z][a-z0-9_-]*$")
_PCMU = {"encoding": "audio/pcmu"}


@dataclass(frozen=True)
class SessionPlan:
    first_update: dict[str, Any]  # the `session` object of the first session.update
    follow_up: dict[str, Any] | None  # sent once ready (a stored agent's mutable fields)
    tools: tuple[Tool, ...]
    replaced: tuple[OptionProblem, ...] = ()  # the call's values the bot's replaced


def plan_session(
    bot: Bot,
    direction: str,
    voice_setting: str | None = None,
    config: CallConfig | None = None,
) -> SessionPlan:
    """The session for a call: `config` (the set-up's) over AGENT_VOICE (`voice_setting`)
    over the bot's own. Per-call values outside the API's limits are replaced by the bot's
    and listed in `replaced`."""
    config = config or CallConfig()
    replaced: list[OptionProblem] = []
    outbound = direction == "outbound"
    prompt = (bot.outbound_prompt if outbound else None) or bot.system_prompt
    greeting = (bot.outbound_greeting if outbound else None) or bot.greeting
    if config.system_prompt is not None:
        if isinstance(config.system_prompt, str):
            prompt = config.system_prompt
        else:
            replaced.append(OptionProblem("system_prompt", "text", config.system_prompt))
    if config.greeting is not None:
        if isinstance(config.greeting, str):
            greeting = config.greeting or None
        else:
            replaced.append(OptionProblem("greeting", "text", config.greeting))
    voice = voice_setting or bot.voice
    if config.voice is not None:
        if isinstance(config.voice, str) and _VOICE.match(config.voice):
            voice = config.voice
        else:
            replaced.append(
                OptionProblem("output.voice", "a lower-case voice name such as alba", config.voice)
            )
    tools = tuple(bot.tools)
    if config.tools is not None:
        given = _tools(config.tools)
        if given is None:
            replaced.append(OptionProblem("tools", "@tool functions, unique names", config.tools))
        else:
            tools = given
    options = bot.options
    if config.options is not None:
        if isinstance(config.options, SessionOptions):
            options, bad = config.options.over(bot.options)
            replaced.extend(bad)
        else:
            replaced.append(OptionProblem("options", "a SessionOptions", config.options))

    # The verbs' tools (transfer, keypad tones) are the bot's, whatever the call's tools.
    definitions = [t.definition() for t in tools] + bot.verbs.tool_definitions()
    if options.agent_id is not None:
        follow: dict[str, Any] = {}
        if prompt:
            follow["system_prompt"] = prompt
        if definitions:
            follow["tools"] = definitions
        follow = options.apply_to(follow)
        return SessionPlan({"agent_id": options.agent_id}, follow or None, tools, tuple(replaced))
    session: dict[str, Any] = {
        "system_prompt": prompt,
        "input": {"format": dict(_PCMU)},
        "output": {"voice": voice, "format": dict(_PCMU)},
        "tools": definitions,
    }
    if greeting:  # the API rejects greeting: null; omitting it means "listen first"
        session["greeting"] = greeting
    return SessionPlan(options.apply_to(session), None, tools, tuple(replaced))


def _tools(given: object) -> tuple[Tool, ...] | None:
    if isinstance(given, Tool | str) or not isinstance(given, Sequence):
        return None
    tools = tuple(given)
    if not all(isinstance(t, Tool) for t in tools):
        return None
    names = [t.name for t in tools]
    return tools if len(set(names)) == len(names) else None
