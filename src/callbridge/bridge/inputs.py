"""What the adapters tell a call's bridge, besides the decoded wire messages themselves.

The bridge also takes every `media_stream` message (Twilio) and every `agent.events`
event (Voice Agent API) as they come off the decoders.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """Twilio's socket is open; the call's clocks (idle, maximum length) start now."""


@dataclass(frozen=True, slots=True)
class AgentOpened:
    """The upstream WebSocket is open; nothing has been sent on it yet."""


@dataclass(frozen=True, slots=True)
class AgentOpenFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class AgentClosed:
    """The upstream socket closed, for whatever reason (code None: no close frame)."""

    code: int | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TwilioClosed:
    """The Twilio socket is gone (closed by Twilio, by us, or broken)."""


@dataclass(frozen=True, slots=True)
class TwilioProtocolError:
    """The Twilio socket broke a hard limit (oversize frame...); the stream must end."""

    reason: str


@dataclass(frozen=True, slots=True)
class ToolFinished:
    call_id: str
    result: str
    is_error: bool


@dataclass(frozen=True, slots=True)
class TimerFired:
    name: str
    # When caller audio last arrived, by the clock the runner paces it with (-inf: none
    # yet), if the runner knows: the idle check then waits out exactly the idle period
    # instead of checking four times a period. None: judged by the frame count alone.
    media_at: float | None = None


@dataclass(frozen=True, slots=True)
class ServerShutdown:
    """The process is stopping: end the call in order.

    Polite: the agent says goodbye first. Otherwise at once (session.end, hang up).
    """

    polite: bool = False
