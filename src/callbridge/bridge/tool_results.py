"""When a tool's result goes to the agent: the held, discarded and seen results.

The Voice Agent API takes a `tool.result` only right after a `reply.done` (see
https://www.assemblyai.com/docs/voice-agents): a result that finishes while a reply
plays, or while the caller speaks, is held until the next `reply.done` (or a resumed
session). The results of a reply the caller interrupted are discarded, those of its
tools still running too, when they finish. Each tool call id is answered once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import UNSET

from callbridge.agent import events as agent
from callbridge.bridge.inputs import ToolFinished
from callbridge.bridge.recent_ids import RecentIds


class ToolResults:
    __slots__ = ("_clock", "_held", "_interrupted", "_reply_of", "_seen", "_started", "may_flow")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.may_flow = True  # right after reply.done: a result may go at once
        self._reply_of: dict[str, str | None] = {}  # outstanding call_id -> its reply
        self._held: list[ToolFinished] = []
        # Bounded: an hour-long call has hundreds of replies; only recent ones can still matter.
        self._interrupted = RecentIds(16)  # replies whose tools' results are discarded
        self._seen = RecentIds(256)  # a call_id is answered once
        self._started: dict[str, tuple[str, dict[str, Any], float]] = {}

    def called(self, msg: agent.ToolCall, reply_id: str | None) -> bool:
        """A tool call of reply `reply_id`; False if its id was answered already."""
        if msg.call_id in self._seen:
            return False
        self._seen.add(msg.call_id)
        self._reply_of[msg.call_id] = reply_id
        raw = msg.arguments if msg.arguments is not UNSET else msg.args
        recorded = raw if isinstance(raw, dict) else {"raw": str(raw)[:2000]}
        self._started[msg.call_id] = (msg.name, recorded, self._clock())
        return True

    def finished(self, msg: ToolFinished) -> bool | None:
        """A tool finished: None if no such call is outstanding; False if its reply was
        interrupted (the result is discarded); True if held for `take`."""
        if msg.call_id not in self._reply_of or any(
            held.call_id == msg.call_id for held in self._held
        ):
            return None
        if self._reply_of[msg.call_id] in self._interrupted:
            del self._reply_of[msg.call_id]
            return False
        self._held.append(msg)
        return True

    def take(self) -> list[ToolFinished]:
        """The results held, to send now; none are held after."""
        held = self._held
        for result in held:
            self._reply_of.pop(result.call_id, None)
        self._held = []
        return held

    @property
    def outstanding(self) -> bool:
        """Whether a tool call still awaits its result (running, or held)."""
        return bool(self._reply_of)

    def has_held(self) -> bool:
        return bool(self._held)

    def interrupted(self, reply_id: str | None) -> list[str]:
        """A reply was interrupted: its held results are discarded (their call ids
        returned), and those of its tools still running will be when they finish."""
        self._interrupted.add(reply_id)
        kept: list[ToolFinished] = []
        discarded: list[str] = []
        for result in self._held:
            if self._reply_of.get(result.call_id) == reply_id:
                discarded.append(result.call_id)
            else:
                kept.append(result)
        self._held = kept
        for call_id in discarded:
            del self._reply_of[call_id]
            self._started.pop(call_id, None)
        return discarded

    def forget(self) -> None:
        """A fresh session never asked for the old session's tools: nothing to answer."""
        self._held.clear()
        self._reply_of.clear()

    def outcome(self, call_id: str) -> tuple[str, dict[str, Any], float]:
        """The call's tool name, recorded arguments and duration in ms, once."""
        name, arguments, started = self._started.pop(call_id, ("?", {}, self._clock()))
        return name, arguments, round((self._clock() - started) * 1000, 1)
