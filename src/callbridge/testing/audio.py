"""Audio for the test doubles: G.711 codecs, WAV conversion, synthetic speech.

The bridge itself never decodes audio; only the simulator and the fake agent do, to
detect speech, to turn WAV files into phone audio and back, and to make recognisable
"voices" whose bytes a test can predict exactly. Phone audio is 8 kHz mu-law; the A-law
and 24 kHz PCM16 conversions serve the fake agent's other output formats.
"""

from __future__ import annotations

import math
import sys
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


def _alaw_encode_sample(sample: int) -> int:
    value = sample >> 3
    if value >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        value = -value - 1
    for segment, end in enumerate((0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)):
        if value <= end:
            shift = 1 if segment < 2 else segment
            return ((segment << 4) | ((value >> shift) & 0x0F)) ^ mask
    return 0x7F ^ mask


def _alaw_decode_sample(byte: int) -> int:
    byte ^= 0x55
    value = (byte & 0x0F) << 4
    segment = (byte & 0x70) >> 4
    if segment == 0:
        value += 8
    else:
        value = (value + 0x108) << (segment - 1)
    return value if byte & 0x80 else -value


_ALAW_DECODE_TABLE: tuple[int, ...] = tuple(_alaw_decode_sample(b) for b in range(256))
_ALAW_ABS_TABLE: tuple[int, ...] = tuple(abs(s) for s in _ALAW_DECODE_TABLE)
_ULAW_TO_ALAW = bytes(_alaw_encode_sample(s) for s in _DECODE_TABLE)


def alaw_encode(samples: array[int] | list[int]) -> bytes:
    """Signed 16-bit linear samples to A-law bytes."""
    return bytes(_alaw_encode_sample(s) for s in samples)


def alaw_decode(data: bytes) -> array[int]:
    """A-law bytes to signed 16-bit linear samples."""
    return array("h", (_ALAW_DECODE_TABLE[b] for b in data))


def alaw_energy(data: bytes) -> float:
    """Mean absolute amplitude of an A-law chunk, on the same scale as `ulaw_energy`."""
    if not data:
        return 0.0
    return sum(map(_ALAW_ABS_TABLE.__getitem__, data)) / len(data)


def ulaw_to_alaw(data: bytes) -> bytes:
    """Mu-law bytes to the A-law bytes of the same samples."""
    return data.translate(_ULAW_TO_ALAW)


def ulaw_to_pcm24k(data: bytes) -> bytes:
    """Mu-law to 24 kHz little-endian PCM16 by sample-and-hold (each sample three times).

    Crude, but exact and predictable for tests.
    """
    wide = array("h", (s for s in ulaw_decode(data) for _ in range(3)))
    if sys.byteorder == "big":
        wide.byteswap()
    return wide.tobytes()


def pcm16_energy(data: bytes) -> float:
    """Mean absolute amplitude of a little-endian PCM16 chunk; an odd last byte is ignored."""
    samples = array("h")
    samples.frombytes(data[: len(data) - len(data) % 2])
    if sys.byteorder == "big":
        samples.byteswap()
    return sum(map(abs, samples)) / len(samples) if samples else 0.0


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


class WavError(ValueError):
    """A file that cannot be read as PCM WAV audio; the message says why."""


_WAV_FORMATS = {
    3: "32-bit floating-point samples",
    6: "A-law samples",
    7: "mu-law samples",
    0x11: "IMA ADPCM compression",
    0x55: "MP3 compression",
    0xFFFE: "the WAVE_FORMAT_EXTENSIBLE header",
}


def read_wav_as_ulaw(path: str | Path) -> bytes:
    """Any PCM WAV (8/16/24/32-bit, any rate, any channels) to 8 kHz mono mu-law.

    Raises `WavError` saying what is wrong with a file that is not one, and OSError when
    the file cannot be opened.
    """
    with open(path, "rb") as file:
        head = file.read(12)
        if not head:
            raise WavError("the file is empty")
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise WavError("not a WAV file (it does not start with a RIFF/WAVE header)")
        file.seek(0)
        try:
            with wave.open(file, "rb") as wav:
                channels = wav.getnchannels()
                width = wav.getsampwidth()
                rate = wav.getframerate()
                raw = wav.readframes(wav.getnframes())
        except EOFError:
            raise WavError("the WAV file is cut short (its header is incomplete)") from None
        except wave.Error as exc:
            raise WavError(_wave_error(str(exc))) from None
    if width not in (1, 2, 3, 4):
        raise WavError(f"unsupported WAV sample width: {width} bytes")
    if rate <= 0 or channels <= 0:
        raise WavError(f"the WAV header is invalid ({channels} channels at {rate} Hz)")
    if len(raw) < width * channels:
        raise WavError("the WAV file holds no audio")
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


def _wave_error(message: str) -> str:
    if message.startswith("unknown format: "):
        code = int(message.rpartition(" ")[2])
        what = _WAV_FORMATS.get(code, f"format code {code}")
        return (
            f"the WAV file uses {what}; only integer PCM is read "
            "(convert it, e.g. `sox in.wav -e signed-integer -b 16 out.wav`)"
        )
    if "chunk missing" in message:
        return "the WAV file is cut short (its fmt or data chunk is missing)"
    return f"not a readable WAV file: {message}"


def write_ulaw_as_wav(path: str | Path, data: bytes) -> None:
    """Mu-law bytes to a 16-bit 8 kHz mono WAV any audio player opens."""
    samples = ulaw_decode(data)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(samples.tobytes())


def write_stereo_ulaw_as_wav(path: str | Path, left: bytes, right: bytes) -> None:
    """Two mu-law tracks to a 16-bit 8 kHz stereo WAV; the shorter ends in silence."""
    length = max(len(left), len(right))
    pad = bytes([SILENCE_BYTE])
    left_samples = ulaw_decode(left + pad * (length - len(left)))
    right_samples = ulaw_decode(right + pad * (length - len(right)))
    frames = array("h", bytes(4 * length))
    frames[0::2] = left_samples
    frames[1::2] = right_samples
    if sys.byteorder == "big":
        frames.byteswap()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(frames.tobytes())


def read_stereo_wav_as_ulaw(path: str | Path) -> tuple[bytes, bytes]:
    """The two channels of a 16-bit stereo WAV (as written above) as mu-law tracks."""
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 2 or wav.getsampwidth() != 2:
            raise WavError("expected a 16-bit stereo WAV")
        samples = _pcm_to_int16(wav.readframes(wav.getnframes()), 2)
    return ulaw_encode(samples[0::2]), ulaw_encode(samples[1::2])


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
