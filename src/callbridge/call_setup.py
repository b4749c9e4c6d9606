"""A bot's per-call set-up: what it is told about a call, and what it may decide.

A bot's `setup` function (sync or async) runs when Twilio asks for the call's TwiML. It
gets a `CallSetup` and returns one of:

- `CallConfig`: this call's prompt, greeting, voice, tools or session options (anything
  left at None is the bot's own); returning None means the bot's defaults;
- `Refuse`: no agent; the caller hears a busy tone or is rejected (or hears `say`);
- `Forward`: no agent; the call is dialled through to a number on the bot's
  `forward_to` list.

It runs under a time limit (CALLBRIDGE_SETUP_TIMEOUT_SECONDS). If it fails or is late,
the call gets the bot's defaults: the caller always reaches the agent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from callbridge.session_options import SessionOptions

if TYPE_CHECKING:
    from callbridge.tools import Tool


@dataclass(frozen=True)
class CallSetup:
    """What is known about a call when its set-up runs."""

    call_id: str  # callbridge's id of the call (as in its record)
    direction: Literal["inbound", "outbound"]
    call_sid: str | None
    from_number: str | None
    to_number: str | None
    # The custom parameters given when the call was placed (`callbridge call --param`).
    parameters: Mapping[str, str] = field(default_factory=dict)
    # Twilio's webhook fields as sent: CallerCity, CallerState, CallerCountry, ...
    twilio: Mapping[str, str] = field(default_factory=dict)
    bot_name: str = "default"  # which bot answers (see CALLBRIDGE_BOTS)


@dataclass(frozen=True)
class CallConfig:
    """This call's configuration; a field left at None is the bot's.

    `greeting=""` makes the agent listen first. `options` are merged over the bot's, field
    by field; a value outside the API's limits is logged and the bot's is used instead.
    """

    system_prompt: str | None = None
    greeting: str | None = None
    voice: str | None = None
    tools: Sequence[Tool] | None = None
    options: SessionOptions | None = None


@dataclass(frozen=True)
class Refuse:
    """Do not answer with the agent. `reason="busy"` plays a busy tone, `"rejected"` the
    network's rejection; with `say`, the caller hears that text, then the call ends. A call
    callbridge placed (already answered) is simply hung up, or hears `say` first."""

    reason: Literal["busy", "rejected"] = "busy"
    say: str | None = None


@dataclass(frozen=True)
class Forward:
    """Dial the call through to `to`, which must be in the bot's `forward_to` list."""

    to: str
    caller_id: str | None = None  # the number the callee sees (yours on Twilio)
    timeout_seconds: int | None = None  # how long to ring (Twilio's default: 30)


SetupResult = CallConfig | Refuse | Forward | None
SetupFunction = Callable[[CallSetup], SetupResult | Awaitable[SetupResult]]
