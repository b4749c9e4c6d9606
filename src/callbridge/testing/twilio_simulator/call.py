"""One simulated phone call: what the caller does, what they hear, the TwiML it runs.

A call runs the TwiML its webhook returns, verb by verb (``<Say>``, ``<Pause>``,
``<Play>`` (``digits`` recorded), ``<Hangup>``, ``<Reject>``, ``<Redirect>``, ``<Dial>``
(the outcome the test sets; the answering party's noun ``url``; the ``action``),
``<Connect><Stream>`` with ``<Parameter>`` and ``action``), the way Twilio documents them at
https://www.twilio.com/docs/voice/twiml. Every wait on a call wakes on what it waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp

from callbridge.testing.audio import FRAME_BYTES
from callbridge.testing.twilio_simulator.stream import MediaStream
from callbridge.testing.twilio_simulator.twiml import local_tag, parse_twiml

if TYPE_CHECKING:
    from callbridge.testing.twilio_simulator.simulator import TwilioSimulator

__all__ = [
    "API_VERSION",
    "CallEndedError",
    "HttpExchange",
    "SimulatedCall",
    "StatusHook",
    "new_sid",
]

API_VERSION = "2010-04-01"

# A hook awaited with (call, CallStatus): "in-progress" when the call is answered and
# "completed" once it is over. FakeTwilioRest turns these into status callbacks.
StatusHook = Callable[["SimulatedCall", str], Awaitable[None]]

# Caller and callee location fields: present on every webhook, often empty on real calls.
_GEO_FIELDS = tuple(
    prefix + suffix
    for prefix in ("Called", "Caller", "From", "To")
    for suffix in ("City", "Country", "State", "Zip")
)
_WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)


def new_sid(prefix: str) -> str:
    """A Twilio SID: a two-letter prefix and 32 hex digits."""
    return prefix + secrets.token_hex(16)


class CallEndedError(RuntimeError):
    """A wait on a `SimulatedCall` can no longer succeed because the call is over."""


@dataclass(slots=True)
class HttpExchange:
    """One HTTP request the simulator made for a call (webhook, redirect, action...)."""

    url: str
    method: str
    params: dict[str, str]
    status: int | None  # None: no HTTP answer at all (connection refused, timeout)
    body: str
    error: BaseException | None = None  # why there was no answer


class SimulatedCall:
    """One phone call as the caller (or, for outbound calls, the callee) experiences it.

    `end_reason` once `ended` is set:

    * ``"server-closed"``: the server closed the stream and nothing ran after ``<Connect>``;
    * ``"stream-failed"``: the stream's WebSocket upgrade failed, nothing ran after it;
    * ``"stream-broken"``: the stream's connection broke (`break_stream`), nothing ran
      after it;
    * ``"hangup-verb"``: ``<Hangup>`` or ``<Reject>``;
    * ``"twiml-ended"``: the verbs ran out (e.g. a ``<Say>`` after the stream);
    * ``"redirected"``: the TwiML given to `redirect` (a REST update) ran out;
    * ``"caller-hangup"``: `hangup` (also a REST update with ``Status=completed``);
    * ``"webhook-failed"``: a TwiML request failed or answered something not TwiML;
    * ``"simulator-closed"`` / ``"simulator-error"``: torn down by `close` / a simulator bug.
    """

    def __init__(
        self,
        simulator: TwilioSimulator,
        call_sid: str,
        from_: str,
        to: str,
        direction: str,
        extra_params: dict[str, str] | None,
    ) -> None:
        self.simulator = simulator
        self.call_sid = call_sid
        self.from_ = from_
        self.to = to
        self.direction = direction
        self.stream_sid: str | None = None
        self.webhook_status = 0
        self.twiml = ""
        self.stream_url: str | None = None
        self.custom_parameters: dict[str, str] = {}
        self.said: list[str] = []
        self.dialed: list[str] = []
        # What a <Dial> does, for the test to set before it runs: the DialCallStatus
        # ("completed": the person answered, talked, hung up; "busy", "no-answer",
        # "failed", "canceled": nobody took the call), and how long an answered person
        # stays on the line.
        self.dial_outcome = "completed"
        self.dial_talk_seconds = 0.0
        self.dials: list[dict[str, str]] = []  # each <Dial>: its attributes and outcome
        self.digits_played: list[str] = []  # each <Play digits>, in order
        self.streams_opened = 0  # <Connect><Stream>s that reached the server
        self.heard = bytearray()
        self.received: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []  # why something failed: webhook, handshake, bad TwiML
        self.stream_error: BaseException | None = None  # why the last stream did not open
        self.exchanges: list[HttpExchange] = []
        self.marks: list[tuple[str, bool]] = []
        # When the last stream ended: bytes of the server's audio still queued, unplayed
        # (0: everything sent had played, a goodbye included). None: no stream ended yet.
        self.unplayed_at_stream_end: int | None = None
        self.clears = 0
        self.media_sent = 0
        # With record_timeline: the call on one clock, 8000 mu-law bytes a second from the
        # start of its first stream; times in seconds on the same clock.
        self.caller_track = bytearray()  # every frame the caller sent, speech or silence
        self.played_track = bytearray()  # what the loudspeaker played; silence elsewhere
        self.played_spans: list[tuple[float, float]] = []  # while something played
        self.spoken_spans: list[tuple[float, float]] = []  # while audio given to speak() went
        self.clear_times: list[float] = []
        self.keys_pressed: list[tuple[float, str]] = []  # (time, key) of each dtmf sent
        self.timeline_start: float | None = None  # loop time of the clock's zero
        self._played_end = -(FRAME_BYTES + 1)  # where the last burst of playback ended
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self.close_code: int | None = None
        self._extra_params = dict(extra_params or {})
        self._speech = bytearray()
        self._stream: MediaStream | None = None
        self._runner: asyncio.Task[None] | None = None
        self._interrupting: str | None = None
        self._status_hook: StatusHook | None = None
        self._last_doc_url = simulator.public_url + "/"
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return f"<SimulatedCall {self.call_sid} {self.direction} end_reason={self.end_reason}>"

    # -- what the caller does --------------------------------------------------------------

    def speak(self, audio: bytes) -> None:
        """Queue caller audio; the 20 ms sender sends it instead of silence until exhausted."""
        self._speech += audio

    async def send_dtmf(self, digit: str) -> None:
        stream = self._require_stream()
        now = asyncio.get_running_loop().time()
        self.keys_pressed.append((now - (self.timeline_start or now), digit))
        await stream.send_numbered(
            {"event": "dtmf", "streamSid": stream.stream_sid},
            "dtmf",
            {"track": "inbound_track", "digit": digit},
        )

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as-is (no sequence number consumed): for malformed-frame tests."""
        stream = self._require_stream()
        if isinstance(frame, bytes):
            await stream.ws.send_bytes(frame)
        else:
            await stream.ws.send_str(frame)

    async def hangup(self) -> None:
        """The caller hangs up: ``stop`` on the stream, socket closed, nothing more runs."""
        if self.ended.is_set():
            return
        await self._interrupt("caller-hangup")
        self._finish("caller-hangup")

    def break_stream(self) -> None:
        """The stream's connection breaks (no ``stop``): the call goes on with the TwiML
        after ``</Connect>``, as Twilio's does."""
        stream = self._require_stream()
        stream.break_off()

    async def redirect(self, twiml: str) -> None:
        """What a REST call update with ``Twiml`` does: ``stop``, close, run the new TwiML."""
        if self.ended.is_set():
            raise CallEndedError(f"call {self.call_sid} is over ({self.end_reason})")
        await self._interrupt("redirected")
        self.twiml = twiml
        self._start_runner(self._execute(twiml, self._last_doc_url, "redirected"))

    async def redirect_url(self, url: str, method: str = "POST") -> None:
        """A REST call update with ``Url``: ``stop``, close, fetch the URL, run its TwiML."""
        if self.ended.is_set():
            raise CallEndedError(f"call {self.call_sid} is over ({self.end_reason})")
        await self._interrupt("redirected")
        self._start_runner(self._fetch_and_execute(url, method, "redirected"))

    # -- waiting ---------------------------------------------------------------------------

    async def wait_heard(self, nbytes: int, timeout: float = 5.0) -> None:
        await self._wait(lambda: len(self.heard) >= nbytes, timeout, f"{nbytes} bytes heard")

    async def wait_heard_ending(self, audio: bytes, timeout: float = 5.0) -> None:
        """Until the last thing the caller heard is `audio` (a whole reply, say)."""
        await self._wait(
            lambda: self.heard.endswith(audio), timeout, f"{len(audio)} bytes heard last"
        )

    async def wait_received(
        self, predicate: Callable[[dict[str, Any]], bool] | str, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first frame from the server matching `predicate` (an event name or a test)."""
        matches: Callable[[dict[str, Any]], bool]
        if isinstance(predicate, str):
            name = predicate

            def matches(frame: dict[str, Any]) -> bool:
                return frame.get("event") == name
        else:
            matches = predicate
        scanned = 0
        found: list[dict[str, Any]] = []

        def condition() -> bool:
            nonlocal scanned
            received = self.received
            while scanned < len(received):
                frame = received[scanned]
                scanned += 1
                if matches(frame):
                    found.append(frame)
                    return True
            return False

        await self._wait(condition, timeout, f"a received frame matching {predicate!r}")
        return found[0]

    async def wait_ended(self, timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self.ended.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"call {self.call_sid} still live after {timeout}s") from None

    async def wait_started(self, timeout: float = 5.0) -> None:
        await self._wait(lambda: self.stream_sid is not None, timeout, "stream start")

    async def wait_for_quiet(
        self, quiet: float = 0.7, timeout: float = 10.0, longest: float = 300.0
    ) -> bool:
        """Until the caller has heard something and then nothing for `quiet` seconds, as a
        person waits for a greeting to finish before talking.

        False when nothing was heard within `timeout` (a bot that waits for the caller);
        `longest` bounds one stretch of continuous audio. Raises `CallEndedError` if the
        call ends first.
        """
        try:
            await self.wait_heard(1, timeout)
        except TimeoutError:
            return False
        while True:
            await self.wait_playback_idle(longest)
            try:
                await self.wait_heard(len(self.heard) + 1, quiet)
            except TimeoutError:
                return True

    async def wait_playback_idle(self, timeout: float = 5.0) -> None:
        await self._wait(
            lambda: self._stream is None or self._stream.loudspeaker.idle, timeout, "playback idle"
        )

    async def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        if condition():
            return
        if self.ended.is_set():
            raise CallEndedError(f"call ended ({self.end_reason}) before {what}")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((condition, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(f"{what} not reached within {timeout}s ({self!r})") from None

    def _notify(self) -> None:
        """Re-check pending waits; free when nobody waits (the per-frame case)."""
        if not self._waiters:
            return
        ended = self.ended.is_set()
        pending = []
        for condition, future in self._waiters:
            if future.done():
                continue
            try:
                satisfied = condition()
            except Exception as exc:  # a user predicate failed: report it to its waiter
                future.set_exception(exc)
                continue
            if satisfied:
                future.set_result(None)
            elif ended:
                future.set_exception(CallEndedError(f"call ended ({self.end_reason})"))
            else:
                pending.append((condition, future))
        self._waiters = pending

    # -- internals -------------------------------------------------------------------------

    def _require_stream(self) -> MediaStream:
        stream = self._stream
        if stream is None or stream.closing:
            raise RuntimeError(f"call {self.call_sid} has no live media stream")
        return stream

    def _params(self, status: str) -> dict[str, str]:
        params = dict.fromkeys(_GEO_FIELDS, "")
        params.update(
            AccountSid=self.simulator.account_sid,
            ApiVersion=API_VERSION,
            CallSid=self.call_sid,
            CallStatus=status,
            Called=self.to,
            Caller=self.from_,
            Direction=self.direction,
            From=self.from_,
            To=self.to,
        )
        params.update(self._extra_params)
        return params

    async def _fetch(
        self,
        url: str,
        method: str,
        params: dict[str, str],
        signature: str | None = None,
    ) -> list[ET.Element] | None:
        """Request TwiML; None (with the reason in `errors`) unless it is a valid document."""
        try:
            status, body = await self.simulator.request(url, method, params, signature)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            self.exchanges.append(HttpExchange(url, method, params, None, "", exc))
            self.errors.append(f"11205 {method} {url} failed: {exc!r}")
            return None
        self.exchanges.append(HttpExchange(url, method, params, status, body))
        if not 200 <= status < 300:
            self.errors.append(f"11200 {method} {url} answered HTTP {status}")
            return None
        verbs = parse_twiml(body)
        if isinstance(verbs, str):
            self.errors.append(f"{verbs} (from {url})")
            return None
        self._last_doc_url = url
        return verbs

    async def _answer(
        self, url: str, method: str, params: dict[str, str], signature: str | None
    ) -> None:
        """The first TwiML request of the call; its answer is kept in webhook_status/twiml."""
        verbs = await self._fetch(url, method, params, signature)
        last = self.exchanges[-1]
        self.webhook_status = last.status or 0
        self.twiml = last.body
        if verbs is None:
            self._finish("webhook-failed")
        else:
            self._start_runner(self._run_verbs(verbs, url, "twiml-ended"))

    def _start_runner(self, coro: Coroutine[Any, Any, str | None]) -> None:
        self._interrupting = None
        self._runner = asyncio.get_running_loop().create_task(self._run(coro))

    async def _run(self, coro: Coroutine[Any, Any, str | None]) -> None:
        try:
            reason = await coro
        except Exception as exc:  # a bug or a hostile server must not kill the caller's test
            self.errors.append(f"simulator error: {exc!r}")
            reason = "simulator-error"
        if reason is not None and self._interrupting is None:
            self._finish(reason)

    async def _fetch_and_execute(self, url: str, method: str, base: str) -> str | None:
        verbs = await self._fetch(url, method, self._params("in-progress"))
        if verbs is None:
            return "webhook-failed"
        return await self._run_verbs(verbs, url, base)

    async def _execute(self, twiml: str, doc_url: str, base: str) -> str | None:
        verbs = parse_twiml(twiml)
        if isinstance(verbs, str):
            self.errors.append(verbs)
            return "webhook-failed"
        return await self._run_verbs(verbs, doc_url, base)

    async def _run_verbs(self, verbs: list[ET.Element], doc_url: str, base: str) -> str | None:
        """Execute TwiML verbs in order; the end reason, or None if interrupted.

        `base` is the reason when the verbs simply run out; a stream that just ended
        (nothing executed after it) gives its own reason instead.
        """
        cause = base
        index = 0
        while index < len(verbs):
            if self._interrupting is not None:
                return None
            verb = verbs[index]
            index += 1
            tag = local_tag(verb)
            follow: str | None = None  # URL whose TwiML replaces the rest of this document
            follow_method = verb.get("method", "POST")
            params = self._params("in-progress")
            if tag != "Connect":
                cause = base  # a verb ran after the last stream: that stream did not end the call
            if tag == "Say":
                self.said.append((verb.text or "").strip())
            elif tag == "Play" and verb.get("digits"):
                self.digits_played.append(verb.get("digits", ""))
            elif tag in ("Pause", "Play"):
                pass  # no audio is synthesised for them
            elif tag in ("Hangup", "Reject"):
                return "hangup-verb"
            elif tag == "Redirect":
                follow = (verb.text or "").strip()
            elif tag == "Dial":
                params.update(await self._dial(verb, doc_url))
                if self._interrupting is not None:
                    return None
                follow = verb.get("action")
            elif tag == "Connect":
                stream = verb.find("Stream")
                if stream is None:
                    self.errors.append("<Connect> without <Stream> is not simulated; skipped")
                    continue
                outcome = await self._run_stream(stream, doc_url)
                if self._interrupting is not None:
                    return None
                cause = outcome
                follow = verb.get("action")
                if not follow:
                    continue  # fall through to the verbs after </Connect>
            else:
                self.errors.append(f"unsupported verb <{tag}> ignored")
                continue
            if follow:
                next_verbs = await self._fetch(urljoin(doc_url, follow), follow_method, params)
                if next_verbs is None:
                    return "webhook-failed"
                verbs, index, doc_url = next_verbs, 0, self._last_doc_url
        return cause

    async def _dial(self, verb: ET.Element, doc_url: str) -> dict[str, str]:
        """Ring the <Dial>'s number, client or SIP address; the outcome is `dial_outcome`.
        An answered party's noun ``url`` is requested on their leg (with ParentCallSid)
        before they are connected. Returns the action's Dial* parameters."""
        nouns = [child for child in verb if local_tag(child) in ("Number", "Sip", "Client")]
        noun = nouns[0] if nouns else None
        target = (verb.text or "").strip() or " ".join((c.text or "").strip() for c in verb)
        self.dialed.append(target)
        outcome = self.dial_outcome
        child_sid = new_sid("CA")
        record = {
            "to": target,
            "noun": local_tag(noun) if noun is not None else "",
            "outcome": outcome,
            **{k: v for k, v in verb.attrib.items()},
        }
        self.dials.append(record)
        self._notify()
        if outcome not in ("completed", "answered"):
            return {"DialCallStatus": outcome, "DialCallSid": child_sid}
        url = noun.get("url") if noun is not None else None
        if url:
            leg = self._params("in-progress")
            leg.update(CallSid=child_sid, ParentCallSid=self.call_sid, To=target, Called=target)
            leg["Direction"] = "outbound-dial"
            method = noun.get("method", "POST") if noun is not None else "POST"
            full = urljoin(doc_url, url)
            try:
                status, body = await self.simulator.request(full, method, leg)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                self.exchanges.append(HttpExchange(full, method, leg, None, "", exc))
            else:
                self.exchanges.append(HttpExchange(full, method, leg, status, body))
        if self.dial_talk_seconds > 0:
            await asyncio.sleep(self.dial_talk_seconds)  # the caller and the person talk
        return {
            "DialCallStatus": "completed",
            "DialCallSid": child_sid,
            "DialCallDuration": str(round(self.dial_talk_seconds)),
        }

    async def wait_dialed(self, count: int = 1, timeout: float = 5.0) -> dict[str, str]:
        """The `count`-th <Dial> this call ran (its attributes, target and outcome)."""
        await self._wait(lambda: len(self.dials) >= count, timeout, f"{count} dials")
        return self.dials[count - 1]

    async def wait_streams(self, count: int, timeout: float = 5.0) -> None:
        """Until `count` streams of this call have started (re-attached ones included)."""
        await self._wait(
            lambda: self.streams_opened >= count,
            timeout,
            f"{count} streams started",
        )

    async def _run_stream(self, element: ET.Element, doc_url: str) -> str:
        """Run one <Connect><Stream>; returns "server-closed" or "stream-failed"."""
        raw = (element.get("url") or "").strip()
        url = urljoin(doc_url, raw)
        parts = urlsplit(url)
        scheme = parts.scheme
        if "://" not in raw:  # relative URL resolved against an https document
            scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
        # Twilio does not support query strings on the Stream URL and drops them.
        url = urlunsplit((scheme, parts.netloc, parts.path, "", ""))
        self.stream_url = url
        self.custom_parameters = {
            name: value
            for parameter in element.iter("Parameter")
            if (name := parameter.get("name")) is not None
            and (value := parameter.get("value")) is not None
        }
        if scheme != "wss":
            self.errors.append(f"31922 Stream URL scheme must be wss: {raw!r}")
            return "stream-failed"
        signature = self.simulator.validator.compute_signature(url, {})
        target = self.simulator._stream_target(parts)
        session = await self.simulator._session_get()
        try:
            ws = await session.ws_connect(
                target, headers={"X-Twilio-Signature": signature}, timeout=_WS_TIMEOUT
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.stream_error = exc
            self.errors.append(f"31920 stream handshake failed: {exc!r}")
            return "stream-failed"
        stream = MediaStream(self, ws, new_sid("MZ"))
        self._stream = stream
        try:
            return await stream.run()
        finally:
            self._stream = None
            self._notify()

    async def _interrupt(self, reason: str) -> None:
        """Stop whatever the call is doing: ``stop`` and close the stream, end the runner."""
        self._interrupting = reason
        stream = self._stream
        if stream is not None:
            await stream.stop_and_close()
        runner = self._runner
        if runner is not None and not runner.done() and runner is not asyncio.current_task():
            if stream is None:
                runner.cancel()  # it is waiting on HTTP or a handshake: abandon that
            await asyncio.wait([runner])

    def _finish(self, reason: str) -> None:
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.ended.set()
        self._notify()
        hook = self._status_hook
        if hook is not None:
            self.simulator._spawn(self._completed(hook))

    async def _completed(self, hook: StatusHook) -> None:
        try:
            await hook(self, "completed")
        except Exception as exc:
            self.errors.append(f"status hook failed: {exc!r}")

    async def _shutdown(self) -> None:
        """Used by TwilioSimulator.close(): hang up politely, then by force."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.hangup(), 3.0)
        for task in (self._runner, *(self._stream.tasks() if self._stream else ())):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
        self._finish("simulator-closed")
