"""Twilio's last request for a call that ended by our hand, awaited by a stopping server.

When callbridge closes a call's stream (a hang-up, a goodbye at shutdown), Twilio runs the
TwiML after `</Connect>`: a `<Redirect>` to the call's `stream-ended` webhook, answered
with `<Hangup>`. A server that stopped listening first would leave Twilio to tell the
caller "an application error has occurred", so a single instance that is stopping waits
for those requests a short, bounded time before it closes its port.
"""

from __future__ import annotations

import asyncio
import contextlib

# Twilio's request follows the socket's close within a round trip; past this, go anyway.
LAST_REQUEST_WAIT_SECONDS = 2.0


class LastRequests:
    __slots__ = ("_arrived", "_changed", "watching")

    def __init__(self) -> None:
        self.watching = False  # set while stopping: no set grows for the life of the process
        self._arrived: set[str] = set()
        self._changed = asyncio.Event()

    def arrived(self, call_id: str) -> None:
        """The call's `stream-ended` request was answered."""
        if self.watching:
            self._arrived.add(call_id)
            self._changed.set()

    async def wait_for(self, call_ids: set[str], seconds: float) -> set[str]:
        """Until each of `call_ids` has had its request, or `seconds` passed; the ones
        still missing."""
        missing = call_ids - self._arrived
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while missing:
                    self._changed.clear()
                    await self._changed.wait()
                    missing = call_ids - self._arrived
        return missing
