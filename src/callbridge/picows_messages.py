"""Whole text messages out of picows frames: picows hands over frames as they come, and a
peer may split a message into fragments (neither Twilio nor the agent is known to)."""

from __future__ import annotations

from picows import WSFrame, WSMsgType


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
