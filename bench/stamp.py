"""Timestamps and sequence numbers carried inside the audio bytes.

The bridge forwards a payload's audio bytes unchanged (it decodes the base64 and encodes
the same bytes again), so whatever we put into them comes out intact on the far side.
Every frame starts with a 29-byte header; each byte carries one hex digit as a μ-law value
0xE0-0xEF, which decodes to a quiet sample (a few hundred out of 32767), so stamped frames
still sound like silence.

    [kind: 1 digit][stream: 4 digits][seq: 8 digits][send time, monotonic ns: 16 digits]

`time.monotonic_ns()` is CLOCK_MONOTONIC, one clock for every process on the machine.
"""

from __future__ import annotations

import binascii

HEADER_BYTES = 29
# Base64 characters that cover the header: 30 bytes encode to exactly 40 characters.
HEADER_B64_CHARS = 40

KIND_QUIET = 1  # a caller frame outside a speech burst, or agent speech
KIND_SPEECH = 2  # a caller frame inside a speech burst (the fake agent's turn detector)
KIND_LATE = 3  # agent audio sent after a barge-in: the bridge must drop it

_HEX = b"0123456789abcdef"
_ENCODE = bytes.maketrans(_HEX, bytes(range(0xE0, 0xF0)))
_DECODE = bytes.maketrans(bytes(range(0xE0, 0xF0)), _HEX)


def header(kind: int, stream: int, seq: int, sent_ns: int) -> bytes:
    """The 29 header bytes (all in 0xE0-0xEF)."""
    text = b"%01x%04x%08x%016x" % (kind, stream & 0xFFFF, seq & 0xFFFFFFFF, sent_ns)
    return text.translate(_ENCODE)


def read(payload: str) -> tuple[int, int, int, int] | None:
    """(kind, stream, seq, sent_ns) from a base64 payload, or None if it carries no header.

    Only the first 40 base64 characters are decoded: cheap on the receiving side.
    """
    try:
        raw = binascii.a2b_base64(payload[:HEADER_B64_CHARS])
    except (binascii.Error, ValueError):
        return None
    digits = raw[:HEADER_BYTES].translate(_DECODE)
    try:
        return (
            int(digits[0:1], 16),
            int(digits[1:5], 16),
            int(digits[5:13], 16),
            int(digits[13:29], 16),
        )
    except ValueError:  # a byte outside 0xE0-0xEF: not one of our frames
        return None


def b64(audio: bytes) -> bytes:
    return binascii.b2a_base64(audio, newline=False)
