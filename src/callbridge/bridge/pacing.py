"""How fast Twilio's side may send: caller audio at real-time pace, and a flood budget.

Pure rules over a clock reading the caller passes in; no I/O. The runner applies them to
every frame it reads; the compiled fast path applies `admit_media` to the caller audio it
relays itself, with the parameters below (see `fast_path/_compiled.pyx`), keeping its due
time on the socket so that both paths keep one pace.
"""

from __future__ import annotations

import math
from typing import Protocol

FRAME_SECONDS = 0.02  # Twilio sends one 20 ms frame every 20 ms
# How far ahead of real time caller audio may run: 50 frames at once (a burst after a
# stall), then one every 20 ms. The half frame absorbs float rounding in the sums.
SLACK_SECONDS = 49.5 * FRAME_SECONDS


class Paced(Protocol):
    media_due: float  # when the next caller frame is due (-inf: none came yet)


class MediaPace:
    """Holds the pace's due time while no fast-path socket does."""

    __slots__ = ("media_due",)

    def __init__(self) -> None:
        self.media_due = -math.inf


def admit_media(pace: Paced, now: float) -> bool:
    """Real-time pace (GCRA): each frame is due `FRAME_SECONDS` after the one before; a
    frame more than `SLACK_SECONDS` ahead of when it is due is refused (False), and the
    pace is left as it was. The Voice Agent API drops audio that runs ahead of real time."""
    due = pace.media_due
    if due < now:
        due = now
    elif due - now > SLACK_SECONDS:
        return False
    pace.media_due = due + FRAME_SECONDS
    return True


def last_media_at(pace: Paced) -> float:
    """When the latest caller frame the pace admitted came (-inf: none yet)."""
    return pace.media_due - FRAME_SECONDS


class MessageBudget:
    """A flood limit in one-second windows: a budget of messages, with the clock compared
    only when a window's budget is spent."""

    __slots__ = ("_left", "_window_start", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._window_start = -math.inf
        self._left = 0

    def spend(self, now: float) -> bool:
        """Count one message; False once more than `limit` came within a second."""
        self._left -= 1
        if self._left >= 0:
            return True
        if now - self._window_start < 1.0:
            return False
        self._window_start, self._left = now, self.limit - 1
        return True
