"""Who may read what the server keeps: the records API (/api/calls) and /metrics.

CALLBRIDGE_API_TOKEN (`AppState.api_token`) guards both, as a bearer token compared in
constant time. With no token configured both are off and answer 404 with error
"api_disabled": a feature that is switched off is absent, not an outage (a 503 would alarm
whoever watches the server). A refused request is one `api.refused` WARNING line, at a
bounded rate per client and reason (`log_throttle`), never with the token.
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec
from aiohttp import web

from callbridge.logs import EventLogger
from callbridge.server.log_throttle import refused
from callbridge.server.state import APP_STATE

_REALM = 'Bearer realm="callbridge"'
# The records API's logger: where these lines have always come from, /metrics's included.
_log = EventLogger("records.api")


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=msgspec.json.encode(body),
        content_type="application/json",
        # Records hold phone numbers and what people said: no caching anywhere on the way.
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The APIs' error shape: {"error": code, "message": message}."""
    return json_response(status, {"error": code, "message": message}, headers)


def authorize(request: web.Request, what: str) -> web.Response | None:
    """None if the request may read `what` (the call records API, /metrics), else the
    response refusing it."""
    token = request.app[APP_STATE].api_token
    if token is None:
        return error_response(
            404, "api_disabled", f"{what} is off: set CALLBRIDGE_API_TOKEN to use it"
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        _refused(request, "no bearer token")
        return error_response(
            401,
            "unauthorized",
            "send Authorization: Bearer <CALLBRIDGE_API_TOKEN>",
            {"WWW-Authenticate": _REALM},
        )
    # Hashing first makes the comparison constant-time in the token's length too.
    expected = hashlib.sha256(token.encode()).digest()
    if not hmac.compare_digest(hashlib.sha256(given.strip().encode()).digest(), expected):
        _refused(request, "wrong bearer token")
        return error_response(
            401,
            "invalid_token",
            "the bearer token is not CALLBRIDGE_API_TOKEN",
            {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
        )
    return None


def _refused(request: web.Request, reason: str) -> None:
    """One WARNING line, throttled per client and reason (a token guesser is one line an
    interval, with a count of the rest); never the token itself."""
    resource = request.match_info.route.resource
    refused(
        request.app[APP_STATE].refusals,
        _log,
        "api.refused",
        client=request.remote,
        reason=reason,
        path=resource.canonical if resource is not None else None,
    )
