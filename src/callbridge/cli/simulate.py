"""`callbridge simulate`: one phone call against a running server, with no phone.

The Twilio simulator plays the carrier: it calls the webhook, opens the media stream,
and plays the caller. Like a person, the caller waits for the greeting to finish before
talking (unless told to talk over it), then says the WAV (or a beep) at real-time pace,
and hangs up a while after. The recording is the call as it was heard: the caller on the
left channel, what Twilio played on the right, on one clock. With real AssemblyAI
credentials on the server this is a full conversation with your bot; with
`callbridge fake-agent` it is one with no account at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from callbridge.config import Settings
from callbridge.server.call_registry import new_call_id
from callbridge.testing.audio import (
    SAMPLE_RATE,
    WavError,
    read_wav_as_ulaw,
    tone,
    write_stereo_ulaw_as_wav,
)
from callbridge.testing.twilio_simulator import CallEndedError, SimulatedCall, TwilioSimulator
from callbridge.twilio import call_parameters

EXTRA_SECONDS = 10.0  # how long the caller stays on after speaking, for the agent to answer
GREETING_QUIET_SECONDS = 0.7  # silence after audio that tells the caller the greeting is over
GREETING_WAIT_SECONDS = 5.0  # with nothing heard by then, the bot waits for the caller
_ANSWER_SECONDS = 20.0  # webhook, then stream: how long until the call must have started
_GAP_SECONDS = 0.2  # playback bursts closer than this are shown as one
KEY_SECONDS = 0.3  # between two keys the caller presses
KEYS = frozenset("0123456789*#ABCD")
_BACK_SECONDS = 15.0  # after a blip: how long until the call must have its new stream


class SimulationError(Exception):
    pass


def caller_audio(wav: Path | None, beep: float | None) -> bytes:
    """What the caller says: a WAV converted to 8 kHz μ-law, or a tone (speech to the fake)."""
    if beep is not None:
        return tone(440, beep * 1000)
    if wav is None:
        return b""
    try:
        return read_wav_as_ulaw(wav)
    except WavError as exc:
        raise SimulationError(f"cannot use {wav}: {exc}") from None
    except OSError as exc:
        raise SimulationError(f"cannot read {wav}: {exc.strerror or exc}") from None


async def run_simulation(
    settings: Settings,
    *,
    server_url: str,
    audio: bytes = b"",
    record: Path | None = None,
    seconds: float | None = None,
    outbound: bool = False,
    speak_after: float | None = None,
    parameters: Mapping[str, str] | None = None,
    bot: str | None = None,
    keys: str = "",
    blip_after: float | None = None,
) -> str:
    """Run one call and return a summary of it.

    The caller says `audio` once the greeting has played, or `speak_after` seconds after
    the stream starts (over whatever is playing: a barge-in), then presses `keys` on the
    keypad; hangs up `EXTRA_SECONDS` after, or `seconds` after the call was placed. With
    `blip_after`, the stream's connection breaks that long after it started, as in a
    network blip, and Twilio carries on with the call's TwiML.
    """
    bad = sorted(set(keys) - KEYS)
    if bad:
        raise SimulationError(f"--keys: {bad[0]!r} is not a key of a phone keypad (0-9 * # A-D)")
    # Signatures are computed the way Twilio would, with the token the server checks.
    simulator = TwilioSimulator(
        server_url,
        auth_token=settings.auth_token or "unset",
        public_url=settings.public_url or server_url,
        record_timeline=True,
    )
    blips: list[tuple[float, str]] = []  # (when, what) for the timeline
    async with simulator:
        call = await _place(simulator, settings, outbound, _signed_query(settings, parameters, bot))
        _check_webhook(call, settings, server_url)
        # Owned here: cancelled once the conversation is over, whatever it came to.
        blip = asyncio.create_task(_blip(call, blip_after, blips)) if blip_after else None
        try:
            with contextlib.suppress(TimeoutError, CallEndedError):
                async with asyncio.timeout(seconds):
                    await _converse(call, audio, speak_after, keys)
        finally:
            if blip is not None:
                blip.cancel()
                await asyncio.wait([blip])
        _check_stream(call, settings, server_url)
        if not call.ended.is_set():
            await call.hangup()
        if record is not None:
            write_stereo_ulaw_as_wav(record, bytes(call.caller_track), bytes(call.played_track))
    return _summary(call, record, blips)


async def _blip(call: SimulatedCall, after: float, blips: list[tuple[float, str]]) -> None:
    """Break the stream `after` seconds into it; note when the next one started."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError, CallEndedError, RuntimeError):
        await call.wait_started(_ANSWER_SECONDS)
        await asyncio.sleep(after)  # the caller's timing, not an event
        start = call.timeline_start or loop.time()
        streams = call.streams_opened
        call.break_stream()  # RuntimeError: the stream is over already
        blips.append((loop.time() - start, "the stream broke (a network blip: no stop)"))
        await call.wait_streams(streams + 1, _BACK_SECONDS)
        blips.append((loop.time() - start, "a new stream joined the call"))


def _callee(settings: Settings) -> str:
    return settings.target_phone_number or "+15552223333"


def _signed_query(settings: Settings, parameters: Mapping[str, str] | None, bot: str | None) -> str:
    """The query `callbridge call` would sign for these parameters ('' for none)."""
    if not parameters and bot is None:
        return ""
    try:
        # A server without the token (the local demo) takes them unverified.
        query = call_parameters.encode(
            call_id=new_call_id(),
            to=_callee(settings),
            key=call_parameters.parameters_key(settings.auth_token or "unset"),
            now=time.time(),
            parameters=parameters,
            bot=bot,
        )
    except call_parameters.ParameterError as exc:
        raise SimulationError(f"--{'bot' if exc.field == 'bot' else 'param'}: {exc}") from None
    return "?" + query


