"""Who may use the console, and which requests are the operator's own.

- Log-in: the operator types CALLBRIDGE_API_TOKEN; it is compared in constant time. Failed
  log-ins are limited per client address (`LoginThrottle`) and logged at a bounded rate.
- Session: a cookie (HttpOnly, SameSite=Strict, Secure when PUBLIC_URL is https) holding
  an expiry and a random nonce, signed with a key derived from the token. Nothing is kept
  on the server but the nonces of sessions logged out before they expired, so sessions
  survive a restart and any instance with the same token accepts them; changing the token
  ends every session.
- Actions (POST): the form carries a token derived from the session (`csrf_token`), and
  the request's Origin (else Referer) must be this server's; a browser that says
  `Sec-Fetch-Site: cross-site` is refused too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from yarl import URL

COOKIE = "callbridge_console"
SESSION_SECONDS = 12 * 3600
MAX_FAILURES = 5  # failed log-ins from one address within FAILURE_WINDOW_SECONDS ...
FAILURE_WINDOW_SECONDS = 300.0  # ... before it must wait for the oldest to age out
_MAX_CLIENTS = 10_000  # addresses remembered (the oldest forgotten first)
_MAX_LOGGED_OUT = 10_000


def _key(token: str) -> bytes:
    return hashlib.sha256(b"callbridge console session\x00" + token.encode()).digest()


def token_matches(given: str, token: str) -> bool:
    """Constant time, in the token's length too (both sides hashed first)."""
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(token.encode()).digest()
    )


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int

    def csrf_token(self, token: str) -> str:
        return hmac.new(_key(token), b"csrf\x00" + self.nonce.encode(), "sha256").hexdigest()


class Sessions:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._logged_out: OrderedDict[str, int] = OrderedDict()

    def new(self, token: str) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_urlsafe(18), int(self._clock()) + SESSION_SECONDS)
        payload = f"{session.expires}.{session.nonce}"
        return session, f"{payload}.{_sign(token, payload)}"

    def read(self, cookie: str | None, token: str) -> Session | None:
        """The session a cookie proves, or None (absent, forged, expired, logged out)."""
        if not cookie or len(cookie) > 200:
            return None
        payload, _, signature = cookie.rpartition(".")
        expires_text, _, nonce = payload.partition(".")
        if not hmac.compare_digest(signature, _sign(token, payload)):
            return None
        try:
            expires = int(expires_text)
        except ValueError:
            return None
        if expires <= self._clock() or nonce in self._logged_out:
            return None
        return Session(nonce, expires)

    def valid(self, session: Session) -> bool:
        """Whether a session read earlier is still on (not expired, not logged out)."""
        return session.expires > self._clock() and session.nonce not in self._logged_out

    def end(self, session: Session) -> None:
        now = self._clock()
        for nonce, expires in list(self._logged_out.items()):
            if expires <= now:
                del self._logged_out[nonce]
        self._logged_out[session.nonce] = session.expires
        while len(self._logged_out) > _MAX_LOGGED_OUT:
            self._logged_out.popitem(last=False)


def _sign(token: str, payload: str) -> str:
    return hmac.new(_key(token), b"session\x00" + payload.encode(), "sha256").hexdigest()


class LoginThrottle:
    """At most MAX_FAILURES failed log-ins per client address in a sliding window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> int:
        """0 if `client` may try now, else how many seconds until it may."""
        failures = self._recent(client)
        if failures is None or len(failures) < MAX_FAILURES:
            return 0
        return max(1, int(failures[0] + FAILURE_WINDOW_SECONDS - self._clock()) + 1)

    def failed(self, client: str) -> None:
        failures = self._recent(client)
        if failures is None:
            failures = self._failures[client] = deque(maxlen=MAX_FAILURES)
        failures.append(self._clock())
        self._failures.move_to_end(client)
        while len(self._failures) > _MAX_CLIENTS:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _recent(self, client: str) -> deque[float] | None:
        failures = self._failures.get(client)
        if failures is None:
            return None
        horizon = self._clock() - FAILURE_WINDOW_SECONDS
        while failures and failures[0] <= horizon:
            failures.popleft()
        return failures


def cookie_options(public_url: str | None) -> dict[str, object]:
    return {
        "httponly": True,
        "samesite": "Strict",
        "secure": bool(public_url and public_url.lower().startswith("https://")),
        "path": "/console",
    }


def cross_site(request: web.Request, public_url: str | None) -> str | None:
    """Why a state-changing request does not come from the console's own pages, or None.

    Browsers send Origin with every POST; Referer is the fallback of older ones. A request
    with neither is not a browser's cross-site form (those carry Origin), and still needs
    the session's form token."""
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return "cross-site request"
    ours = {_origin(request.url)}
    if public_url:
        ours.add(_origin(URL(public_url)))
    origin = request.headers.get("Origin")
    if origin is not None:
        return None if _origin_text(origin) in ours else "foreign origin"
    referer = request.headers.get("Referer")
    if referer is not None:
        return None if _origin_text(referer) in ours else "foreign referer"
    return None


def _origin_text(text: str) -> str | None:
    try:
        url = URL(text)
    except ValueError:
        return None
    return _origin(url) if url.is_absolute() else None


def _origin(url: URL) -> str:
    return f"{url.scheme.lower()}://{(url.host or '').lower()}:{url.port}"
