"""Only Twilio gets in: request signatures, replay refusal, and per-call stream tokens.

Twilio signs every webhook and the Media Streams upgrade with `X-Twilio-Signature`, an
HMAC of the URL it called (plus the form body) under the account's auth token. We
rebuild that URL from `PUBLIC_URL`, never from the request's Host or forwarding headers
(which anyone can set) unless the operator opts in with `CALLBRIDGE_TRUST_PROXY_HEADERS`.
A call coming back to the instance holding it calls that instance's own URL
(`CALLBRIDGE_INSTANCE_URL`, its prefix stripped by the load balancer): a signature over
either base is Twilio's.
Signatures carry no timestamp, so a captured request could be sent again: we remember
what we have accepted for a while and refuse exact repeats.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from multidict import MultiDictProxy
from twilio.request_validator import RequestValidator

from callbridge.config import Settings

REPLAY_WINDOW_SECONDS = 15 * 60
_REPLAY_MEMORY = 200_000  # entries; bounded so a flood of valid requests can't grow it forever
TOKEN_TTL_SECONDS = 120.0  # Twilio opens the stream within seconds of fetching the TwiML


class SignatureError(Exception):
    """Why a request was refused; safe to log (no secrets, no signature values).

    `reason` is one of a few fixed texts (log lines about refusals are throttled by it);
    `url` is the URL the signature was checked against, when there was one."""

    def __init__(self, reason: str, url: str | None = None) -> None:
        super().__init__(f"{reason}: {url}" if url else reason)
        self.reason = reason
        self.url = url

    @property
    def checked_url(self) -> str | None:
        """`url` without its query (the caller's own text), short enough to log."""
        if self.url is None:
            return None
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))[:300]


class TwilioAuthenticator:
    def __init__(self, settings: Settings) -> None:
        token = settings.auth_token
        self.enabled = token is not None and not settings.callbridge_insecure_skip_signatures
        self._validator = RequestValidator(token or "")
        self._public_url = settings.public_url
        # The other base Twilio may have called, when there is one.
        instance = settings.callbridge_instance_url
        self._instance_url = instance if instance != settings.public_url else None
        self._trust_proxy = settings.callbridge_trust_proxy_headers
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def public_url(self, request: web.Request) -> str:
        """The https:// URL Twilio called for this request (path and query included)."""
        url = request.rel_url
        # The query as sent: Twilio signs it encoded, and yarl's query_string decodes some of it.
        return self._public_url_of(
            url.path, url.raw_query_string, request.headers, str(request.url)
        )

    def _public_url_of(
        self, path: str, query: str, headers: Mapping[str, str], as_received: str
    ) -> str:
        if self._public_url is not None:
            return _on_base(self._public_url, path, query)
        if self._trust_proxy:
            proto = headers.get("X-Forwarded-Proto", "https").split(",")[0].strip()
            host = headers.get("X-Forwarded-Host", headers.get("Host", "")).split(",")[0].strip()
            return urlunsplit((proto, host, path, query, ""))
        return as_received

    def check_webhook(self, request: web.Request, form: MultiDictProxy[Any]) -> bytes | None:
        """Raise SignatureError unless this form POST is Twilio's, and new to this process.
        Returns the request's digest, for a replay guard across instances (None: not
        checked)."""
        if not self.enabled:
            return None
        signature = request.headers.get("X-Twilio-Signature")
        if not signature:
            raise SignatureError("missing X-Twilio-Signature")
        url = self.public_url(request)
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        signed = self._validator.validate(url, _MultiParams(form), signature)
        if not signed and self._instance_url is not None:
            own = _on_base(
                self._instance_url, request.rel_url.path, request.rel_url.raw_query_string
            )
            if self._validator.validate(own, _MultiParams(form), signature):
                url, signed = own, True
        if not signed:
            raise SignatureError("signature does not match", url)
        return self._refuse_replay(signature, url, params)

    def check_stream_upgrade(self, request: web.Request) -> None:
        """The upgrade is signed over the wss:// stream URL with no parameters."""
        url = request.rel_url
        self.check_stream_request(url.path, url.raw_query_string, request.headers, str(request.url))

    def check_stream_request(
        self, path: str, query: str, headers: Mapping[str, str], as_received: str
    ) -> None:
        """`check_stream_upgrade` for an upgrade request that aiohttp did not parse (picows)."""
        if not self.enabled:
            return
        signature = headers.get("X-Twilio-Signature")
        if not signature:
            raise SignatureError("missing X-Twilio-Signature on the stream upgrade")
        urls = [_as_ws(self._public_url_of(path, query, headers, as_received))]
        if self._instance_url is not None:
            urls.append(_as_ws(_on_base(self._instance_url, path, query)))
        self.check_stream_signature(urls[0], signature, also=urls[1:])

    def check_stream_signature(
        self, url: str, signature: str | None, also: list[str] | None = None
    ) -> None:
        """Raise SignatureError unless `signature` signs this ws(s):// URL (or one of
        `also`, the other bases Twilio may have called), and is new."""
        if not self.enabled:
            return
        if not signature:
            raise SignatureError("missing X-Twilio-Signature on the stream upgrade")
        for candidate in (url, *(also or ())):
            # Twilio's own notes: if a wss handshake won't verify, try a trailing slash.
            if any(
                self._validator.validate(u, {}, signature) for u in (candidate, candidate + "/")
            ):
                self._refuse_replay(signature, candidate, {})
                return
        raise SignatureError("stream signature does not match", url)

    def _refuse_replay(self, signature: str, url: str, params: dict[str, str]) -> bytes:
        digest = hashlib.sha256(
            "\n".join([signature, url, *sorted(f"{k}={v}" for k, v in params.items())]).encode()
        ).digest()
        now = time.monotonic()
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if at > now - REPLAY_WINDOW_SECONDS and len(self._seen) < _REPLAY_MEMORY:
                break
            del self._seen[oldest]
        if digest in self._seen:
            raise SignatureError("replayed request", url)
        self._seen[digest] = now
        return digest


def _on_base(base_url: str, path: str, query: str) -> str:
    """The URL of `path` and `query` (as received) under a public base URL."""
    base = urlsplit(base_url)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + path, query, ""))


def _as_ws(http_url: str) -> str:
    """The ws(s):// form Twilio signs a stream upgrade under."""
    scheme = "wss" if http_url.startswith("https:") else "ws"
    return scheme + http_url[http_url.index(":") :]


class _MultiParams:
    """The validator signs every value of a repeated field; it finds them via getall()."""

    def __init__(self, form: MultiDictProxy[Any]) -> None:
        self._form = form

    def __iter__(self) -> Any:
        return iter({k for k in self._form if isinstance(self._form[k], str)})

    def __getitem__(self, key: str) -> str:
        value = self._form[key]
        return value if isinstance(value, str) else ""

    def getall(self, key: str) -> list[str]:
        return [v for v in self._form.getall(key) if isinstance(v, str)]


def new_stream_token() -> str:
    return secrets.token_urlsafe(24)


def tokens_match(expected: str | None, presented: str | None) -> bool:
    if not expected or not presented:
        return False
    return secrets.compare_digest(expected.encode(), presented.encode())
