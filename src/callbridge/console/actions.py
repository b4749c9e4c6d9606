"""What an operator can do to a live call from the console, in one place.

`perform(state, call_id, verb, args)` is the only way the console acts on a call. Hanging
up ends the call in order (`OperatorHangUp`: session.end upstream, the media stream closed,
the record saying the operator ended it). Other verbs are offered only when the call's
runner has a public method of that name (`say`, `transfer`), and are called with the form's
fields as keyword arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from callbridge.bridge.inputs import OperatorHangUp

if TYPE_CHECKING:
    from callbridge.server.call_runner import CallRunner
    from callbridge.server.state import AppState

HANG_UP = "hang-up"
# Verbs that are methods of the runner, with the form fields each takes.
RUNNER_VERBS: dict[str, tuple[str, ...]] = {"say": ("text",), "transfer": ("to",)}
MAX_ARGUMENT_CHARS = 1000


class ActionRefused(Exception):
    """The verb cannot be done (no such call, verb or argument); the message says why."""


def transfer_targets(bot: object) -> list[str]:
    """Where the bot may transfer calls (its `transfer_targets`, names or a mapping from
    them), for the transfer form to offer; empty if it names none."""
    targets = getattr(bot, "transfer_targets", None) or ()
    return [str(t) for t in targets][:50]


def verbs(runner: CallRunner) -> list[str]:
    """The verbs this call's runner supports, hang-up first."""
    return [HANG_UP, *(v for v in RUNNER_VERBS if callable(getattr(runner, v, None)))]


async def perform(state: AppState, call_id: str, verb: str, args: Mapping[str, str]) -> None:
    runner = state.registry.live.get(call_id)
    if runner is None:
        raise ActionRefused("that call is not live on this server")
    if verb not in verbs(runner):
        raise ActionRefused(f"{verb!r} cannot be done to this call")
    if verb == HANG_UP:
        runner.end(OperatorHangUp())
        return
    kwargs: dict[str, Any] = {}
    for name in RUNNER_VERBS[verb]:
        value = args.get(name, "").strip()
        if not value:
            raise ActionRefused(f"{verb} needs {name!r}")
        if len(value) > MAX_ARGUMENT_CHARS:
            raise ActionRefused(f"{name!r} is longer than {MAX_ARGUMENT_CHARS} characters")
        kwargs[name] = value
    outcome = getattr(runner, verb)(**kwargs)
    if inspect.isawaitable(outcome):
        await outcome
