"""An offline Twilio: places calls into a callbridge server the way Twilio's edge would.

`TwilioSimulator` plays the carrier side of a phone call against a real server listening
on loopback:

* it POSTs the signed voice webhook and executes the TwiML it gets back (``<Say>``,
  ``<Pause>``, ``<Play>``, ``<Hangup>``, ``<Reject>``, ``<Redirect>``, ``<Dial>``,
  ``<Connect><Stream>`` with ``<Parameter>`` and ``action``);
* it opens the Media Stream WebSocket with a signed upgrade and speaks the Media Streams
  protocol: ``connected``, ``start``, 20 ms ``media`` frames on a drift-free clock,
  ``dtmf``, ``stop``;
* it emulates the caller's loudspeaker: server ``media`` is queued and "played" at
  ``playback_rate`` bytes/s into `SimulatedCall.heard`, ``mark`` is echoed when playback
  reaches it (or at once when nothing is queued), ``clear`` flushes the queue and echoes
  every pending mark;
* it validates every frame the server sends and records Twilio's 31950/31951 warnings
  instead of failing, so tests can assert a server speaks the protocol exactly;
* with ``record_timeline``, it keeps the call as it was heard, on one clock: what the
  caller sent and what the loudspeaker played (clears applied), each at the time it
  happened, for a stereo recording (`SimulatedCall.caller_track`, ``played_track``).

Facts and their sources are in ``shared/reference/twilio.md`` (sections 1-5). The
simulator is also the engine behind `FakeTwilioRest` (outbound calls, live-call updates).

Per-frame work is kept cheap on purpose: the load benchmark runs hundreds of simulated
calls in one process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import secrets
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlencode, urljoin, urlsplit, urlunsplit

import aiohttp
import msgspec
from twilio.request_validator import RequestValidator

from callbridge.testing.audio import FRAME_BYTES, SAMPLE_RATE, SILENCE_BYTE

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "CallEndedError",
    "HttpExchange",
    "SimulatedCall",
    "StatusHook",
    "TwilioSimulator",
]

DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
API_VERSION = "2010-04-01"

# A hook awaited with (call, CallStatus): "in-progress" when the call is answered and
# "completed" once it is over. FakeTwilioRest turns these into status callbacks.
StatusHook = Callable[["SimulatedCall", str], Awaitable[None]]

_FRAME_MS = 20  # each media frame carries 20 ms of audio, whatever the simulated cadence
_SILENCE_FRAME = bytes([SILENCE_BYTE]) * FRAME_BYTES
_SILENCE_PAYLOAD = base64.b64encode(_SILENCE_FRAME).decode("ascii")
# The hot path: one media frame every 20 ms per call, formatted without a JSON encoder.
_MEDIA_TEMPLATE = (
    '{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
    '"timestamp":"%d","payload":"%s"},"streamSid":"%s"}'
)
_MEDIA_KEYS = frozenset(("event", "streamSid", "media"))
_MARK_KEYS = frozenset(("event", "streamSid", "mark"))
_CLEAR_KEYS = frozenset(("event", "streamSid"))
_GEO_FIELDS = tuple(
    prefix + suffix
    for prefix in ("Called", "Caller", "From", "To")
    for suffix in ("City", "Country", "State", "Zip")
)
_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15)  # Twilio waits 15 s for a webhook (§7)
_WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)
_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _dumps(obj: object) -> str:
    return _json_encode(obj).decode("utf-8")


def _signing_url(url: str) -> str:
    """The URL Twilio signs: no credentials, no fragment, no port on https (§5)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if parts.scheme == "https" and parts.port is not None:
        netloc = netloc[: netloc.rfind(":")]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _place(track: bytearray, position: int, data: bytes | memoryview) -> None:
    """Write `data` into a timeline at `position` (bytes), silence filling any gap."""
    if position > len(track):
        track += bytes([SILENCE_BYTE]) * (position - len(track))
    track[position : position + len(data)] = data


