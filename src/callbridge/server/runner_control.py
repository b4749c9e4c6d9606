"""A live call's verbs, performed for its tools and its operators (`callbridge.call.Call`).

`RunnerControl` is the `CallControl` of a call served by a `CallRunner`: a verb is
checked where it is asked for (so a bad one raises there, before anything is sent), then
handed to the call's bridge as an event on the event loop's thread, whatever thread asked
(sync tools run on worker threads).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from callbridge.bot import Bot
from callbridge.bridge.inputs import UpdateSession
from callbridge.bridge.session_changes import check_changes
from callbridge.call import Call
from callbridge.server.call_registry import CallInfo
from callbridge.server.call_runner import CallRunner, VerbRefused
from callbridge.server.state import AppState
from callbridge.session_plan import SessionPlan, plan_session
from callbridge.tools import Tool


class RunnerControl:
    def __init__(self, runner: CallRunner, tools_by_name: Mapping[str, Tool]) -> None:
        # Weak: the runner holds the call, which holds this; a tool may keep the call.
        self._runner = weakref.ref(runner)
        self._tools_by_name = dict(tools_by_name)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def update_session(self, changes: Mapping[str, Any]) -> None:
        self.update(changes, "tool")

    def update(self, changes: Mapping[str, Any], source: str) -> None:
        """Check `changes` (SessionUpdateError if they cannot be made), then send them."""
        checked = check_changes(changes, self._tools_by_name)
        for tool in checked.tools or ():
            self._tools_by_name.setdefault(tool.name, tool)
        event = UpdateSession(checked, source)
        if threading.get_ident() == self._thread:
            self._feed(event)
        else:
            self._loop.call_soon_threadsafe(self._feed, event)

    def perform(self, verb: str, args: Mapping[str, Any]) -> str | None:
        """A verb on the call, on the event loop's thread (a sync tool waits for it there)."""
        if threading.get_ident() == self._thread:
            return self._perform(verb, args)
        future = asyncio.run_coroutine_threadsafe(self._perform_async(verb, args), self._loop)
        return future.result()

    async def _perform_async(self, verb: str, args: Mapping[str, Any]) -> str | None:
        return self._perform(verb, args)

    def _perform(self, verb: str, args: Mapping[str, Any]) -> str | None:
        runner = self._runner()
        if runner is None or runner.done.is_set():
            return "the call has ended"
        try:
            if verb == "hangup":
                runner.hang_up(args.get("goodbye"), by="agent")
                return None
            if verb == "say":
                runner.say(str(args.get("text", "")))
                return None
        except VerbRefused as exc:
            return str(exc)
        if verb in ("transfer", "digits"):
            return runner.request_verb(
                verb, str(args.get("target" if verb == "transfer" else "digits", ""))
            )
        return f"unknown verb {verb!r}"

    def _feed(self, event: UpdateSession) -> None:
        runner = self._runner()
        if runner is not None and not runner.done.is_set():
            runner.end(event)


def call_plan(state: AppState, info: CallInfo | None, direction: str) -> SessionPlan:
    """The session the webhook planned for the call (the default bot's if it planned none)."""
    if info is not None and info.plan is not None:
        return info.plan
    return plan_session(state.bot, direction, state.settings.agent_voice)


def call_bot(state: AppState, info: CallInfo | None) -> Bot:
    """The bot that answers the call (the default one if the webhook chose none)."""
    if info is None:
        return state.bot
    return state.bots.get(info.bot_name or "default", state.bot)


def call_for(
    state: AppState,
    info: CallInfo | None,
    call_id: str,
    direction: str,
    runner: CallRunner,
    plan: SessionPlan,
) -> Call:
    """The `Call` the call's tools are given."""
    bot = call_bot(state, info)
    tools = {t.name: t for t in bot.tools}
    tools.update((t.name, t) for t in plan.tools)
    return Call(
        call_id=call_id,
        direction="outbound" if direction == "outbound" else "inbound",
        call_sid=info.call_sid if info is not None else None,
        from_number=info.from_number if info is not None else None,
        to_number=info.to_number if info is not None else None,
        parameters=dict(info.parameters) if info is not None else {},
        control=RunnerControl(runner, tools),
        bot_name=(info.bot_name or "default") if info is not None else "default",
    )
