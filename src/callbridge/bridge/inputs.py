"""What the adapters tell a call's bridge, besides the decoded wire messages themselves.

The bridge also takes every `media_stream` message (Twilio) and every `agent.events`
event (Voice Agent API) as they come off the decoders.
"""

from __future__ import annotations

import msgspec


class StreamOpened(msgspec.Struct, frozen=True):
    """Twilio's socket is open; the call's clocks (idle, maximum length) start now."""


class AgentOpened(msgspec.Struct, frozen=True):
    """The upstream WebSocket is open; nothing has been sent on it yet."""


class AgentOpenFailed(msgspec.Struct, frozen=True):
    reason: str


class AgentClosed(msgspec.Struct, frozen=True):
    """The upstream socket closed, for whatever reason (code None: no close frame)."""

    code: int | None
    reason: str = ""


class TwilioClosed(msgspec.Struct, frozen=True):
    """The Twilio socket is gone (closed by Twilio, by us, or broken)."""


class ToolFinished(msgspec.Struct, frozen=True):
    call_id: str
    result: str
    is_error: bool


class TimerFired(msgspec.Struct, frozen=True):
    name: str
    # When caller audio last arrived, by the clock the runner paces it with (-inf: none
    # yet), if the runner knows: the idle check then waits out exactly the idle period
    # instead of checking four times a period. None: judged by the frame count alone.
    media_at: float | None = None


class ServerShutdown(msgspec.Struct, frozen=True):
    """The process is stopping: end the call in order.

    Polite: the agent says goodbye first. Otherwise at once (session.end, hang up).
    """

    polite: bool = False


class OperatorHangUp(msgspec.Struct, frozen=True):
    """Someone watching the call (the operator console) ended it: at once, in order."""
