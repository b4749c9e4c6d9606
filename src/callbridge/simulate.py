"""`callbridge simulate`: one phone call against a running server, with no phone.

The Twilio simulator plays the carrier: it calls the webhook, opens the media stream,
streams the caller's WAV at real-time pace, and records what the caller heard. With real
AssemblyAI credentials on the server this is a full conversation with your bot.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

import aiohttp

from callbridge.config import Settings
from callbridge.testing.audio import SAMPLE_RATE, read_wav_as_ulaw, write_ulaw_as_wav
from callbridge.testing.twilio_simulator import SimulatedCall, TwilioSimulator

_EXTRA_SECONDS = 10.0  # time for the agent to answer after the WAV has been spoken


class SimulationError(Exception):
    pass


async def run_simulation(
    settings: Settings,
    *,
    server_url: str,
    wav: Path | None = None,
    record: Path | None = None,
    seconds: float | None = None,
    outbound: bool = False,
) -> str:
    """Run one call and return a one-paragraph summary of it."""
    try:
        audio = read_wav_as_ulaw(wav) if wav else b""
    except (OSError, EOFError, ValueError) as exc:  # wave raises wave.Error(Exception)
        raise SimulationError(f"cannot read {wav}: {exc}") from None
    except Exception as exc:
        raise SimulationError(f"cannot read {wav} as a PCM WAV file: {exc}") from None
    duration = seconds if seconds is not None else len(audio) / SAMPLE_RATE + _EXTRA_SECONDS
    # Signatures are computed the way Twilio would, with the token the server checks.
    simulator = TwilioSimulator(
        server_url,
        auth_token=settings.auth_token or "unset",
        public_url=settings.public_url or server_url,
    )
    async with simulator:
        try:
            call = await _place(simulator, settings, audio, outbound)
        except (aiohttp.ClientError, OSError) as exc:
            raise SimulationError(f"cannot reach the server at {server_url}: {exc}") from None
        if not 200 <= call.webhook_status < 300:
            # The simulator, like Twilio, reports a failed webhook instead of raising.
            why = "; ".join(call.errors) or f"HTTP {call.webhook_status}"
            raise SimulationError(f"cannot reach the server at {server_url}: {why}")
        with contextlib.suppress(TimeoutError):
            await call.wait_ended(timeout=duration)
        if not call.ended.is_set():
            await call.hangup()
            with contextlib.suppress(TimeoutError):
                await call.wait_ended(timeout=5.0)
        if record is not None:
            write_ulaw_as_wav(record, bytes(call.heard))
    return _summary(call, record)


async def _place(
    simulator: TwilioSimulator, settings: Settings, audio: bytes, outbound: bool
) -> SimulatedCall:
    if not outbound:
        return await simulator.place_inbound_call(caller_audio=audio)
    return await simulator.answer_outbound_call(
        call_sid="CA" + secrets.token_hex(16),
        url=f"{simulator.public_url}/outbound-twiml",
        from_=settings.twilio_phone_number or "+15550001111",
        to=settings.target_phone_number or "+15552223333",
        callee_audio=audio,
    )


def _summary(call: SimulatedCall, record: Path | None) -> str:
    lines = [
        f"call {call.call_sid}: webhook HTTP {call.webhook_status}, "
        f"ended: {call.end_reason or 'still live'}",
        f"caller sent {call.media_sent} frames; heard {len(call.heard) / SAMPLE_RATE:.1f} s "
        f"of agent audio; Twilio told to clear it {call.clears} time(s)",
    ]
    lines += [f"Twilio said: {text}" for text in call.said]
    if call.warnings:
        lines.append(f"protocol warnings from the server's frames: {len(call.warnings)}")
        lines += [f"  {w}" for w in call.warnings[:5]]
    if record is not None:
        lines.append(f"recorded what the caller heard to {record}")
    return "\n".join(lines)
