"""The bot: what the agent says and can do. Users write their own and point
`CALLBRIDGE_BOT=mypkg.mybot:bot` at it; this module holds the built-in default.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from callbridge.tools import Tool, tool

Direction = Literal["inbound", "outbound"]
DEFAULT_VOICE = "alba"


@dataclass(frozen=True)
class Bot:
    """Everything callbridge needs to configure a Voice Agent session for a call.

    `greeting` is spoken verbatim as soon as the session is ready (leave it None for the
    agent to wait for the caller); outbound calls use `outbound_prompt` and
    `outbound_greeting` when set, so the agent speaks first to the person it called.
    """

    system_prompt: str
    greeting: str | None = None
    outbound_prompt: str | None = None
    outbound_greeting: str | None = None
    voice: str = DEFAULT_VOICE
    tools: Sequence[Tool] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [t.name for t in self.tools]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"duplicate tool names: {', '.join(sorted(duplicates))}")
        for item in self.tools:
            if not isinstance(item, Tool):
                raise TypeError(f"bot tools must be @tool functions, got {item!r}")

    def tool_named(self, name: str) -> Tool | None:
        for item in self.tools:
            if item.name == name:
                return item
        return None

    def session_config(self, direction: Direction, voice: str | None = None) -> dict[str, Any]:
        """The `session` object of the first `session.update` for a call.

        μ-law both ways: it is Twilio's native format, so audio crosses untouched.
        """
        outbound = direction == "outbound"
        prompt = (self.outbound_prompt if outbound else None) or self.system_prompt
        greeting = (self.outbound_greeting if outbound else None) or self.greeting
        session: dict[str, Any] = {
            "system_prompt": prompt,
            "input": {"format": {"encoding": "audio/pcmu"}},
            "output": {"voice": voice or self.voice, "format": {"encoding": "audio/pcmu"}},
            "tools": [t.definition() for t in self.tools],
        }
        if greeting:  # the API rejects greeting: null; omitting it means "listen first"
            session["greeting"] = greeting
        return session


class BotLoadError(Exception):
    pass


def load_bot(spec: str) -> Bot:
    """Import `package.module:attribute` and check that it is a Bot."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise BotLoadError(f"expected 'package.module:attribute', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise BotLoadError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise BotLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(value, Bot):
        raise BotLoadError(f"{spec} is a {type(value).__name__}, not a callbridge.Bot")
    return value


# --- the built-in bot ---------------------------------------------------------------


# async, though it awaits nothing: it never blocks, so it may run on the event loop. A sync
# tool runs on a worker thread instead (safe for blocking code, but the hop costs more CPU
# than this whole tool: see "Your own bot" in the README).
@tool
async def generate_random_number(minimum: int = 1, maximum: int = 100) -> int:
    """Generate a random whole number between minimum and maximum, inclusive.

    Use it whenever the caller asks for a random number, a dice roll or a pick.
    """
    low, high = sorted((minimum, maximum))
    return random.randint(low, high)


SYSTEM_PROMPT = (
    "You are a friendly, concise assistant answering a phone call. Keep answers to one or "
    "two short sentences, speak naturally, and never use lists, markdown or emoji: "
    "everything you say is read aloud. If the caller asks for a random number, use the "
    "generate_random_number tool."
)

OUTBOUND_PROMPT = (
    "You are a friendly assistant who has just placed a phone call on behalf of the "
    "callbridge demo. Introduce yourself briefly, explain that this is a test call, and "
    "ask whether the person would like a random number. Keep every turn short; "
    "everything you say is read aloud."
)

bot = Bot(
    system_prompt=SYSTEM_PROMPT,
    greeting="Hi! Thanks for calling. How can I help you today?",
    outbound_prompt=OUTBOUND_PROMPT,
    outbound_greeting="Hi, this is the callbridge demo assistant calling. Do you have a moment?",
    voice=DEFAULT_VOICE,
    tools=(generate_random_number,),
)
