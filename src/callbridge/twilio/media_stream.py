"""Twilio Media Streams wire format: typed messages, a tolerant decoder, encoders. No I/O.

Twilio sends `connected`, `start`, `media`, `dtmf`, `mark` and `stop` as JSON text frames;
we send `media`, `mark` and `clear`. Decoding never raises, whatever the bytes: a frame we
cannot use becomes an `InvalidFrame` that says why, so one bad frame is a log line, not a
dead call; a frame that is not UTF-8 at all becomes `InvalidText`, which ends the stream.
"""

from __future__ import annotations

from typing import Any, Union, get_args

import msgspec


class _Inbound(msgspec.Struct, tag_field="event", rename="camel", gc=False):
    pass


class Connected(_Inbound, tag="connected"):
    protocol: str = ""
    version: str = ""


class StartInfo(msgspec.Struct, rename="camel", gc=False):
    stream_sid: str
    call_sid: str = ""
    account_sid: str = ""
    tracks: list[str] = msgspec.field(default_factory=list)
    # Values are strings per Twilio; Any keeps a stray number from failing the whole start.
    custom_parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    media_format: dict[str, Any] | None = None


class Start(_Inbound, tag="start"):
    start: StartInfo
    stream_sid: str | None = None
    sequence_number: str | None = None


class MediaInfo(msgspec.Struct, gc=False):
    # track, chunk and timestamp are not used: left undecoded, per frame. The payload is
    # decoded from base64 by msgspec, which is also the check that it is base64 at all
    # (a frame that is not becomes an InvalidFrame): cheaper than decoding it separately.
    payload: bytes


class Media(_Inbound, tag="media"):
    media: MediaInfo
    stream_sid: str | None = None


class RelayMediaInfo(msgspec.Struct, gc=False):
    payload: msgspec.Raw  # the JSON string as it arrived, quotes and all


class RelayMedia(_Inbound, tag="media"):
    """`Media` as the compiled fast path reads it: the same fields, the payload left as the
    base64 text it arrived in. The fast path checks that text itself (canonical base64:
    what decoding and encoding it again would give) and relays it as is, which saves a
    base64 decode and encode per frame; anything else takes the full path, `Media`."""

    media: RelayMediaInfo
    stream_sid: str | None = None


class MarkInfo(msgspec.Struct, gc=False):
    name: str


class Mark(_Inbound, tag="mark"):
    mark: MarkInfo
    stream_sid: str | None = None
    sequence_number: str | None = None


class DtmfInfo(msgspec.Struct, gc=False):
    digit: str
    track: str = "inbound_track"


class Dtmf(_Inbound, tag="dtmf"):
    dtmf: DtmfInfo
    stream_sid: str | None = None
    sequence_number: str | None = None


class StopInfo(msgspec.Struct, rename="camel", gc=False):
    account_sid: str = ""
    call_sid: str = ""


class Stop(_Inbound, tag="stop"):
    stream_sid: str | None = None
    sequence_number: str | None = None
    stop: StopInfo | None = None


class InvalidFrame(msgspec.Struct, gc=False):
    """A frame that could not be used; `reason` is safe to log (no payload content)."""

    reason: str


class InvalidText(msgspec.Struct, frozen=True, gc=False):
    """A text frame whose bytes are not UTF-8, as far as the decoder read them (it does not
    check the text of fields it skips). RFC 6455 (section 8.1) has the receiver fail the
    connection, with close code 1007: unlike an `InvalidFrame`, this ends the stream."""

    reason: str = "text frame is not valid UTF-8"


INVALID_TEXT = InvalidText()


class TwilioProtocolError(msgspec.Struct, frozen=True):
    """The Twilio socket broke a hard limit (oversize frame...); the stream must end."""

    reason: str


MediaStreamMessage = Connected | Start | Media | Mark | Dtmf | Stop
_KNOWN_EVENTS = frozenset({"connected", "start", "media", "mark", "dtmf", "stop"})

_decoder = msgspec.json.Decoder(MediaStreamMessage)
_generic = msgspec.json.Decoder()


# The per-frame path calls the decoder itself (saving a Python call per frame) and, when it
# raises (one of DECODE_ERRORS: msgspec's, or UnicodeDecodeError for text that is not
# UTF-8), `undecodable`: together they are `decode`.
DECODE_ERRORS = (msgspec.DecodeError, UnicodeError)
decode_strict = _decoder.decode
# The fast path's: every message as `decode_strict` gives it, but `media` as a
# `RelayMedia` (only those are relayed; the full path decodes the rest again from text).
MediaStreamRelayMessage: Any = Union[  # noqa: UP007 (built from MediaStreamMessage)
    tuple(RelayMedia if kind is Media else kind for kind in get_args(MediaStreamMessage))
]
decode_relay = msgspec.json.Decoder(MediaStreamRelayMessage).decode


