"""One client's WebSocket on the fake, and how it is closed."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from aiohttp import WSMessage, web

from callbridge.testing.fake_agent.messages import Event

if TYPE_CHECKING:
    from callbridge.testing.fake_agent.session import FakeSession

__all__ = ["CLOSE_TIMEOUT", "Connection"]

CLOSE_TIMEOUT: Final = 2.0  # how long a close waits for the peer's close frame
_CLOSE_REQUESTED: Final = "fake voice agent: close requested"


@dataclass(eq=False)
class Connection:
    number: int
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    reader: asyncio.Task[Any] | None  # the handler task, the only one that reads or closes
    session: FakeSession | None = None
    pending: list[Event] = field(default_factory=list)  # received before a session exists
    audio_before_setup: int = 0
    idle: bool = False  # the reader is parked in ws.receive()
    close_request: tuple[int, bytes] | None = None

    def request_close(self, code: int, message: bytes = b"") -> None:
        """Have the reader close the socket.

        aiohttp's close() from another task drops TCP right after the close frame, so a
        client reading late sees 1006; closing from the reader waits for the peer's close
        frame like the live server does.
        """
        if self.close_request is None:
            self.close_request = (code, message)
        if self.idle and self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel(_CLOSE_REQUESTED)

    async def receive(self) -> WSMessage | None:
        """The next frame, or None once the socket is done (closed here if requested)."""
        while True:
            if self.close_request is not None:
                code, message = self.close_request
                with contextlib.suppress(ConnectionError):
                    await self.ws.close(code=code, message=message)
                return None
            self.idle = True
            try:
                return await self.ws.receive()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self.close_request is None or task is None or task.uncancel() > 0:
                    raise
            finally:
                self.idle = False
