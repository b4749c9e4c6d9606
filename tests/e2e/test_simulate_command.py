"""`callbridge simulate` against a running server: a WAV in, what the caller heard out."""

from __future__ import annotations

import asyncio
import math
import os
import struct
import sys
import wave
from pathlib import Path

from callbridge.bot import bot
from callbridge.testing.audio import read_wav_as_ulaw
from callbridge.testing.fake_agent import FakeVoiceAgent
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, RunningServer


def write_stereo_wav(path: Path, seconds: float, rate: int = 16000) -> None:
    """One second of silence (the greeting plays), then a tone the agent hears as speech."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        frames = bytearray(4 * rate)
        for i in range(int(seconds * rate)):
            sample = int(8000 * math.sin(2 * math.pi * 440 * i / rate))
            frames += struct.pack("<hh", sample, sample)
        wav.writeframes(bytes(frames))


async def test_simulate_streams_a_wav_and_records_what_was_heard(
    server: RunningServer, fake_agent: FakeVoiceAgent, tmp_path: Path
) -> None:
    source, heard = tmp_path / "in.wav", tmp_path / "heard.wav"
    write_stereo_wav(source, 0.3)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PUBLIC_URL": PUBLIC_URL,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callbridge.cli",
        "simulate",
        "--wav",
        str(source),
        "--record",
        str(heard),
        "--server",
        server.url,
        "--seconds",
        "4",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    summary = out.decode()
    assert "webhook HTTP 200" in summary
    assert f"recorded what the caller heard to {heard}" in summary
    session = await fake_agent.wait_for_session()
    # The 16 kHz stereo tone arrived as 8 kHz mono μ-law, and was heard as speech.
    await session.wait_sent("input.speech.started")
    await session.wait_sent(lambda e: e["type"] == "reply.done" and e["status"] == "interrupted")
    recorded = read_wav_as_ulaw(heard)
    # The caller spoke over the greeting (a barge-in), then heard the answer to the turn.
    assert recorded[:4000] == fake_agent.reply_audio_for(bot.greeting or "")[:4000]
    assert fake_agent.reply_audio_for("I heard you.") in recorded
    assert "clear it 1 time(s)" in summary or "clear it 2 time(s)" in summary
    assert session.end_reason == "session.end"


async def test_simulate_reports_an_unreachable_server(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callbridge.cli",
        "simulate",
        "--server",
        "http://127.0.0.1:9",
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "cannot reach the server at http://127.0.0.1:9" in err.decode()
