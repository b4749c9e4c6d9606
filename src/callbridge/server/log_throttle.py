"""Log lines that anyone on the internet can cause, at a bounded rate.

A refused request is worth a line, but a client that sends thousands a second must not
turn into thousands of lines a second. `LogThrottle` lets the first line for a key (a
client and a reason, say) through at once, then at most one per `interval` seconds for
that key; the next line let through says how many were left out since the last one
(`suppressed=K`). Nothing is lost from view: a flood shows up as a line every interval
with its count.

A server keeps one for the WARNING lines about refused requests (`AppState.refusals`):
webhooks, stream upgrades, the records API and /metrics. Anything else that needs "once
per client" can use a `LogThrottle` of its own.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from callbridge.logs import EventLogger

DEFAULT_INTERVAL_SECONDS = 10.0
# Keys remembered at most (the least recently logged go first): a client that rotates its
# address cannot grow the memory, only lose its own counts.
DEFAULT_MAX_KEYS = 10_000


class LogThrottle:
    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        # key -> [when its last line was let through, lines left out since]
        self._keys: OrderedDict[Hashable, list[float]] = OrderedDict()

    def admit(self, key: Hashable) -> int | None:
        """None: leave this line out (it is counted). Otherwise log it, saying how many
        lines for `key` were left out before it (0: none)."""
        now = self._clock()
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self._interval:
            entry[1] += 1
            return None
        suppressed = int(entry[1]) if entry is not None else 0
        self._keys[key] = [now, 0]
        self._keys.move_to_end(key)
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        return suppressed

    def warning(self, log: EventLogger, event: str, key: Hashable, **fields: Any) -> bool:
        """`log.warning(event, **fields)` if `key` is due a line, with `suppressed=K` when
        lines were left out since its last one. True if it was logged."""
        suppressed = self.admit((event, key))
        if suppressed is None:
            return False
        if suppressed:
            fields["suppressed"] = suppressed
        log.warning(event, **fields)
        return True


def refused(
    throttle: LogThrottle,
    log: EventLogger,
    event: str,
    *,
    client: str | None,
    reason: str,
    **fields: Any,
) -> bool:
    """A WARNING line about a refused request, at most one per interval per (event, client,
    reason). `reason` must be a fixed text (never the request's own): it is part of the key."""
    return throttle.warning(log, event, (client, reason), client=client, reason=reason, **fields)
