"""The audio formats a Voice Agent session may choose, seen from the fake.

The fake thinks in 8 kHz mu-law: its voice is made as mu-law and converted to the
session's output encoding, and turn detection measures the energy of the caller's audio
in whatever encoding they send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from callbridge.testing import audio

__all__ = ["FORMATS", "PCM", "PCM_CHUNK_BYTES", "AudioFormat", "energy", "from_ulaw"]

PCM_CHUNK_BYTES: Final = 480  # the live service's reply.audio size for PCM: 10 ms at 24 kHz


@dataclass(frozen=True, slots=True)
class AudioFormat:
    encoding: str
    bytes_per_second: int
    bytes_per_8k_sample: int  # output bytes one 8 kHz mu-law sample turns into


FORMATS: Final[dict[str, AudioFormat]] = {
    "audio/pcmu": AudioFormat("audio/pcmu", 8000, 1),
    "audio/pcma": AudioFormat("audio/pcma", 8000, 1),
    "audio/pcm": AudioFormat("audio/pcm", 48000, 6),
}
PCM: Final = FORMATS["audio/pcm"]  # the default, and the fallback for unknown encodings

_ENERGY_CACHE: dict[bytes, float] = {}
_ENERGY_CACHE_LIMIT: Final = 4096


def energy(data: bytes, encoding: str) -> float:
    """Mean absolute amplitude (16-bit scale) of one input chunk."""
    if encoding == "audio/pcmu":
        # Memoised: ulaw_energy is a Python loop, and test audio (tones, silence,
        # synthetic speech) repeats the same frames over hundreds of calls.
        found = _ENERGY_CACHE.get(data)
        if found is None:
            found = audio.ulaw_energy(data)
            if len(_ENERGY_CACHE) >= _ENERGY_CACHE_LIMIT:
                _ENERGY_CACHE.clear()
            _ENERGY_CACHE[data] = found
        return found
    if encoding == "audio/pcma":
        return audio.alaw_energy(data)
    return audio.pcm16_energy(data)


def from_ulaw(data: bytes, encoding: str) -> bytes:
    """Mu-law audio in ``encoding``."""
    if encoding == "audio/pcmu":
        return data
    if encoding == "audio/pcma":
        return audio.ulaw_to_alaw(data)
    return audio.ulaw_to_pcm24k(data)