async def _place(
    simulator: TwilioSimulator, settings: Settings, outbound: bool, query: str
) -> SimulatedCall:
    if not outbound:
        return await simulator.place_inbound_call()
    return await simulator.answer_outbound_call(
        call_sid="CA" + secrets.token_hex(16),
        url=f"{simulator.public_url}/outbound-twiml{query}",
        from_=settings.twilio_phone_number or "+15550001111",
        to=_callee(settings),
    )


async def _converse(
    call: SimulatedCall, audio: bytes, speak_after: float | None, keys: str
) -> None:
    await call.wait_started(_ANSWER_SECONDS)
    if speak_after is None:
        await call.wait_for_quiet(GREETING_QUIET_SECONDS, GREETING_WAIT_SECONDS)
    else:
        # The caller's own timing, not a wait for an event: talk over whatever is playing.
        await asyncio.sleep(speak_after)
    call.speak(audio)
    if keys:
        # The caller's timing again: the keys once they have finished speaking.
        await asyncio.sleep(len(audio) / SAMPLE_RATE)
        for key in keys:
            await call.send_dtmf(key)
            await asyncio.sleep(KEY_SECONDS)
        await call.wait_ended(EXTRA_SECONDS)
        return
    await call.wait_ended(len(audio) / SAMPLE_RATE + EXTRA_SECONDS)


def _signature_hint(settings: Settings) -> str:
    token = "set" if settings.twilio_auth_token is not None else "unset"
    public = settings.public_url or "unset"
    return (
        "simulate signs requests as Twilio would, with TWILIO_AUTH_TOKEN and PUBLIC_URL "
        f"from its own environment or .env (here: token {token}, PUBLIC_URL {public}), "
        "which must be the server's"
    )


def _check_webhook(call: SimulatedCall, settings: Settings, server_url: str) -> None:
    """Raise SimulationError unless the voice webhook answered with TwiML."""
    exchange = call.exchanges[0] if call.exchanges else None
    if exchange is None:
        raise SimulationError("the simulator made no request (a bug: please report it)")
    where = f"{exchange.method} {_path(exchange.url)}"
    if exchange.status is None:
        raise SimulationError(
            f"cannot reach the server at {server_url}: {_why_unreachable(exchange.error)}; "
            "is `callbridge serve` running there? (--server, or PORT)"
        )
    if exchange.status == 403:
        raise SimulationError(
            f"the server refused the call's signature (HTTP 403 on {where}): "
            + _signature_hint(settings)
        )
    if not 200 <= exchange.status < 300:
        raise SimulationError(f"the server answered HTTP {exchange.status} on {where}")
    if call.end_reason == "webhook-failed":
        raise SimulationError(f"the server's answer on {where} is not TwiML: {call.errors[-1]}")


def _check_stream(call: SimulatedCall, settings: Settings, server_url: str) -> None:
    """Raise SimulationError if the media stream could not be opened."""
    error = call.stream_error
    if error is None:
        return
    status = getattr(error, "status", None)
    if status == 403:
        raise SimulationError(
            "the server refused the media stream's signature (HTTP 403): "
            + _signature_hint(settings)
        )
    if isinstance(error, aiohttp.WSServerHandshakeError):
        raise SimulationError(f"the server refused the media stream (HTTP {status})")
    raise SimulationError(
        f"cannot open the media stream at {server_url}: {_why_unreachable(error)}"
    )


def _why_unreachable(error: BaseException | None) -> str:
    if isinstance(error, aiohttp.ClientConnectorError):
        cause = error.os_error
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        return cause.strerror or str(cause) or type(cause).__name__
    if isinstance(error, TimeoutError | aiohttp.ServerTimeoutError):
        return "no answer in time"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if error is None:
        return "no answer"
    return str(error) or type(error).__name__


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[-1].partition("/")[2]


def _spans(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start - merged[-1][1] < _GAP_SECONDS:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _summary(
    call: SimulatedCall, record: Path | None, blips: list[tuple[float, str]] | None = None
) -> str:
    lines = [
        f"call {call.call_sid}: webhook HTTP {call.webhook_status}, "
        f"ended: {call.end_reason or 'still live'}",
    ]
    events = [
        (start, f"{start:5.1f}-{end:5.1f} s  Twilio played the agent's audio")
        for start, end in _spans(call.played_spans)
    ]
    events += [
        (start, f"{start:5.1f}-{end:5.1f} s  the caller speaks") for start, end in call.spoken_spans
    ]
    events += [
        (at, f"{at:5.1f} s        Twilio cleared the agent's audio") for at in call.clear_times
    ]
    events += [
        (at, f"{at:5.1f} s        the caller presses {key}") for at, key in call.keys_pressed
    ]
    events += [(at, f"{at:5.1f} s        {what}") for at, what in blips or ()]
    if events:
        lines.append("timeline (seconds from the start of the media stream):")
        lines += [f"  {text}" for _, text in sorted(events)]
    lines.append(
        f"caller sent {call.media_sent} frames; heard {len(call.heard) / SAMPLE_RATE:.1f} s "
        f"of agent audio; Twilio told to clear it {call.clears} time(s)"
    )
    if call.streams_opened > 1:
        lines.append(f"media streams: {call.streams_opened} (one call, one conversation)")
    lines += [f"Twilio said: {text}" for text in call.said]
    if call.warnings:
        lines.append(f"protocol warnings from the server's frames: {len(call.warnings)}")
        lines += [f"  {w}" for w in call.warnings[:5]]
    if record is not None:
        lines.append(f"recorded the call to {record} (left: the caller; right: what Twilio played)")
    return "\n".join(lines)
