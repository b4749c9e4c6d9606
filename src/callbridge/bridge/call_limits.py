"""The call's limits: idle (no caller audio for a while: the call ends) and length (near
the maximum, the agent says goodbye, then the call ends)."""

from __future__ import annotations

from callbridge.agent import events as agent
from callbridge.bridge.actions import Action, Log, SendToAgent, StartTimer
from callbridge.bridge.timers import Timer

# Idle checks per idle period when the time of the last caller audio is not known (see
# TimerFired.media_at): detection within 1.25x the period. When it is, one check per period.
_IDLE_TICKS = 4
_IDLE_RECHECK_MIN_SECONDS = 0.05  # never re-check sooner (a clock that disagrees a little)
WRAP_UP_INSTRUCTIONS = (
    "The time for this call is up. Tell the caller, in one short friendly sentence, that "
    "you have to end the call now, and say goodbye. Do not ask any question."
)
# A restart or scale-down: the caller can ring again at once (another instance answers).
SHUTDOWN_INSTRUCTIONS = (
    "This phone line has to close now. Tell the caller, in one short friendly sentence, "
    "that you have to end the call and that they are welcome to call back right away, and "
    "say goodbye. Do not ask any question."
)


class IdleLimit:
    """Ends a stream that sent no audio for `seconds` (None: no limit)."""

    __slots__ = ("_frames_at_last_check", "_last_media_at", "seconds")

    def __init__(self, seconds: float | None, now: float) -> None:
        self.seconds = seconds
        self._frames_at_last_check = 0
        self._last_media_at = now  # when caller audio last came (or the stream opened)

    def start(self, now: float) -> list[Action]:
        if not self.seconds:
            return []
        self._last_media_at = now  # the idle period starts with the stream
        return [StartTimer(Timer.IDLE, self.seconds / _IDLE_TICKS)]

    def check(
        self, seconds: float, now: float, frames: int, media_at: float | None
    ) -> str | StartTimer:
        """Why the stream is idle, or the next check. Audio counted since the last check
        (`frames` is the running count) came at `media_at` if the runner says (its pace),
        else by now; the next check is due when the period would run out, or a quarter
        period on when the time of the audio is not known."""
        if frames != self._frames_at_last_check:
            self._frames_at_last_check = frames
            seen = now if media_at is None else max(media_at, self._last_media_at)
            self._last_media_at = min(seen, now)  # not in the future, whatever the clocks
        quiet = now - self._last_media_at
        if quiet >= seconds:
            return f"no media for {seconds:g} s"
        if media_at is None:
            return StartTimer(Timer.IDLE, seconds / _IDLE_TICKS)
        return StartTimer(Timer.IDLE, max(seconds - quiet, _IDLE_RECHECK_MIN_SECONDS))


class CallLength:
    """The maximum length: the agent wraps up `wrap_up_seconds` before it (or when the
    server shuts down), and the call ends once its goodbye has played."""

    __slots__ = ("goodbye_reply", "max_seconds", "wrap_up_seconds", "wrapping_up")

    def __init__(self, max_seconds: float | None, wrap_up_seconds: float) -> None:
        self.max_seconds = max_seconds
        self.wrap_up_seconds = wrap_up_seconds
        self.wrapping_up = False
        self.goodbye_reply: str | None = None

    def start(self) -> list[Action]:
        if not self.max_seconds:
            return []
        # Short limits still leave most of the call for talking.
        self.wrap_up_seconds = min(self.wrap_up_seconds, self.max_seconds / 4)
        return [StartTimer(Timer.MAX_CALL, self.max_seconds - self.wrap_up_seconds)]

    def wrap_up(self, reason: str, shutdown: bool) -> list[Action]:
        """Ask the agent for a goodbye; the call ends when it has played, or in time."""
        self.wrapping_up = True
        instructions = SHUTDOWN_INSTRUCTIONS if shutdown else WRAP_UP_INSTRUCTIONS
        return [
            Log.info("call.wrapping_up", reason=reason, within_seconds=self.wrap_up_seconds),
            SendToAgent(agent.encode_reply_create(instructions)),
            StartTimer(Timer.WRAP_UP, self.wrap_up_seconds),
        ]

    def reply_started(self, reply_id: str | None) -> None:
        if self.wrapping_up and self.goodbye_reply is None:
            self.goodbye_reply = reply_id

    def is_goodbye(self, reply_id: str | None) -> bool:
        return self.wrapping_up and reply_id == self.goodbye_reply
