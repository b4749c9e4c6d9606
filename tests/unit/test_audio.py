"""The μ-law codec and WAV conversion used by the simulator and the fake agent."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callbridge.testing.audio import (
    read_wav_as_ulaw,
    silence,
    synthesize_speech,
    tone,
    ulaw_decode,
    ulaw_encode,
    ulaw_energy,
    write_ulaw_as_wav,
)


@given(st.binary(min_size=1, max_size=400))
def test_ulaw_bytes_survive_decode_then_encode(data: bytes) -> None:
    # 0x7F and 0xFF both mean zero; the encoder picks 0xFF.
    expected = bytes(0xFF if b == 0x7F else b for b in data)
    assert ulaw_encode(ulaw_decode(data)) == expected


def test_known_values() -> None:
    assert ulaw_encode([0]) == b"\xff"
    assert list(ulaw_decode(b"\x00\x80")) == [-32124, 32124]


def test_energy_tells_speech_from_silence() -> None:
    assert ulaw_energy(silence(20)) == 0
    assert ulaw_energy(tone(440, 20)) > 1000
    assert ulaw_energy(b"") == 0


def test_synthetic_speech_is_deterministic_and_timed() -> None:
    assert synthesize_speech("ab c") == synthesize_speech("ab c")
    assert synthesize_speech("ab c") != synthesize_speech("ab d")
    assert len(synthesize_speech("abcd", milliseconds_per_char=40)) == 4 * 320


@pytest.mark.parametrize(
    ("rate", "channels", "width"), [(8000, 1, 2), (44100, 2, 2), (16000, 1, 1)]
)
def test_wav_of_any_rate_becomes_8k_mono(
    tmp_path: Path, rate: int, channels: int, width: int
) -> None:
    path = tmp_path / "in.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        if width == 2:
            wav.writeframes(struct.pack(f"<{rate * channels}h", *([1000] * rate * channels)))
        else:
            wav.writeframes(bytes([200]) * rate * channels)
    audio = read_wav_as_ulaw(path)
    assert abs(len(audio) - 8000) <= 1  # one second
    assert ulaw_energy(audio) > 0


def test_wav_round_trip(tmp_path: Path) -> None:
    data = tone(300, 100)
    write_ulaw_as_wav(tmp_path / "x.wav", data)
    assert read_wav_as_ulaw(tmp_path / "x.wav") == data
