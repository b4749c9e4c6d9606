"""Reconnecting to the Voice Agent API when its socket drops: retry with backoff within a
time budget, resume the session, or start a fresh one that apologises.

The API keeps a dropped session for 30 s (https://www.assemblyai.com/docs/voice-agents),
so a live session is resumed on the new socket and the bridge gives up before that. If
the resume is refused, a fresh session is dialled at once, greeting the caller with
`LOST_YOU_GREETING` instead of the bot's greeting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

LOST_YOU_GREETING = "Sorry, I lost you for a moment. Could you say that again?"
_RETRY_BASE_DELAY = 0.25
_RETRY_MAX_DELAY = 4.0


class Reconnect:
    __slots__ = (
        "_connect_retry_seconds",
        "_jitter",
        "_reconnect_seconds",
        "attempt",
        "budget_spent",
        "fresh_sessions",
        "resume_refused",
        "resumes",
        "session_lost",
    )

    def __init__(
        self,
        *,
        connect_retry_seconds: float,
        reconnect_seconds: float,
        jitter: Callable[[], float],
    ) -> None:
        self._connect_retry_seconds = connect_retry_seconds
        self._reconnect_seconds = reconnect_seconds
        self._jitter = jitter
        self.attempt = 0
        self.budget_spent = False  # the retry budget's timer fired
        self.resume_refused = False
        self.session_lost = False  # a live session dropped and is not back yet
        self.resumes = 0
        self.fresh_sessions = 0

    def budget(self, has_session: bool) -> float | None:
        """Seconds to keep retrying, when a first retry starts (else None): longer for a
        session to resume than for a first connection."""
        if self.attempt:
            return None
        return self._reconnect_seconds if has_session else self._connect_retry_seconds

    def next_delay(self, resume_was_refused: bool) -> float:
        """The wait before the next attempt: jittered exponential backoff, or none when a
        refused resume says the old session is gone (the caller waits in silence)."""
        if resume_was_refused:
            delay = 0.0
        else:
            delay = min(_RETRY_MAX_DELAY, _RETRY_BASE_DELAY * 2**self.attempt) * (
                0.5 + self._jitter() / 2
            )
        self.attempt += 1
        return delay

    def ready(self) -> None:
        """A session is ready: the next drop starts afresh."""
        self.attempt = 0
        self.budget_spent = False
        self.resume_refused = False
        self.session_lost = False


def fresh_config(session_config: Mapping[str, Any]) -> dict[str, Any]:
    """For a new session after the old one was lost: no second greeting, an apology."""
    config = dict(session_config)
    if "agent_id" in config:
        return config  # a stored agent is named alone; its own greeting plays
    config["greeting"] = LOST_YOU_GREETING
    return config
