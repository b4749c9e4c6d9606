"""What a call's bridge asks its adapters to do. Plain values; performing them is I/O."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from callbridge.records.entries import RecordEntry
from callbridge.tools import Tool

# Actions are msgspec Structs: as immutable as frozen dataclasses, and built in C, much
# faster: every agent event builds a few of them.


class SendToTwilio(msgspec.Struct, frozen=True, gc=False):
    frame: bytes  # a JSON text frame, already UTF-8: sent without re-encoding


class SendToAgent(msgspec.Struct, frozen=True, gc=False):
    frame: bytes


class OpenAgent(msgspec.Struct, frozen=True):
    """Open the upstream WebSocket after `delay` s; answer with AgentOpened or AgentOpenFailed."""

    delay: float = 0.0


class CloseAgent(msgspec.Struct, frozen=True):
    pass


class HangUp(msgspec.Struct, frozen=True):
    """Close the Twilio socket. With nothing after <Connect> in the TwiML, the call ends."""

    code: int = 1000  # 1008 (policy violation) when the peer broke our limits


class RedirectCall(msgspec.Struct, frozen=True):
    """Replace the call's TwiML through the REST API (the stream ends; the call goes on):
    `verb` "transfer" dials `to`, "digits" plays `digits` and opens a new stream.
    Answer with RedirectFinished."""

    verb: str
    to: str = ""
    digits: str = ""


class RunTool(msgspec.Struct, frozen=True):
    call_id: str
    tool: Tool
    arguments: dict[str, Any]
    # What the caller entered for the tool's keypad arguments (never the model's to see).
    keypad: dict[str, str] = msgspec.field(default_factory=dict)


class StartTimer(msgspec.Struct, frozen=True):
    name: str
    seconds: float


class CancelTimer(msgspec.Struct, frozen=True):
    name: str


class Log(msgspec.Struct, frozen=True):
    level: int
    event: str
    fields: dict[str, Any] = msgspec.field(default_factory=dict)

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


class Record(msgspec.Struct, frozen=True):
    """An entry for the call's record; written behind the audio path, never awaited."""

    entry: RecordEntry


class Finished(msgspec.Struct, frozen=True):
    """Both sockets are closed; the call is over. Cancel whatever of it still runs."""

    reason: str


Action = (
    SendToTwilio
    | SendToAgent
    | OpenAgent
    | CloseAgent
    | HangUp
    | RedirectCall
    | RunTool
    | StartTimer
    | CancelTimer
    | Log
    | Record
    | Finished
)
