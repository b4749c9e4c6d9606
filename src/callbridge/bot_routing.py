"""Several bots on one server: which bot answers a call.

The bots are CALLBRIDGE_BOT (named `default`) and those CALLBRIDGE_BOTS names; each is
loaded and checked before the server listens. A call goes to the bot chosen by name when
it was placed, else to the bot CALLBRIDGE_NUMBERS gives our number (the number called on
an inbound call, the caller ID on an outbound one), else to `default`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from callbridge.bot import Bot, BotLoadError, load_bot
from callbridge.config import DEFAULT_BOT_NAME


def load_bots(specs: Mapping[str, str], folder: Path | None = None) -> dict[str, Bot]:
    """Every bot of `specs` (name -> `module:attribute`), loaded and checked; BotLoadError
    names the setting and the bot that failed."""
    bots: dict[str, Bot] = {}
    for name, spec in specs.items():
        try:
            bots[name] = load_bot(spec, folder)
        except BotLoadError as exc:
            if name == DEFAULT_BOT_NAME:
                raise BotLoadError(f"CALLBRIDGE_BOT: {exc}") from None
            raise BotLoadError(f"CALLBRIDGE_BOTS: bot {name!r} ({spec}): {exc}") from None
    return bots


def choose_bot(
    bots: Mapping[str, Bot],
    numbers: Mapping[str, str],
    direction: str,
    from_number: str | None,
    to_number: str | None,
    bot_name: str | None = None,
) -> tuple[str, str | None]:
    """The name of the bot for a call, and why a bot asked for by name was not used."""
    problem = None
    if bot_name is not None:
        if bot_name in bots:
            return bot_name, None
        problem = f"no bot named {bot_name[:40]!r}"
    ours = from_number if direction == "outbound" else to_number
    name = numbers.get(ours or "", DEFAULT_BOT_NAME)
    return (name if name in bots else DEFAULT_BOT_NAME), problem
