"""The entries a call's record is made of. Plain values, produced behind the audio path.

Every entry carries the call's id and a per-call sequence number `seq` (assigned by the
producer, increasing from 0), so that (call_id, seq) is an idempotent key: writing an
entry twice, after a replay of the spool say, changes nothing.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Role = Literal["caller", "agent"]
EndedBy = Literal["caller", "agent", "bridge", "server", "restart", "operator"]


class CallOpened(msgspec.Struct, frozen=True):
    call_id: str
    seq: int
    at: float  # epoch seconds
    direction: str  # "inbound" | "outbound"
    call_sid: str | None = None
    stream_sid: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    instance_id: str | None = None


class CallStatusChanged(msgspec.Struct, frozen=True):
    """A Twilio status callback. Arrives by CallSid, possibly before or after the stream."""

    call_sid: str
    status: str  # queued, initiated, ringing, in-progress, completed, busy, failed, ...
    at: float
    sequence: int | None = None  # Twilio's SequenceNumber: callbacks arrive out of order
    call_id: str | None = None  # when known
    duration_seconds: int | None = None
    # From the callback itself, so that a call this instance never streamed (busy, no-answer,
    # or answered elsewhere) still has a readable record.
    direction: str | None = None  # Twilio's Direction: inbound, outbound-api, outbound-dial
    from_number: str | None = None
    to_number: str | None = None


class AgentSessionStarted(msgspec.Struct, frozen=True):
    call_id: str
    seq: int
    at: float
    session_id: str
    resumed: bool = False


class TranscriptLine(msgspec.Struct, frozen=True):
    call_id: str
    seq: int
    at: float
    role: Role
    text: str
    reply_id: str | None = None
    interrupted: bool = False
    generated_seconds: float | None = None  # agent: audio the agent sent for this reply
    heard_seconds: float | None = None  # agent: audio Twilio confirmed as played


class ToolInvocation(msgspec.Struct, frozen=True):
    call_id: str
    seq: int
    at: float
    tool_call_id: str
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    result: str | None = None
    is_error: bool = False
    duration_ms: float | None = None
    discarded: bool = False  # its reply was interrupted, so the result was not sent


class TurnLatency(msgspec.Struct, frozen=True):
    """From the end of the caller's speech (input.speech.stopped) to the reply's audio:
    its first audio (a silent lead-in, as a rule), and its first audible audio (the first
    words; None when this reply had none, or another reply answered the turn first)."""

    call_id: str
    seq: int
    at: float
    reply_id: str | None
    to_first_audio_sent_ms: float | None
    to_first_audio_played_ms: float | None
    to_first_audible_sent_ms: float | None = None
    to_first_audible_played_ms: float | None = None


class CallError(msgspec.Struct, frozen=True):
    call_id: str
    seq: int
    at: float
    source: Literal["agent", "twilio", "bridge", "tool"]
    code: str
    message: str = ""


class CallClosed(msgspec.Struct, frozen=True):
    call_id: str
    seq: int
    at: float
    ended_by: EndedBy
    reason: str
    frames_from_twilio: int = 0
    frames_to_agent: int = 0
    frames_to_twilio: int = 0
    dropped: dict[str, int] = msgspec.field(default_factory=dict)
    resumes: int = 0


RecordEntry = (
    CallOpened
    | CallStatusChanged
    | AgentSessionStarted
    | TranscriptLine
    | ToolInvocation
    | TurnLatency
    | CallError
    | CallClosed
)
