"""The entries a call's record is made of. Plain values, produced behind the audio path.

Every entry carries the call's id and a per-call sequence number `seq` (assigned by the
producer, increasing from 0), so that (call_id, seq) is an idempotent key: writing an
entry twice, after a replay of the spool say, changes nothing.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Role = Literal["caller", "agent"]
# "instance_lost": the instance holding the call stopped answering; another closed its record.
EndedBy = Literal["caller", "agent", "bridge", "server", "restart", "instance_lost", "operator"]


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


class CallSetupDone(msgspec.Struct, frozen=True):
    """What the bot's set-up decided for a call, when Twilio asked for its TwiML: before
    the call's stream (or instead of one, for a refused or forwarded call)."""

    call_id: str
    at: float
    direction: str
    outcome: str  # configured | defaults | refused | forwarded | failed (defaults used)
    bot_name: str | None = None
    parameters: dict[str, str] = msgspec.field(default_factory=dict)
    error: str | None = None  # why the set-up failed (outcome "failed")
    detail: str | None = None  # refused: the reason; forwarded: the number dialled
    call_sid: str | None = None
    from_number: str | None = None
    to_number: str | None = None


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


class SessionConfigured(msgspec.Struct, frozen=True):
    """The session configuration the agent confirmed (`session.updated`'s `config`), at the
    start and after each change, with secrets hidden."""

    call_id: str
    seq: int
    at: float
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class CallError(msgspec.Struct, frozen=True):
    call_id: str
    seq: int
    at: float
    source: Literal["agent", "twilio", "bridge", "tool", "setup"]
    code: str
    message: str = ""


class CallAction(msgspec.Struct, frozen=True):
    """An action on the call, and what it came to. `verb` and its outcomes:

    - hang-up (at-once, after-goodbye, goodbye-not-played), say (sent, refused),
      keypad-entry and keypad-argument (entered, missing), silence-check-in (asked);
    - transfer (answered, busy, no-answer, failed, canceled, not-started; `target` its
      name, `started_at` when the agent began to announce it), digits: keypad tones sent
      (sent, failed), amd: answering-machine detection (Twilio's verdict), voicemail (left),
      stream-lost: a stream that broke without `stop` (reattached, not-back, call-ended;
      `started_at` when it broke).

    `by` whom: agent, operator, silence, caller; None where nobody asked for it (amd,
    voicemail, stream-lost). `detail` never holds what the caller typed: at most how many
    keys.
    """

    call_id: str
    seq: int
    at: float
    verb: str
    outcome: str
    target: str | None = None
    started_at: float | None = None
    by: str | None = None
    detail: str = ""


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
    | CallSetupDone
    | CallStatusChanged
    | AgentSessionStarted
    | TranscriptLine
    | ToolInvocation
    | TurnLatency
    | SessionConfigured
    | CallError
    | CallAction
    | CallClosed
)
