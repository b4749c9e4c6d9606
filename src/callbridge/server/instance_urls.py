"""The public URLs of this instance: the line's (PUBLIC_URL, any instance may answer) and its
own (CALLBRIDGE_INSTANCE_URL, routed by the load balancer to this instance alone).

A call that comes back (after a failed transfer, after keypad tones) must reach the instance
holding its bridge and agent session, so the URLs it comes back by are built on this
instance's own base; everything else (a call's first TwiML, status callbacks) stays on
PUBLIC_URL. Without CALLBRIDGE_INSTANCE_URL the own base is PUBLIC_URL, as for one instance.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from callbridge.config import Settings


def own_base_url(settings: Settings) -> str | None:
    """The http(s) base that reaches this instance: CALLBRIDGE_INSTANCE_URL, else PUBLIC_URL
    (None: neither is set). No trailing slash."""
    url = settings.callbridge_instance_url or settings.public_url
    return None if url is None else url.rstrip("/")


def direct_url(settings: Settings) -> str | None:
    """The base other instances may send this instance's calls to: CALLBRIDGE_INSTANCE_URL;
    on its own (no REDIS_URL), PUBLIC_URL reaches this instance too."""
    if settings.callbridge_instance_url is not None:
        return settings.callbridge_instance_url.rstrip("/")
    if settings.redis_url is None and settings.public_url is not None:
        return settings.public_url.rstrip("/")
    return None


def ws_base(http_base: str) -> str:
    """The WebSocket form of an http(s) base: wss:// for https://, ws:// for http://."""
    parts = urlsplit(http_base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
