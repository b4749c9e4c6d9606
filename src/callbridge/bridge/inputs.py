"""What the adapters tell a call's bridge, besides the decoded wire messages themselves.

The bridge also takes every `media_stream` message (Twilio) and every `agent.events`
event (Voice Agent API) as they come off the decoders.
"""

from __future__ import annotations

import msgspec

from callbridge.bridge.session_changes import SessionChanges


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
    """The Twilio socket is gone (closed by Twilio, by us, or broken). `ended_here`: we
    ended it (a refused frame, a flood), so it did not break."""

    ended_here: bool = False


class TwilioStreamEnded(msgspec.Struct, frozen=True):
    """Twilio says the call's stream is over: it ran the TwiML after `<Connect>` (our
    `stream-ended` webhook), whether or not our side of the socket has noticed yet."""


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


class UpdateSession(msgspec.Struct, frozen=True):
    """Change the live session (checked already: `session_changes.check_changes`); from a
    tool or an operator, as `source` says."""

    changes: SessionChanges
    source: str = "tool"


class HangUpRequested(msgspec.Struct, frozen=True):
    """An operator (the API, the command line, a tool's call object) hangs up.

    With `goodbye`, the agent says it first and the line closes once it has played;
    without, the call ends now."""

    by: str = "operator"
    goodbye: str | None = None


class SayRequested(msgspec.Struct, frozen=True):
    """Make the agent say `text` now."""

    text: str
