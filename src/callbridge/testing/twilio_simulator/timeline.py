"""The call as it was heard, on one clock, for a recording.

With ``record_timeline`` a call keeps two mu-law tracks: what the caller sent and what
their loudspeaker played. Position ``n`` of a track is ``n / 8000`` seconds after the
call's first stream started (one mu-law byte a sample), whatever else happened.
"""

from __future__ import annotations

from callbridge.testing.audio import SILENCE_BYTE

__all__ = ["place"]


def place(track: bytearray, position: int, data: bytes | memoryview) -> None:
    """Write `data` into a timeline at `position` (bytes), silence filling any gap."""
    if position > len(track):
        track += bytes([SILENCE_BYTE]) * (position - len(track))
    track[position : position + len(data)] = data
