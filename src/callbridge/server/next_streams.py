"""The streams that re-attach to a live call, handed from the upgrade to the call's runner.

A call's stream ends when its TwiML is replaced (a transfer, keypad tones); a new one for
the same call may follow. The upgrade offers it here; the runner takes it and serves it,
and says when it is through with it (an aiohttp handler must stay until then).
"""

from __future__ import annotations

import asyncio

from callbridge.twilio.socket import TwilioSocket


class NextStreams:
    __slots__ = ("_arrived", "_being_served", "_offered")

    def __init__(self) -> None:
        self._offered: tuple[TwilioSocket, asyncio.Future[None]] | None = None
        self._being_served: asyncio.Future[None] | None = None
        self._arrived = asyncio.Event()

    def offer(self, sock: TwilioSocket) -> asyncio.Future[None] | None:
        """Queue the call's next socket (one at a time); None if one is already queued."""
        if self._offered is not None:
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._offered = (sock, done)
        self._arrived.set()
        return done

    async def next(self, finished: asyncio.Event) -> TwilioSocket | None:
        """The next socket, or None once `finished` is set first."""
        while self._offered is None:
            if finished.is_set():
                return None
            self._arrived.clear()
            waiters = [
                asyncio.ensure_future(self._arrived.wait()),
                asyncio.ensure_future(finished.wait()),
            ]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        sock, done = self._offered
        self._offered = None
        self._being_served = done
        return sock

    def served(self) -> None:
        """The socket being served is done with."""
        done, self._being_served = self._being_served, None
        if done is not None and not done.done():
            done.set_result(None)

    def close(self) -> TwilioSocket | None:
        """The call is over: a socket still queued is not served (returned, to close)."""
        self.served()
        if self._offered is None:
            return None
        sock, done = self._offered
        self._offered = None
        if not done.done():
            done.set_result(None)
        return sock
