"""`callbridge simulate` against a running server: a WAV in, the call as heard out."""

from __future__ import annotations

import math
import os
import struct
import wave
from pathlib import Path

import pytest

from callbridge.bot import bot
from callbridge.bridge.keypad import entry_instructions
from callbridge.testing.audio import read_stereo_wav_as_ulaw, ulaw_decode, ulaw_energy
from callbridge.testing.fake_agent import FakeVoiceAgent
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, RunningServer
from tests.helpers.server_process import run_command

GREETING = bot.greeting or ""


def write_stereo_wav(path: Path, seconds: float, rate: int = 16000) -> None:
    """A tone the agent hears as speech, as 16 kHz stereo."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        frames = bytearray()
        for i in range(int(seconds * rate)):
            sample = int(8000 * math.sin(2 * math.pi * 440 * i / rate))
            frames += struct.pack("<hh", sample, sample)
        wav.writeframes(bytes(frames))


async def simulate(
    folder: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run `callbridge simulate` in `folder` (no .env there); its status, stdout, stderr."""
    env = {"PATH": os.environ.get("PATH", ""), **(env or {})}
    return await run_command("simulate", *args, env=env, cwd=folder, timeout=60)


SIGNED = {"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_URL": PUBLIC_URL}


def first_loud(track: bytes, start: int = 0) -> int:
    """The offset of the first loud 20 ms of a μ-law track (or its length)."""
    for i in range(start, len(track), 160):
        if ulaw_energy(track[i : i + 160]) > 1000:
            return i
    return len(track)


def decoded(track: bytes) -> bytes:
    """Linear samples: μ-law has two zeros, which a WAV round trip makes one."""
    return ulaw_decode(track).tobytes()


async def test_the_caller_waits_for_the_greeting_and_the_recording_is_the_call_as_heard(
    server: RunningServer, fake_agent: FakeVoiceAgent, tmp_path: Path
) -> None:
    source, heard = tmp_path / "in.wav", tmp_path / "heard.wav"
    write_stereo_wav(source, 0.5)
    status, summary, err = await simulate(
        tmp_path,
        "--wav",
        str(source),
        "--record",
        str(heard),
        "--server",
        server.url,
        "--seconds",
        "8",
        env=SIGNED,
    )
    assert status == 0, err
    assert "webhook HTTP 200" in summary
    assert f"recorded the call to {heard}" in summary
    session = await fake_agent.wait_for_session()
    greeting_done = await session.wait_sent("reply.done")
    assert greeting_done["status"] == "completed"  # nobody talked over it
    # The caller's turn came after the greeting, and was answered.
    started = await session.wait_sent("input.speech.started")
    assert session.sent.index(started) > session.sent.index(greeting_done)
    await session.wait_sent(lambda e: e.get("text") == "I heard you.")
    caller, played = read_stereo_wav_as_ulaw(heard)
    # Twilio's channel: the greeting in full, then the answer, with silence between.
    greeting = fake_agent.reply_audio_for(GREETING)
    answer = fake_agent.reply_audio_for("I heard you.")
    at = decoded(played).find(decoded(greeting)) // 2
    assert at >= 0
    greeting_end = at + len(greeting)
    # The caller's channel: quiet while the greeting played, then the WAV's tone.
    spoke = first_loud(caller)
    assert spoke >= greeting_end
    assert ulaw_energy(caller[spoke : spoke + 3200]) > 1000  # 0.4 s of the 0.5 s tone
    answered = decoded(played).find(decoded(answer), 2 * spoke) // 2
    assert answered > spoke
    assert first_loud(played, greeting_end) >= spoke  # nothing played while they spoke
    assert "the caller speaks" in summary


async def test_speak_after_talks_over_the_greeting_and_the_recording_shows_the_clear(
    server: RunningServer, fake_agent: FakeVoiceAgent, tmp_path: Path
) -> None:
    source, heard = tmp_path / "in.wav", tmp_path / "heard.wav"
    write_stereo_wav(source, 0.5)
    status, summary, err = await simulate(
        tmp_path,
        "--wav",
        str(source),
        "--speak-after",
        "0.8",
        "--record",
        str(heard),
        "--server",
        server.url,
        "--seconds",
        "5",
        env=SIGNED,
    )
    assert status == 0, err
    session = await fake_agent.wait_for_session()
    cut = await session.wait_sent(lambda e: e["type"] == "reply.done")
    assert cut["status"] == "interrupted"  # a barge-in on the greeting
    assert "Twilio cleared the agent's audio" in summary
    caller, played = read_stereo_wav_as_ulaw(heard)
    greeting = fake_agent.reply_audio_for(GREETING)
    spoke = first_loud(caller)
    assert 0 < spoke < len(greeting)
    # Twilio played the start of the greeting until the clear, then silence until the
    # answer to the caller's turn: the rest of the greeting was never heard.
    assert decoded(greeting) not in decoded(played)
    start = decoded(played).find(decoded(greeting[:800])) // 2
    assert 0 <= start < spoke
    await session.wait_sent(lambda e: e.get("text") == "I heard you.")
    answered = decoded(played).find(decoded(fake_agent.reply_audio_for("I heard you."))) // 2
    stopped = first_quiet(played, spoke)
    assert spoke < stopped < answered
    assert ulaw_energy(played[stopped:answered]) < 50


