"""The JSON events the fake exchanges with its clients: encoding, ids, error events."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

__all__ = ["DECODER", "ENCODER", "Event", "error_event", "new_id"]

Event = dict[str, Any]

ENCODER = msgspec.json.Encoder()
DECODER = msgspec.json.Decoder()


def new_id(prefix: str, length: int = 32) -> str:
    """A fresh id like the live service's: ``prefix`` then ``length`` hex digits."""
    return prefix + uuid.uuid4().hex[:length]


def error_event(code: str, message: str, param: str | None, session_id: str | None) -> Event:
    """``session.error``; ``session_id`` only on errors about the session's configuration."""
    return {
        "type": "session.error",
        "code": code,
        "message": message,
        "param": param,
        "session_id": session_id,
    }
