"""The bridge's timers by name. The runner arms one for each `StartTimer` and feeds back
`TimerFired`; what each does when it fires is `CallBridge`'s timer table."""

from __future__ import annotations

import enum


class Timer(enum.StrEnum):
    READY = "agent-ready"  # no session.ready in time: try again on a new socket
    SESSION_END = "session-end"  # no session.ended after session.end: close the socket
    APOLOGY = "apology"  # the apology should have played: hang up
    IDLE = "idle-check"  # has caller audio stopped? (`call_limits.IdleLimit`)
    MAX_CALL = "max-call"  # the call's length is nearly up: the agent wraps up
    WRAP_UP = "wrap-up"  # no goodbye played in time: end the call
    RETRY_BUDGET = "agent-retry-budget"  # reconnecting took too long: give up
    REATTACH = "reattach"  # the call waits for its next stream: none came in time
    VERB = "verb"  # an announcement or a message should have played: act anyway
    HANG_UP = "hang-up"  # no goodbye played in time after a hang-up: end the call
    KEYPAD = "keypad"  # no key for a while: the keypad entry is complete
    SILENCE = "silence"  # the caller said nothing since the reply played: check in
