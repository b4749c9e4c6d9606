"""What a call's bridge asks its adapters to do. Plain values; performing them is I/O."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec

from callbridge.records.entries import RecordEntry
from callbridge.tools import Tool

# The two actions of nearly every frame are msgspec Structs: as immutable as the frozen
# dataclasses below, and built in a fifth of the time (~45 ns against ~250 ns).


class SendToTwilio(msgspec.Struct, frozen=True, gc=False):
    frame: bytes  # a JSON text frame, already UTF-8: sent without re-encoding


class SendToAgent(msgspec.Struct, frozen=True, gc=False):
    frame: bytes


@dataclass(frozen=True, slots=True)
class OpenAgent:
    """Open the upstream WebSocket after `delay` s; answer with AgentOpened or AgentOpenFailed."""

    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class CloseAgent:
    pass


@dataclass(frozen=True, slots=True)
class HangUp:
    """Close the Twilio socket. With nothing after <Connect> in the TwiML, the call ends."""

    code: int = 1000  # 1008 (policy violation) when the peer broke our limits


@dataclass(frozen=True, slots=True)
class RunTool:
    call_id: str
    tool: Tool
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StartTimer:
    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True)
class Log:
    level: int
    event: str
    fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def info(cls, event: str, **fields: Any) -> Log:
        return cls(logging.INFO, event, fields)

    @classmethod
    def warning(cls, event: str, **fields: Any) -> Log:
        return cls(logging.WARNING, event, fields)

    @classmethod
    def error(cls, event: str, **fields: Any) -> Log:
        return cls(logging.ERROR, event, fields)

    @classmethod
    def debug(cls, event: str, **fields: Any) -> Log:
        return cls(logging.DEBUG, event, fields)


@dataclass(frozen=True, slots=True)
class Record:
    """An entry for the call's record; written behind the audio path, never awaited."""

    entry: RecordEntry


@dataclass(frozen=True, slots=True)
class Finished:
    """Both sockets are closed; the call is over. Cancel whatever of it still runs."""

    reason: str


Action = (
    SendToTwilio
    | SendToAgent
    | OpenAgent
    | CloseAgent
    | HangUp
    | RunTool
    | StartTimer
    | CancelTimer
    | Log
    | Record
    | Finished
)
