"""What an operator can do to a live call from the console, in one place.

`perform(state, call_id, verb, args)` is the only way the console acts on a call; a call held
by another instance (REDIS_URL set) gets the command through the shared state. Each verb
is the call verb of the same name (`server/control.py`): hanging up ends the call in order
(session.end upstream, the media stream closed, the record saying the operator ended it);
say has the agent say a text now; transfer hands the caller to one of the bot's transfer
targets, by name, once the agent has told them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from callbridge.server.control import HANDLERS
from callbridge.server.shared_state import Command

if TYPE_CHECKING:
    from callbridge.server.call_runner import CallRunner
    from callbridge.server.state import AppState

HANG_UP = "hang-up"
# The console's verbs: the control command each is, and its form field and argument.
_COMMANDS: dict[str, tuple[str, str | None, str | None]] = {
    HANG_UP: ("hangup", None, None),
    "say": ("say", "text", "text"),
    "transfer": ("transfer", "to", "target"),
}
MAX_ARGUMENT_CHARS = 1000


class ActionRefused(Exception):
    """The verb cannot be done (no such call, verb or argument); the message says why."""


def transfer_targets(runner: CallRunner | None) -> list[str]:
    """Where this call's bot may transfer it, by name, for the transfer form to offer."""
    return list(runner.bridge.transfer_targets) if runner is not None else []


def verbs(runner: CallRunner) -> list[str]:
    """The verbs this call offers, hang-up first (transfer when its bot has targets)."""
    return offered(transfer_targets(runner))


def offered(targets: Sequence[str]) -> list[str]:
    """The verbs a call whose bot may transfer it to `targets` offers."""
    return [HANG_UP, "say", "transfer"] if targets else [HANG_UP, "say"]


async def perform(state: AppState, call_id: str, verb: str, args: Mapping[str, str]) -> None:
    runner = state.registry.live.get(call_id)
    if runner is None:
        if not state.shared.distributed:
            raise ActionRefused("that call is not live on this server")
        await _perform_elsewhere(state, call_id, verb, args)
        return
    if verb not in verbs(runner):
        raise ActionRefused(f"{verb!r} cannot be done to this call")
    command, command_args = _command(verb, args)
    refusal = HANDLERS[command](runner, command_args)
    if refusal is not None:
        raise ActionRefused(f"{verb}: {refusal}")


async def _perform_elsewhere(
    state: AppState, call_id: str, verb: str, args: Mapping[str, str]
) -> None:
    """A call another instance may hold: the command goes there through the shared state
    (the holder checks it; a refusal there is logged there, not shown here)."""
    if verb not in _COMMANDS:
        raise ActionRefused(f"{verb!r} cannot be done to this call")
    command, command_args = _command(verb, args)
    result = await state.shared.send(Command(name=command, call_id=call_id, args=command_args))
    if not result.delivered:
        raise ActionRefused(f"{verb}: {result.error or 'not delivered'}")


def _command(verb: str, args: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The control command a console verb is, and its checked arguments."""
    command, field, argument = _COMMANDS[verb]
    command_args: dict[str, str] = {}
    if field is not None and argument is not None:
        value = args.get(field, "").strip()
        if not value:
            raise ActionRefused(f"{verb} needs {field!r}")
        if len(value) > MAX_ARGUMENT_CHARS:
            raise ActionRefused(f"{field!r} is longer than {MAX_ARGUMENT_CHARS} characters")
        command_args[argument] = value
    return command, command_args
