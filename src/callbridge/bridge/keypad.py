"""Keypad in: the keys a caller presses (Twilio's `dtmf` events), gathered into entries.

Keys pressed at any time make an entry (the bot's `KeypadRules`: a terminator ends it, a
clear key starts it over, so do `max_digits` and a pause), handed to the agent as a turn:
a `reply.create` whose instructions state the keys in order (the API offers no keypad
event, and a `conversation.message` is not reliably seen by the model).

A tool's keypad arguments (`Keypad`) are gathered the same way, one after the other,
once the model called the tool: the agent asks the caller (`reply.create` with the
argument's prompt), the keys go to the argument rather than to the agent, and the tool
runs with them. The keys of a sensitive argument go nowhere else: no log line, record,
metric or instruction carries them (a log line says how many keys came, never which).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from callbridge.agent import events as agent
from callbridge.bridge.actions import Action, CancelTimer, Log, RunTool, SendToAgent, StartTimer
from callbridge.bridge.hang_up import say_instructions
from callbridge.bridge.record_entries import RecordEntries
from callbridge.bridge.timers import Timer
from callbridge.keypad_input import KEYS, Keypad, KeypadRules, KeypadValues
from callbridge.tools import Tool

# Time to hear a keypad argument's prompt before its timeout starts counting.
PROMPT_ALLOWANCE_SECONDS = 10.0


def _keys(keys: str) -> str:
    return f"{len(keys)} key{'' if len(keys) == 1 else 's'}"


def entry_instructions(keys: str) -> str:
    """What the agent is told of an entry: the keys, in order, one by one."""
    spoken = ", ".join(keys)
    return (
        f"The caller pressed these keys on their phone keypad, in this order: {spoken}. "
        "Treat them as the caller's answer and reply accordingly."
    )


class Entry:
    """The keys of one entry so far."""

    __slots__ = ("clear_key", "keys", "max_digits", "terminator")

    def __init__(self, terminator: str, clear_key: str, max_digits: int) -> None:
        self.terminator = terminator
        self.clear_key = clear_key
        self.max_digits = max_digits
        self.keys = ""

    def press(self, key: str) -> bool:
        """Add a key; True when the entry is complete."""
        if self.terminator and key == self.terminator:
            return True
        if self.clear_key and key == self.clear_key:
            self.keys = ""
            return False
        self.keys += key
        return len(self.keys) >= self.max_digits

    def take(self) -> str:
        keys, self.keys = self.keys, ""
        return keys


@dataclass
class _Collection:
    """A tool call waiting for its keypad arguments."""

    call_id: str
    tool: Tool
    arguments: dict[str, Any]
    waiting: deque[tuple[str, Keypad]]
    reply_id: str | None  # the reply whose tool call this is
    values: KeypadValues = field(default_factory=KeypadValues)
    entry: Entry | None = None


class KeypadInput:
    """Entries for the agent, and keypad arguments for tools."""

    __slots__ = ("_collecting", "_entry", "_queue", "_records", "_tool_failed", "rules")

    def __init__(
        self,
        rules: KeypadRules,
        tool_failed: Callable[[str, str], list[Action]],
        records: RecordEntries,
    ) -> None:
        """`tool_failed(call_id, problem)`: the actions that answer a tool call with an
        error (its keypad argument was not entered)."""
        self.rules = rules
        self._tool_failed = tool_failed
        self._records = records
        self._entry = Entry(rules.terminator, rules.clear_key, rules.max_digits)
        self._collecting: _Collection | None = None
        self._queue: deque[_Collection] = deque()

    @property
    def busy(self) -> bool:
        """Whether keys are being gathered (an entry begun, or a tool's argument)."""
        return self._collecting is not None or bool(self._entry.keys)

    def run_tool(
        self, call_id: str, tool: Tool, arguments: dict[str, Any], reply_id: str | None
    ) -> list[Action]:
        """The model called a tool with keypad arguments in reply `reply_id`: ask for them
        (after any tool already waiting for its own), then run it."""
        waiting = deque(tool.keypad_arguments.items())
        self._queue.append(_Collection(call_id, tool, arguments, waiting, reply_id))
        if self._collecting is not None:
            return [Log.info("keypad.queued", tool_call_id=call_id, name=tool.name)]
        return self._next_collection()

    def pressed(self, key: str) -> list[Action]:
        """One key from the caller."""
        if key not in KEYS:
            return [Log.warning("keypad.unknown_key")]
        current = self._collecting
        if current is not None and current.entry is not None:
            if current.entry.press(key):
                return self._argument_done(current)
            return [StartTimer(Timer.KEYPAD, current.waiting[0][1].timeout_seconds)]
        if not self.rules.enabled:
            return [Log.debug("keypad.ignored")]
        if self._entry.press(key):
            return self._entry_done()
        return [StartTimer(Timer.KEYPAD, self.rules.inter_digit_seconds)]

    def timed_out(self) -> list[Action]:
        """No key for a while: the entry or the argument is complete as it stands."""
        current = self._collecting
        if current is not None and current.entry is not None:
            return self._argument_done(current)
        if self._entry.keys:
            return self._entry_done()
        return []

    def reply_interrupted(self, reply_id: str | None) -> list[Action]:
        """The caller talked over the reply that called these tools: the model has moved
        on, so their keys are not asked for, and the tools never run (their calls are
        answered as cut off, which the bridge discards)."""
        dropped = [c for c in self._queue if c.reply_id == reply_id]
        self._queue = deque(c for c in self._queue if c.reply_id != reply_id)
        actions: list[Action] = []
        current = self._collecting
        if current is not None and current.reply_id == reply_id:
            dropped.insert(0, current)
            actions += [CancelTimer(Timer.KEYPAD), *self._next_collection()]
        for collection in dropped:
            actions += self._tool_failed(collection.call_id, "cut off by the caller")
        return actions

    def cancel(self) -> list[Action]:
        """The call is ending: nothing more to gather; tools still waiting for keys are
        answered (the agent is not left waiting) and never run."""
        waiting = [self._collecting, *self._queue] if self._collecting else list(self._queue)
        self._collecting = None
        self._queue.clear()
        self._entry.take()
        actions: list[Action] = [CancelTimer(Timer.KEYPAD)]
        for collection in waiting:
            actions += self._tool_failed(collection.call_id, "the call is ending")
        return actions

    # --- internals ----------------------------------------------------------------------

    def _entry_done(self) -> list[Action]:
        keys = self._entry.take()
        if not keys:
            return [CancelTimer(Timer.KEYPAD)]
        return [
            CancelTimer(Timer.KEYPAD),
            Log.info("keypad.entry", keys=len(keys)),
            self._records.action("keypad-entry", "entered", by="caller", detail=_keys(keys)),
            SendToAgent(agent.encode_reply_create(entry_instructions(keys))),
        ]

    def _next_collection(self) -> list[Action]:
        if not self._queue:
            self._collecting = None
            return []
        self._collecting = self._queue.popleft()
        return self._ask(self._collecting)

    def _ask(self, current: _Collection) -> list[Action]:
        name, spec = current.waiting[0]
        current.entry = Entry(spec.terminator, self.rules.clear_key, spec.max_digits)
        return [
            Log.info("keypad.asking", tool_call_id=current.call_id, argument=name),
            SendToAgent(agent.encode_reply_create(say_instructions(spec.prompt))),
            StartTimer(Timer.KEYPAD, spec.timeout_seconds + PROMPT_ALLOWANCE_SECONDS),
        ]

    def _argument_done(self, current: _Collection) -> list[Action]:
        assert current.entry is not None
        name, spec = current.waiting.popleft()
        keys = current.entry.take()
        current.entry = None
        actions: list[Action] = [
            CancelTimer(Timer.KEYPAD),
            Log.info(
                "keypad.argument", tool_call_id=current.call_id, argument=name, keys=len(keys)
            ),
        ]
        if len(keys) < spec.min_digits:
            missing = self._records.action("keypad-argument", "missing", by="caller", detail=name)
            actions.append(missing)
            self._collecting = None
            problem = (
                f"the caller entered {len(keys)} keys for {name}, fewer than {spec.min_digits}"
                if keys
                else f"the caller entered nothing for {name}"
            )
            return actions + self._tool_failed(current.call_id, problem) + self._next_collection()
        current.values[name] = keys
        detail = f"{name}: {_keys(keys)}"
        entered = self._records.action("keypad-argument", "entered", by="caller", detail=detail)
        actions.append(entered)
        if current.waiting:
            return actions + self._ask(current)
        actions.append(RunTool(current.call_id, current.tool, current.arguments, current.values))
        return actions + self._next_collection()