def decode(frame: str | bytes | memoryview) -> MediaStreamMessage | InvalidFrame | InvalidText:
    """Decode one text frame from Twilio. Never raises."""
    try:
        message: MediaStreamMessage = decode_strict(frame)
    except DECODE_ERRORS as exc:
        return undecodable(frame, exc)
    return message


def undecodable(frame: str | bytes | memoryview, exc: Exception) -> InvalidFrame | InvalidText:
    """What `decode` returns for a frame `decode_strict` refused (never raises)."""
    if isinstance(exc, UnicodeError):
        return INVALID_TEXT
    try:
        raw = _generic.decode(frame)
    except UnicodeError:  # in a field the typed decoder skipped
        return INVALID_TEXT
    except msgspec.DecodeError:
        return InvalidFrame("invalid JSON")
    if not isinstance(raw, dict):
        return InvalidFrame("JSON frame is not an object")
    event = raw.get("event")
    if not isinstance(event, str):
        return InvalidFrame("frame has no event")
    if event not in _KNOWN_EVENTS:
        return InvalidFrame(f"unknown event {event[:40]!r}")
    return InvalidFrame(f"malformed {event} frame: {exc}")


# --- what we send -------------------------------------------------------------------


class _Outbound(msgspec.Struct, tag_field="event", rename="camel", gc=False):
    stream_sid: str


class OutboundPayload(msgspec.Struct, gc=False):
    payload: bytes  # encoded as base64


class _Name(msgspec.Struct, gc=False):
    name: str


class OutboundMedia(_Outbound, tag="media"):
    media: OutboundPayload


class RelayOutboundPayload(msgspec.Struct, gc=False):
    payload: msgspec.Raw  # base64 text checked by the fast path, with its quotes


class RelayOutboundMedia(_Outbound, tag="media"):
    """`OutboundMedia` with the agent's base64 text relayed as is (the fast path's)."""

    media: RelayOutboundPayload


class _OutMark(_Outbound, tag="mark"):
    mark: _Name


class RelayMarkName(msgspec.Struct, gc=False):
    name: msgspec.Raw  # a JSON string written by the fast path


class RelayOutboundMark(_Outbound, tag="mark"):
    """`_OutMark` with the name written by the fast path (see `relay_parts`)."""

    mark: RelayMarkName


class _OutClear(_Outbound, tag="clear"):
    pass


_encoder = msgspec.json.Encoder()


def encode_media(stream_sid: str, payload: bytes) -> bytes:
    return _encoder.encode(OutboundMedia(stream_sid, OutboundPayload(payload)))


def encode_mark(stream_sid: str, name: str) -> bytes:
    return _encoder.encode(_OutMark(stream_sid, _Name(name)))


def encode_clear(stream_sid: str) -> bytes:
    return _encoder.encode(_OutClear(stream_sid))


# --- the bytes around what the compiled fast path relays --------------------------------
# The fast path writes the frames the encoders above write, without building and encoding
# a message a frame: each frame is the encoder's output for a Relay message with a hole
# where the relayed text goes (the base64 audio as the JSON string it arrived as, or a
# mark's number), cut at the hole once, and the text copied in between. A NUL byte is
# never in JSON that msgspec writes (it escapes control characters in strings), so the
# one the hole puts there can only be the hole.
_HOLE = b"\x00"


def _around(encoded: bytes) -> tuple[bytes, bytes]:
    head, hole, tail = encoded.partition(_HOLE)
    if not hole or _HOLE in tail:
        raise ValueError(f"not one hole in {encoded!r}")
    return head, tail


def relay_parts(stream_sid: str, mark_prefix: str) -> tuple[bytes, bytes, bytes, bytes]:
    """For one stream: the bytes around a `media` message's base64 text (a JSON string),
    and around the number of a mark named `mark_prefix` and that number."""
    if msgspec.json.encode(mark_prefix) != b'"%s"' % mark_prefix.encode():
        raise ValueError(f"mark prefix {mark_prefix!r} is not plain JSON text")
    media = RelayOutboundMedia(stream_sid, RelayOutboundPayload(msgspec.Raw(_HOLE)))
    name = msgspec.Raw(b'"' + mark_prefix.encode() + _HOLE + b'"')
    mark = RelayOutboundMark(stream_sid, RelayMarkName(name))
    return (*_around(_encoder.encode(media)), *_around(_encoder.encode(mark)))