def first_quiet(track: bytes, start: int) -> int:
    """The offset of the first 100 ms of silence at or after `start`."""
    for i in range(start, len(track), 160):
        if ulaw_energy(track[i : i + 800]) < 50:
            return i
    return len(track)


async def test_a_signature_mismatch_says_which_settings_must_match(
    server: RunningServer, tmp_path: Path
) -> None:
    status, _, err = await simulate(
        tmp_path,
        "--server",
        server.url,
        env={"TWILIO_AUTH_TOKEN": "not-the-servers-token", "PUBLIC_URL": PUBLIC_URL},
    )
    assert status == 1
    assert err.count("\n") == 1, err
    assert "refused the call's signature (HTTP 403 on POST /twiml)" in err
    assert "TWILIO_AUTH_TOKEN and PUBLIC_URL" in err
    assert f"PUBLIC_URL {PUBLIC_URL}" in err
    assert "not-the-servers-token" not in err  # never print the secret
    assert "cannot reach" not in err


async def test_simulate_reports_an_unreachable_server_in_one_line(tmp_path: Path) -> None:
    status, _, err = await simulate(tmp_path, "--server", "http://127.0.0.1:9")
    assert status == 1
    assert err == (
        "callbridge: cannot reach the server at http://127.0.0.1:9: connection refused; "
        "is `callbridge serve` running there? (--server, or PORT)\n"
    )


def float_wav(path: Path) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(4)
        wav.setframerate(8000)
        wav.writeframes(b"\0" * 400)
    data = bytearray(path.read_bytes())
    data[20:22] = struct.pack("<H", 3)  # WAVE_FORMAT_IEEE_FLOAT
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty"),
        (b"hello, this is text\n", "not a WAV file (it does not start with a RIFF/WAVE header)"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "the WAV file is cut short"),
        (None, "the WAV file uses 32-bit floating-point samples; only integer PCM is read"),
    ],
    ids=["empty", "text", "truncated", "float"],
)
async def test_an_unreadable_wav_is_refused_with_the_reason(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "caller.wav"
    if content is None:
        float_wav(path)
    else:
        path.write_bytes(content)
    # No server is needed: the WAV is read before anything is called.
    status, _, err = await simulate(tmp_path, "--wav", str(path), "--server", "http://127.0.0.1:9")
    assert status == 1
    assert err.startswith(f"callbridge: cannot use {path}: {reason}"), err
    assert err.count("\n") == 1, err


async def test_keys_pressed_reach_the_agent_and_show_in_the_timeline(
    server: RunningServer, fake_agent: FakeVoiceAgent, tmp_path: Path
) -> None:
    status, summary, err = await simulate(
        tmp_path, "--keys", "42#", "--server", server.url, "--seconds", "6", env=SIGNED
    )
    assert status == 0, err
    session = await fake_agent.wait_for_session()
    entry = await session.wait_for("reply.create")
    assert entry["instructions"] == entry_instructions("42")
    pressed = [line.split("presses ")[1] for line in summary.splitlines() if "presses" in line]
    assert pressed == ["4", "2", "#"]


async def test_a_key_no_keypad_has_is_refused(tmp_path: Path) -> None:
    status, _, err = await simulate(tmp_path, "--keys", "12x", "--server", "http://127.0.0.1:9")
    assert status == 1
    assert err == "callbridge: --keys: 'x' is not a key of a phone keypad (0-9 * # A-D)\n"


async def test_a_blip_breaks_the_stream_and_the_call_comes_back_on_a_new_one(
    server: RunningServer, fake_agent: FakeVoiceAgent, tmp_path: Path
) -> None:
    status, summary, err = await simulate(
        tmp_path, "--blip-after", "0.5", "--server", server.url, "--seconds", "5", env=SIGNED
    )
    assert status == 0, err
    assert "the stream broke (a network blip: no stop)" in summary
    assert "a new stream joined the call" in summary
    assert "media streams: 2 (one call, one conversation)" in summary
    assert len(fake_agent.sessions) == 1  # the same agent session on both streams
