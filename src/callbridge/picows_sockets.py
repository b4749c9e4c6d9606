"""What both picows sockets (the agent's, Twilio's) share: whole messages out of fragments,
the polite close, and one logger for picows's own lines."""

from __future__ import annotations

import asyncio
import logging

from picows import WSCloseCode, WSFrame, WSMsgType, WSTransport

# picows logs flow control and disconnects without the call's id; our sockets report every
# close themselves, with the id, so only picows's errors are let through.
PICOWS_LOG = logging.getLogger("callbridge.picows")
PICOWS_LOG.setLevel(logging.ERROR)
_CLOSE_WAIT_SECONDS = 2.0


async def close_politely(transport: WSTransport, code: WSCloseCode) -> None:
    """A close frame, a short wait for the peer's, then the connection, whatever it says."""
    if transport.is_disconnected:
        return
    transport.send_close(code)
    try:
        async with asyncio.timeout(_CLOSE_WAIT_SECONDS):
            await transport.wait_disconnected()
    except TimeoutError:
        transport.disconnect(graceful=False)


# A peer may split a message into fragments (neither Twilio nor the agent is known to);
# picows hands over frames as they come.


class MessageTooBig(Exception):
    pass


class FragmentedMessages:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._parts: list[bytes] | None = None
        self._size = 0

    def add(self, frame: WSFrame) -> bytes | None:
        """Take a TEXT frame without fin or a CONTINUATION; the whole message once complete.

        A continuation of nothing is ignored; past `max_bytes` raises MessageTooBig."""
        if frame.msg_type is WSMsgType.TEXT:
            self._parts, self._size = [], 0
        elif self._parts is None:
            return None
        self._size += frame.payload_size
        if self._size > self._max_bytes:
            self._parts = None
            raise MessageTooBig(f"message larger than {self._max_bytes} bytes")
        self._parts.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return None
        message, self._parts = b"".join(self._parts), None
        return message
