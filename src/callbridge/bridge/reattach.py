"""A call outlives any one Media Stream: whether a stream's end ends the call.

Twilio ends the stream (`stop`) whenever the call's TwiML is replaced: a transfer's
`<Dial>`, `<Play digits>`, any redirect. The call goes on, and the TwiML that follows
may open a new stream for the same call (a failed dial, the digits played). So a stream
that ends while a redirect of ours is under way does not end the call: the bridge keeps
the agent session and waits a bounded time for the next stream. Any other `stop` (the
caller hung up) ends the call as before.

A stream can also break without `stop` (a network blip between Twilio and us). Twilio then
runs the TwiML after `</Connect>`: callbridge puts a `<Redirect>` there to its
`stream-ended` webhook, which answers with a new `<Connect><Stream>` while the bridge waits
(`STREAM_LOST`), so the caller keeps the same conversation.
"""

from __future__ import annotations

from callbridge.bridge.actions import Action, CancelTimer, Log, StartTimer
from callbridge.bridge.timers import Timer

# How long to wait for Twilio to open the next stream once it has the TwiML that opens
# it (a dial that failed, the digits played): the webhook round trip and a handshake.
REATTACH_SECONDS = 20.0
# Why a stream ended that broke without `stop`: the call waits for Twilio's next stream.
STREAM_LOST = "stream-lost"


class StreamHandover:
    """Which stream ends are expected, and the wait for the next stream."""

    __slots__ = ("expected", "streams", "waiting")

    def __init__(self) -> None:
        self.expected: str | None = None  # why a stream end is expected (a verb's name)
        self.waiting = False  # between streams: the last one ended, the call goes on
        self.streams = 0  # streams the call has had

    def expect(self, why: str | None) -> None:
        """A redirect of ours is under way (None: no longer): its `stop` is not a hang-up."""
        self.expected = why

    def stream_ended(self, wait_seconds: float) -> list[Action] | None:
        """The stream ended. None: the call ends with it; else the call waits for the next
        stream (at most `wait_seconds`)."""
        if self.expected is None:
            return None
        self.waiting = True
        return [
            Log.info("stream.handed_over", why=self.expected, wait_seconds=wait_seconds),
            StartTimer(Timer.REATTACH, wait_seconds),
        ]

    def wait_longer(self, seconds: float) -> list[Action]:
        """The next stream is due within `seconds` from now (a dial ended, say)."""
        return [StartTimer(Timer.REATTACH, seconds)] if self.waiting else []

    def stream_started(self) -> tuple[bool, str | None, list[Action]]:
        """A stream started: (whether it re-attaches to the call, why the last one ended)."""
        self.streams += 1
        if not self.waiting:
            return False, None, []
        why = self.expected
        self.waiting = False
        self.expected = None
        return True, why, [CancelTimer(Timer.REATTACH)]
