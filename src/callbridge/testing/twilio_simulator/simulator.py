"""`TwilioSimulator`: Twilio's side of phone calls, and its signed requests to the server.

It places inbound calls, answers outbound ones for `FakeTwilioRest`, and makes every HTTP
request the way Twilio does: signed with ``X-Twilio-Signature`` over the public URL, sent
to where the server really listens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any
from urllib.parse import SplitResult, urlencode, urlsplit, urlunsplit

import aiohttp
from twilio.request_validator import RequestValidator

from callbridge.testing.audio import SAMPLE_RATE
from callbridge.testing.twilio_simulator.call import SimulatedCall, StatusHook, new_sid

__all__ = ["DEFAULT_ACCOUNT_SID", "TwilioSimulator"]

DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2

_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15)  # how long Twilio waits for a webhook


def _signing_url(url: str) -> str:
    """The URL Twilio signs: no credentials, no fragment, no port on https."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if parts.scheme == "https" and parts.port is not None:
        netloc = netloc[: netloc.rfind(":")]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


class TwilioSimulator:
    """Twilio's side of phone calls, against a server reachable at `server_url` (its
    streams at `stream_server_url`, when given)."""

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
        stream_server_url: str | None = None,
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
        # Where streams really go, if not to server_url: another instance of the server,
        # as a load balancer in front of several may send a call's stream.
        scheme, _, rest = (stream_server_url or self.server_url).rstrip("/").partition("://")
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
        call = SimulatedCall(self, new_sid("CA"), from_, to, "inbound", extra_params)
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
