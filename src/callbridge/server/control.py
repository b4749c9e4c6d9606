"""Commands for a live call, performed on the instance that holds it.

A command (`shared_state.Command`: a name, the call, JSON arguments) may be sent from any
instance; the shared state carries it to the holder, which looks the name up in `HANDLERS`
and performs it on the call's runner. A new command is one entry in the table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from callbridge.bridge.verb_events import AmdVerdict, DialEnded, TransferAnswered
from callbridge.logs import EventLogger
from callbridge.server.call_registry import CallRegistry
from callbridge.server.call_runner import CallRunner, VerbRefused
from callbridge.server.shared_state import Command, CommandHandler
from callbridge.verbs import ANSWERED_BY

# Performs a command on a live call: None if done, else why not (fixed text).
Handler = Callable[[CallRunner, dict[str, Any]], str | None]


def hang_up(runner: CallRunner, args: dict[str, Any]) -> str | None:
    """End the call, at once or after the agent's goodbye (`goodbye`) has played."""
    goodbye = args.get("goodbye")
    try:
        runner.hang_up(goodbye if isinstance(goodbye, str) else None)
    except VerbRefused as exc:
        return str(exc)
    return None


def say(runner: CallRunner, args: dict[str, Any]) -> str | None:
    text = args.get("text")
    if not isinstance(text, str):
        return "no text"
    try:
        runner.say(text)
    except VerbRefused as exc:
        return str(exc)
    return None


def transfer(runner: CallRunner, args: dict[str, Any]) -> str | None:
    return runner.request_verb("transfer", str(args.get("target", "")))


def digits(runner: CallRunner, args: dict[str, Any]) -> str | None:
    return runner.request_verb("digits", str(args.get("digits", "")))


def dial_ended(runner: CallRunner, args: dict[str, Any]) -> str | None:
    """Twilio's `<Dial>` action reached another instance: how the transfer's dial ended."""
    runner.end(DialEnded(str(args.get("status") or "failed")))
    return None


def transfer_answered(runner: CallRunner, args: dict[str, Any]) -> str | None:
    """The person a call was transferred to answered (the callback reached another
    instance): the agent session ends now."""
    runner.end(TransferAnswered())
    return None


def amd(runner: CallRunner, args: dict[str, Any]) -> str | None:
    """Answering-machine detection's verdict, which reached another instance."""
    answered_by = args.get("answered_by")
    if answered_by not in ANSWERED_BY:
        return "unknown verdict"
    runner.end(AmdVerdict(str(answered_by)))
    return None


HANDLERS: dict[str, Handler] = {
    "hangup": hang_up,
    "say": say,
    "transfer": transfer,
    "digits": digits,
    # Twilio's callbacks about a call, when they reach an instance that does not hold it.
    "dial-ended": dial_ended,
    "transfer-answered": transfer_answered,
    "amd": amd,
}


def command_handler(registry: CallRegistry, log: EventLogger) -> CommandHandler:
    """Performs commands on the calls in `registry` (this instance's live calls)."""

    def perform(command: Command) -> str | None:
        handler = HANDLERS.get(command.name)
        if handler is None:
            return "unknown command"
        runner = registry.live.get(command.call_id)
        if runner is None:
            return "call is not live here"
        runner.log.info("control.command", command=command.name)
        try:
            return handler(runner, command.args)
        except Exception as exc:  # one bad command must not take the instance down
            with contextlib.suppress(Exception):
                log.exception("control.command_failed", exc, call_id=command.call_id)
            return "command failed"

    return perform
