"""G.711 mu-law audio for the test doubles: codec, WAV conversion, synthetic speech.

The bridge itself never decodes audio; only the simulator and the fake agent do, to
detect speech, to turn WAV files into phone audio and back, and to make recognisable
"voices" whose bytes a test can predict exactly.
"""

from __future__ import annotations

import math
import wave
from array import array
from pathlib import Path

SAMPLE_RATE = 8000
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law, what Twilio sends per media message
SILENCE_BYTE = 0xFF  # mu-law encoding of 0

_BIAS = 0x84
_CLIP = 32635


def _encode_sample(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sign else sample, _CLIP) + _BIAS
    exponent = max(0, min(7, (magnitude >> 7).bit_length() - 1))
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _decode_sample(byte: int) -> int:
    u = ~byte & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = (((u & 0x0F) << 3) + _BIAS) << exponent
    magnitude -= _BIAS
    return -magnitude if u & 0x80 else magnitude


_DECODE_TABLE: tuple[int, ...] = tuple(_decode_sample(b) for b in range(256))
_ABS_TABLE: tuple[int, ...] = tuple(abs(s) for s in _DECODE_TABLE)


def ulaw_encode(samples: array[int] | list[int]) -> bytes:
    """Signed 16-bit linear samples to mu-law bytes."""
    return bytes(_encode_sample(s) for s in samples)


def ulaw_decode(data: bytes) -> array[int]:
    """Mu-law bytes to signed 16-bit linear samples."""
    return array("h", (_DECODE_TABLE[b] for b in data))


def ulaw_energy(data: bytes) -> float:
    """Mean absolute amplitude of a mu-law chunk (0 for digital silence, ~32000 max)."""
    if not data:
        return 0.0
    return sum(map(_ABS_TABLE.__getitem__, data)) / len(data)


def silence(milliseconds: float) -> bytes:
    return bytes([SILENCE_BYTE]) * int(SAMPLE_RATE * milliseconds / 1000)


def tone(frequency: float, milliseconds: float, amplitude: int = 8000) -> bytes:
    """A sine tone as mu-law: loud enough to count as speech for the fake agent."""
    n = int(SAMPLE_RATE * milliseconds / 1000)
    step = 2 * math.pi * frequency / SAMPLE_RATE
    return ulaw_encode([int(amplitude * math.sin(step * i)) for i in range(n)])


def synthesize_speech(text: str, milliseconds_per_char: float = 40.0) -> bytes:
    """Deterministic stand-in for text-to-speech: one short tone per character.

    Equal texts give equal bytes, so a test can compare what a caller heard with what a
    fake agent "said" byte for byte. Spaces are short silences, like pauses between words.
    """
    parts = []
    for char in text:
        if char.isspace():
            parts.append(silence(milliseconds_per_char))
        else:
            parts.append(tone(300 + (ord(char) % 40) * 25, milliseconds_per_char))
    return b"".join(parts)


def read_wav_as_ulaw(path: str | Path) -> bytes:
    """Any PCM WAV (8/16/24/32-bit, any rate, any channels) to 8 kHz mono mu-law."""
    with wave.open(str(path), "rb") as wav:
        channels = wav.getnchannels()
        width = wav.getsampwidth()
        rate = wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    if width not in (1, 2, 3, 4):
        raise ValueError(f"unsupported WAV sample width: {width} bytes")
    samples = _pcm_to_int16(raw, width)
    if channels > 1:
        samples = array(
            "h",
            (
                int(sum(samples[i : i + channels]) / channels)
                for i in range(0, len(samples) - channels + 1, channels)
            ),
        )
    return ulaw_encode(_resample(samples, rate, SAMPLE_RATE))


def write_ulaw_as_wav(path: str | Path, data: bytes) -> None:
    """Mu-law bytes to a 16-bit 8 kHz mono WAV any audio player opens."""
    samples = ulaw_decode(data)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(samples.tobytes())


def _pcm_to_int16(raw: bytes, width: int) -> array[int]:
    if width == 1:  # unsigned 8-bit
        return array("h", ((b - 128) << 8 for b in raw))
    if width == 2:
        samples = array("h")
        samples.frombytes(raw[: len(raw) - len(raw) % 2])
        return samples
    return array(
        "h",
        (
            int.from_bytes(raw[i : i + width], "little", signed=True) >> (8 * (width - 2))
            for i in range(0, len(raw) - width + 1, width)
        ),
    )


def _resample(samples: array[int], source_rate: int, target_rate: int) -> array[int]:
    """Linear interpolation: plenty for speech destined for a phone line."""
    if source_rate == target_rate or not samples:
        return samples
    ratio = source_rate / target_rate
    count = int(len(samples) / ratio)
    last = len(samples) - 1
    out = array("h")
    for i in range(count):
        pos = i * ratio
        j = int(pos)
        frac = pos - j
        a = samples[j]
        b = samples[min(j + 1, last)]
        out.append(int(a + (b - a) * frac))
    return out
