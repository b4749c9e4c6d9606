"""What both peers (Twilio's stream, the agent's socket) share: the rules every socket
keeps, here; what they share about each WebSocket library, in `picows.py` and
`aiohttp.py`."""

from __future__ import annotations

import enum
from typing import Protocol

# A peer that stops reading: past this much unsent data the socket is given up on (the
# bridge reconnects to the agent; a call whose Twilio stream stalls ends) rather than
# buffering audio without end.
MAX_UNSENT_BYTES = 1024 * 1024


class CloseCode(enum.IntEnum):
    """The close codes we send (RFC 6455, 7.4.1)."""

    OK = 1000
    PROTOCOL_ERROR = 1002
    INVALID_TEXT = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


class FrameSender(Protocol):
    """A socket the runner sends pre-encoded frames to (Twilio's, the agent's)."""

    @property
    def closed(self) -> bool: ...

    def send(self, frame: bytes) -> None:
        """Queue one text frame. Never raises: a frame for a closing socket is dropped.
        Look it up for each frame, never keep it: a socket may rebind it as its state
        changes (the picows sockets do, so that an open socket's send runs no Python)."""
