"""The bytes around what the compiled fast path relays.

The fast path writes the frames the full path's encoders write, without building and
encoding a message a frame: each frame is the encoder's output for a message with a hole
where the relayed text goes (the base64 audio as the JSON string it arrived as, or a
mark's number), cut at the hole once, and the text copied in between.
"""

from __future__ import annotations

import msgspec

from callbridge.agent import events as agent
from callbridge.twilio import media_stream as twilio

# A NUL byte is never in JSON that msgspec writes (it escapes control characters in
# strings), so the one the hole puts there can only be the hole.
_HOLE = b"\x00"


def _around(encoded: bytes) -> tuple[bytes, bytes]:
    head, hole, tail = encoded.partition(_HOLE)
    if not hole or _HOLE in tail:
        raise ValueError(f"not one hole in {encoded!r}")
    return head, tail


def input_audio_parts() -> tuple[bytes, bytes]:
    """An `input.audio` message: head + the caller's base64 text (a JSON string) + tail."""
    return _around(agent.encode_struct(agent.RelayInputAudio(msgspec.Raw(_HOLE))))


def twilio_parts(stream_sid: str, mark_prefix: str) -> tuple[bytes, bytes, bytes, bytes]:
    """For one stream: the bytes around a `media` message's base64 text (a JSON string),
    and around the number of a mark named `mark_prefix` and that number."""
    if msgspec.json.encode(mark_prefix) != b'"%s"' % mark_prefix.encode():
        raise ValueError(f"mark prefix {mark_prefix!r} is not plain JSON text")
    media = twilio.RelayOutboundMedia(stream_sid, twilio.RelayOutboundPayload(msgspec.Raw(_HOLE)))
    name = msgspec.Raw(b'"' + mark_prefix.encode() + _HOLE + b'"')
    mark = twilio.RelayOutboundMark(stream_sid, twilio.RelayMarkName(name))
    return (*_around(twilio.encode_struct(media)), *_around(twilio.encode_struct(mark)))