def _local_tag(element: ET.Element) -> str:
    tag = element.tag
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _parse_twiml(body: str) -> list[ET.Element] | str:
    """The verbs of a TwiML document, or the reason it is not one."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        return f"12100 TwiML parse failure: {exc}"
    if _local_tag(root) != "Response":
        return f"12100 root element is <{_local_tag(root)}>, not <Response>"
    return list(root)


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


class TwilioSimulator:
    """Twilio's side of phone calls, against a server reachable at `server_url`."""

    def __init__(
        self,
        server_url: str,
        *,
        auth_token: str,
        public_url: str | None = None,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        playback_rate: float = 8000.0,
        frame_interval: float = 0.02,
        record_received: bool = True,
        record_timeline: bool = False,
    ) -> None:
        if playback_rate <= 0 or frame_interval <= 0:
            raise ValueError("playback_rate and frame_interval must be positive")
        if record_timeline and (playback_rate != SAMPLE_RATE or frame_interval != 0.02):
            raise ValueError("record_timeline needs real time (the default rate and interval)")
        self.server_url = server_url.rstrip("/")
        self.public_url = (public_url or server_url).rstrip("/")
        self.auth_token = auth_token
        self.account_sid = account_sid
        self.playback_rate = playback_rate
        self.frame_interval = frame_interval
        # The load benchmark can switch this off: keeping every frame of hundreds of calls
        # costs hundreds of megabytes.
        self.record_received = record_received
        self.record_timeline = record_timeline
        self.calls: list[SimulatedCall] = []
        self.validator = RequestValidator(auth_token)
        scheme, _, rest = self.server_url.partition("://")
        self._ws_base = ("wss" if scheme == "https" else "ws") + "://" + rest
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TwilioSimulator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- placing calls -------------------------------------------------------------------

    async def place_inbound_call(
        self,
        *,
        from_: str = "+15550001111",
        to: str = "+15552223333",
        caller_audio: bytes = b"",
        webhook_path: str = "/twiml",
        extra_params: dict[str, str] | None = None,
        signature: str | None = None,
    ) -> SimulatedCall:
        """Ring the server: POST the voice webhook, then run its TwiML in the background.

        Returns once the webhook has answered (`webhook_status` and `twiml` are set).
        """
        call = SimulatedCall(self, _sid("CA"), from_, to, "inbound", extra_params)
        self.calls.append(call)
        if caller_audio:
            call.speak(caller_audio)
        url = webhook_path if "://" in webhook_path else self.public_url + webhook_path
        await call._answer(url, "POST", call._params("ringing"), signature)
        return call

    async def answer_outbound_call(
        self,
        *,
        call_sid: str,
        url: str | None,
        from_: str,
        to: str,
        callee_audio: bytes = b"",
        status_callback: StatusHook | None = None,
        method: str = "POST",
        twiml: str | None = None,
        extra_params: dict[str, str] | None = None,
    ) -> SimulatedCall:
        """The callee of an API-created call picks up: fetch `url` (or run `twiml`).

        `url` is the absolute public URL given to Calls create; the request goes to the
        same path on `server_url` and is signed over the public URL. `status_callback` is
        awaited with "in-progress" before the URL is requested and with "completed" when
        the call ends.
        """
        if url is None and twiml is None:
            raise ValueError("either url or twiml is required")
        call = SimulatedCall(self, call_sid, from_, to, "outbound-api", extra_params)
        self.calls.append(call)
        if callee_audio:
            call.speak(callee_audio)
        call._status_hook = status_callback
        if status_callback is not None:
            try:
                await status_callback(call, "in-progress")
            except Exception as exc:  # the hook's failure must not strand the call
                call.errors.append(f"status hook failed: {exc!r}")
        if url is not None:
            await call._answer(url, method, call._params("in-progress"), None)
        else:
            assert twiml is not None
            call.twiml = twiml
            call._start_runner(call._execute(twiml, self.public_url + "/", "twiml-ended"))
        return call

    async def close(self) -> None:
        """Hang up every live call, cancel what is left, close the HTTP session."""
        live = [call for call in self.calls if not call.ended.is_set()]
        if live:
            await asyncio.gather(*(call._shutdown() for call in live), return_exceptions=True)
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- plumbing shared with the calls and FakeTwilioRest --------------------------------

    def internal_url(self, url: str) -> str:
        """Where a public URL of the server really is: public_url is swapped for server_url."""
        public = self.public_url
        if url.startswith(public) and url[len(public) : len(public) + 1] in ("", "/", "?", "#"):
            return self.server_url + url[len(public) :]
        parts, base = urlsplit(url), urlsplit(public)
        if parts.hostname and parts.hostname == base.hostname:
            # Same public host spelled differently (explicit :443, other scheme).
            server = urlsplit(self.server_url)
            return urlunsplit((server.scheme, server.netloc, parts.path, parts.query, ""))
        return url

    def _stream_target(self, parts: SplitResult) -> str:
        """Where a stream URL really is: the server's path under its real address."""
        return self._ws_base + (parts.path or "/")

    async def _session_get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # limit=0: the default pool of 100 connections would stall the 101st call.
            # force_close: like Twilio, a new connection per webhook and per stream.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True), timeout=_HTTP_TIMEOUT
            )
        return self._session

    async def request(
        self,
        url: str,
        method: str,
        params: dict[str, str],
        signature: str | None = None,
    ) -> tuple[int, str]:
        """Make a signed request the way Twilio does; raises aiohttp/OS errors."""
        method = method.upper()
        url = urlunsplit(urlsplit(url)._replace(fragment=""))
        data: dict[str, str] | None
        if method == "GET":
            # GET: the parameters travel in the query string, which is part of the signed URL.
            if params:
                url = url + ("&" if "?" in url else "?") + urlencode(params)
            computed = self.validator.compute_signature(_signing_url(url), {})
            data = None
        else:
            computed = self.validator.compute_signature(_signing_url(url), params)
            data = params
        headers = {
            "X-Twilio-Signature": computed if signature is None else signature,
            "User-Agent": "TwilioProxy/1.1",
            "Accept": "*/*",
        }
        session = await self._session_get()
        async with session.request(
            method, self.internal_url(url), data=data, headers=headers
        ) as response:
            return response.status, await response.text(errors="replace")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class SimulatedCall:
    """One phone call as the caller (or, for outbound calls, the callee) experiences it.

    `end_reason` once `ended` is set:

    * ``"server-closed"``: the server closed the stream and nothing ran after ``<Connect>``;
    * ``"stream-failed"``: the stream's WebSocket upgrade failed, nothing ran after it;
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
        self.heard = bytearray()
        self.received: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []  # why something failed: webhook, handshake, bad TwiML
        self.stream_error: BaseException | None = None  # why the last stream did not open
        self.exchanges: list[HttpExchange] = []
        self.marks: list[tuple[str, bool]] = []
        self.clears = 0
        self.media_sent = 0
        # With record_timeline: the call on one clock, 8000 mu-law bytes a second from the
        # start of its first stream; times in seconds on the same clock.
        self.caller_track = bytearray()  # every frame the caller sent, speech or silence
        self.played_track = bytearray()  # what the loudspeaker played; silence elsewhere
        self.played_spans: list[tuple[float, float]] = []  # while something played
        self.spoken_spans: list[tuple[float, float]] = []  # while audio given to speak() went
        self.clear_times: list[float] = []
        self.timeline_start: float | None = None  # loop time of the clock's zero
        self._played_end = -(FRAME_BYTES + 1)  # where the last burst of playback ended
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self.close_code: int | None = None
        self._extra_params = dict(extra_params or {})
        self._speech = bytearray()
        self._stream: _Stream | None = None
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
            lambda: self._stream is None or not self._stream.fifo, timeout, "playback idle"
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

    def _require_stream(self) -> _Stream:
        stream = self._stream
        if stream is None or stream.closing:
            raise RuntimeError(f"call {self.call_sid} has no live media stream")
        return stream

    def _params(self, status: str) -> dict[str, str]:
        params = dict.fromkeys(_GEO_FIELDS, "")  # often empty on real calls (§4)
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
        verbs = _parse_twiml(body)
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
        verbs = _parse_twiml(twiml)
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
            tag = _local_tag(verb)
            follow: str | None = None  # URL whose TwiML replaces the rest of this document
            follow_method = verb.get("method", "POST")
            params = self._params("in-progress")
            if tag != "Connect":
                cause = base  # a verb ran after the last stream: that stream did not end the call
            if tag == "Say":
                self.said.append((verb.text or "").strip())
            elif tag in ("Pause", "Play"):
                pass  # no audio is synthesised for them
            elif tag in ("Hangup", "Reject"):
                return "hangup-verb"
            elif tag == "Redirect":
                follow = (verb.text or "").strip()
            elif tag == "Dial":
                target = (verb.text or "").strip() or " ".join(
                    (child.text or "").strip() for child in verb
                )
                self.dialed.append(target)  # the dialled party answers and hangs up at once
                follow = verb.get("action")
                params.update(DialCallStatus="completed", DialCallDuration="0")
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

    async def _run_stream(self, element: ET.Element, doc_url: str) -> str:
        """Run one <Connect><Stream>; returns "server-closed" or "stream-failed"."""
        raw = (element.get("url") or "").strip()
        url = urljoin(doc_url, raw)
        parts = urlsplit(url)
        scheme = parts.scheme
        if "://" not in raw:  # relative URL resolved against an https document
            scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
        # Twilio does not support query strings on the Stream URL and drops them (§3).
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
        stream = _Stream(self, ws, _sid("MZ"))
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


class _Stream:
    """One Media Streams WebSocket: sender, loudspeaker and reader of a call."""

    def __init__(
        self, call: SimulatedCall, ws: aiohttp.ClientWebSocketResponse, stream_sid: str
    ) -> None:
        self.call = call
        self.ws = ws
        self.stream_sid = stream_sid
        self.seq = 0  # one counter for start/media/mark/dtmf/stop (§1)
        self.closing = False  # set before `stop`: nothing numbered may follow it
        self.close_started = False
        # Loudspeaker queue: bytes are audio, str items are mark names.
        self.fifo: deque[bytes | str] = deque()
        self.head_offset = 0
        self.wake = asyncio.Event()
        self.t0 = 0.0  # loop time the stream started; frame n is sent at t0 + n * interval
        self._sender: asyncio.Task[None] | None = None
        self._player: asyncio.Task[None] | None = None

    def tasks(self) -> tuple[asyncio.Task[None], ...]:
        return tuple(t for t in (self._sender, self._player) if t is not None)

    async def send_numbered(
        self, message: dict[str, Any], key: str | None = None, body: object = None
    ) -> bool:
        """Send a frame carrying the next sequenceNumber; False once the socket is gone."""
        if self.closing:
            return False
        self.seq += 1
        message["sequenceNumber"] = str(self.seq)
        if key is not None:
            message[key] = body
        # aiohttp writes an uncompressed frame synchronously on the first step of send_str,
        # so frames hit the wire in the order their sequence numbers were assigned.
        try:
            await self.ws.send_str(_dumps(message))
        except (ConnectionError, aiohttp.ClientError):
            return False
        return True

    async def run(self) -> str:
        call = self.call
        sim = call.simulator
        sid = self.stream_sid
        try:
            await self.ws.send_str('{"event":"connected","protocol":"Call","version":"1.0.0"}')
            start = {
                "streamSid": sid,
                "accountSid": sim.account_sid,
                "callSid": call.call_sid,
                "tracks": ["inbound"],
                "customParameters": call.custom_parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            }
            await self.send_numbered({"event": "start", "streamSid": sid}, "start", start)
        except (ConnectionError, aiohttp.ClientError):
            pass  # the reader below sees the closed socket
        call.stream_sid = sid
        call._notify()
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        if call.timeline_start is None:
            call.timeline_start = self.t0
        self._sender = loop.create_task(self._send_loop())
        self._player = loop.create_task(self._play_loop())
        try:
            return await self._read_loop()
        finally:
            self.closing = True
            for task in (self._sender, self._player):
                task.cancel()
            await asyncio.wait([self._sender, self._player])
            if not self.close_started and not self.ws.closed:
                self.close_started = True
                await self.ws.close()

    async def stop_and_close(self) -> None:
        """Caller hangup or redirect: ``stop``, then close the socket."""
        if self.close_started:
            return
        self.close_started = True
        if not self.closing:
            call = self.call
            self.seq += 1
            stop = {
                "event": "stop",
                "sequenceNumber": str(self.seq),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": call.simulator.account_sid, "callSid": call.call_sid},
            }
            self.closing = True  # before the await: no media may follow the stop
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await self.ws.send_str(_dumps(stop))
        await self.ws.close()

    # -- caller -> server ------------------------------------------------------------------

    async def _send_loop(self) -> None:
        """One 160-byte frame per frame_interval against a monotonic clock, never skipping."""
        loop = asyncio.get_running_loop()
        interval = self.call.simulator.frame_interval
        call = self.call
        speech = call._speech
        ws = self.ws
        sid = self.stream_sid
        begin = self.t0
        timeline = call.simulator.record_timeline
        # Where this stream's frame 1 sits on the call's timeline (a later stream's later).
        offset = round((begin - (call.timeline_start or begin)) * SAMPLE_RATE)
        speaking_since: float | None = None
        chunk = 0
        try:
            while True:
                chunk += 1
                delay = begin + chunk * interval - loop.time()
                # Late (loop busy): send at once but still yield; the cadence is kept by the
                # absolute schedule, so there is no drift and no frame is skipped.
                await asyncio.sleep(delay if delay > 0 else 0)
                if speech:
                    frame = bytes(speech[:FRAME_BYTES])
                    del speech[:FRAME_BYTES]
                    if len(frame) < FRAME_BYTES:
                        frame += _SILENCE_FRAME[len(frame) :]
                    payload = base64.b64encode(frame).decode("ascii")
                    if timeline:
                        if speaking_since is None:
                            speaking_since = (offset + (chunk - 1) * FRAME_BYTES) / SAMPLE_RATE
                        if not speech:
                            spoken = (offset + chunk * FRAME_BYTES) / SAMPLE_RATE
                            call.spoken_spans.append((speaking_since, spoken))
                            speaking_since = None
                else:
                    frame = _SILENCE_FRAME
                    payload = _SILENCE_PAYLOAD
                if self.closing:
                    return
                if timeline:
                    _place(call.caller_track, offset + (chunk - 1) * FRAME_BYTES, frame)
                self.seq += 1
                await ws.send_str(
                    _MEDIA_TEMPLATE % (self.seq, chunk, chunk * _FRAME_MS, payload, sid)
                )
                call.media_sent += 1
        except (ConnectionError, aiohttp.ClientError):
            return

    # -- server -> caller ------------------------------------------------------------------

    async def _read_loop(self) -> str:
        ws = self.ws
        call = self.call
        text, binary = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is text:
                await self._on_text(msg.data)
            elif kind is binary:
                call.warnings.append(f"31950 binary frame of {len(msg.data)} bytes ignored")
            elif kind is aiohttp.WSMsgType.ERROR:
                call.errors.append(f"31903 stream broken: {msg.data!r}")
                break
            else:  # CLOSE (server closed), CLOSING (we close), CLOSED
                break
        self.closing = True
        if call._interrupting is not None:
            return call._interrupting
        call.close_code = ws.close_code
        return "server-closed"

    def _warn(self, reason: str) -> None:
        self.call.warnings.append("31951 " + reason)

    async def _on_text(self, data: str) -> None:
        call = self.call
        try:
            frame = _json_decode(data)
        except msgspec.DecodeError as exc:
            self._warn(f"invalid JSON: {exc}")
            return
        if not isinstance(frame, dict):
            self._warn(f"frame is not a JSON object: {data[:80]!r}")
            return
        if call.simulator.record_received:
            call.received.append(frame)
            call._notify()
        event = frame.get("event")
        if event == "media":
            if frame.keys() != _MEDIA_KEYS:
                self._warn(f"media frame fields {sorted(frame)}")
                return
            media = frame["media"]
            if not isinstance(media, dict) or media.keys() != {"payload"}:
                self._warn(f"media.* must be exactly {{payload}}: {media!r:.80}")
                return
            payload = media["payload"]
            if not isinstance(payload, str):
                self._warn("media.payload is not a string")
                return
            if frame["streamSid"] != self.stream_sid:
                self._warn(f"wrong streamSid {frame['streamSid']!r}")
                return
            try:
                audio = binascii.a2b_base64(payload, strict_mode=True)
            except (binascii.Error, ValueError):
                self._warn("media.payload is not valid base64")
                return
            if audio:
                self.fifo.append(audio)
                self.wake.set()
        elif event == "mark":
            if frame.keys() != _MARK_KEYS:
                self._warn(f"mark frame fields {sorted(frame)}")
                return
            mark = frame["mark"]
            if not isinstance(mark, dict) or mark.keys() != {"name"}:
                self._warn(f"mark.* must be exactly {{name}}: {mark!r:.80}")
                return
            name = mark["name"]
            if not isinstance(name, str):
                self._warn("mark.name is not a string")
                return
            if frame["streamSid"] != self.stream_sid:
                self._warn(f"wrong streamSid {frame['streamSid']!r}")
                return
            if self.fifo:
                self.fifo.append(name)
                self.wake.set()
            else:
                await self._echo_mark(name, played=True)  # nothing buffered: echo at once
        elif event == "clear":
            if frame.keys() != _CLEAR_KEYS:
                self._warn(f"clear frame fields {sorted(frame)}")
                return
            if frame["streamSid"] != self.stream_sid:
                self._warn(f"wrong streamSid {frame['streamSid']!r}")
                return
            call.clears += 1
            if call.simulator.record_timeline and call.timeline_start is not None:
                call.clear_times.append(asyncio.get_running_loop().time() - call.timeline_start)
            pending = [item for item in self.fifo if isinstance(item, str)]
            self.fifo.clear()
            self.head_offset = 0
            for name in pending:
                await self._echo_mark(name, played=False)
            call._notify()
        else:
            self._warn(f"unknown event {event!r}")

    async def _echo_mark(self, name: str, *, played: bool) -> None:
        self.call.marks.append((name, played))
        await self.send_numbered(
            {"event": "mark", "streamSid": self.stream_sid}, "mark", {"name": name}
        )
        self.call._notify()

    async def _play_loop(self) -> None:
        """Drain the loudspeaker queue at playback_rate bytes/s into `heard`, echoing marks."""
        loop = asyncio.get_running_loop()
        call = self.call
        rate = call.simulator.playback_rate
        tick = min(0.02, max(0.001, FRAME_BYTES / rate))  # about one frame of audio per tick
        fifo = self.fifo
        heard = call.heard
        timeline = call.simulator.record_timeline
        while True:
            await self.wake.wait()
            began = loop.time()  # playback (re)starts now: idle time earns no credit
            played = 0
            # Where this burst starts on the call's timeline (real time: a byte a sample).
            # One that starts within a frame of the last one's end continues it: the queue
            # ran dry only between two chunks the server sent on time.
            position = round((began - (call.timeline_start or began)) * SAMPLE_RATE)
            if abs(position - call._played_end) <= FRAME_BYTES:
                position = call._played_end
            since = position / SAMPLE_RATE
            try:
                while fifo:
                    head = fifo[0]
                    if isinstance(head, str):
                        fifo.popleft()
                        await self._echo_mark(head, played=True)
                        continue
                    budget = int((loop.time() - began) * rate) - played
                    if budget <= 0:
                        await asyncio.sleep(tick)
                        continue
                    while budget > 0 and fifo and not isinstance(head := fifo[0], str):
                        offset = self.head_offset
                        available = len(head) - offset
                        if available <= budget:
                            piece = memoryview(head)[offset:]
                            fifo.popleft()
                            self.head_offset = 0
                            taken = available
                        else:
                            piece = memoryview(head)[offset : offset + budget]
                            self.head_offset = offset + budget
                            taken = budget
                        heard += piece
                        if timeline:
                            _place(call.played_track, position + played, piece)
                        budget -= taken
                        played += taken
                    call._notify()
            finally:  # a clear, or the end of the stream, ends the burst too
                if timeline and played:
                    call.played_spans.append((since, since + played / rate))
                    call._played_end = position + played
            self.wake.clear()
            call._notify()
