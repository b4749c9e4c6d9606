"""GET /api/calls and GET /api/calls/{call}: call records over HTTP, for dashboards and scripts.

Shapes and errors as in `callbridge/records/openapi.yaml` (tests check real responses against
it). Protected by CALLBRIDGE_API_TOKEN as a bearer token, compared in constant time. With no
token configured the API is disabled and answers 404 with error "api_disabled": a feature that
is switched off is absent, not an outage (a 503 would alarm whoever watches the server).
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec
from aiohttp import web
from multidict import MultiMapping
from sqlalchemy.exc import SQLAlchemyError

from callbridge.logs import EventLogger
from callbridge.records import queries
from callbridge.records.queries import CallQuery
from callbridge.records.store import CallStore
from callbridge.server.log_throttle import refused

RECORDS_STORE = web.AppKey("callbridge_records", CallStore)

_LIST_PARAMETERS = frozenset({"limit", "cursor", "since", "status", "direction"})
_REALM = 'Bearer realm="callbridge"'
_log = EventLogger("records.api")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/calls", list_calls)
    app.router.add_get("/api/calls/{call}", get_call)


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=msgspec.json.encode(body),
        content_type="application/json",
        # Records hold phone numbers and what people said: no caching anywhere on the way.
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return _json(status, {"error": code, "message": message}, headers)


def authorize(request: web.Request, what: str = "the call records API") -> web.Response | None:
    """None if the request may read records (or metrics: `what`), else the response
    refusing it. CALLBRIDGE_API_TOKEN guards both."""
    store = request.app[RECORDS_STORE]
    if store.api_token is None:
        return _error(404, "api_disabled", f"{what} is off: set CALLBRIDGE_API_TOKEN to use it")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        _refused(request, "no bearer token")
        return _error(
            401,
            "unauthorized",
            "send Authorization: Bearer <CALLBRIDGE_API_TOKEN>",
            {"WWW-Authenticate": _REALM},
        )
    # Hashing first makes the comparison constant-time in the token's length too.
    expected = hashlib.sha256(store.api_token.encode()).digest()
    if not hmac.compare_digest(hashlib.sha256(given.strip().encode()).digest(), expected):
        _refused(request, "wrong bearer token")
        return _error(
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
        request.app,
        _log,
        "api.refused",
        client=request.remote,
        reason=reason,
        path=resource.canonical if resource is not None else None,
    )


def _list_query(params: MultiMapping[str]) -> CallQuery:
    unknown = sorted(set(params) - _LIST_PARAMETERS)
    if unknown:
        known = ", ".join(sorted(_LIST_PARAMETERS))
        raise ValueError(f"unknown parameter {unknown[0]!r}: use {known}")
    values: dict[str, str] = {}
    for name in params:
        given = params.getall(name)
        if len(given) > 1:
            raise ValueError(f"parameter {name!r} given more than once")
        values[name] = given[0]
    limit = queries.DEFAULT_LIMIT
    if "limit" in values:
        try:
            limit = int(values["limit"])
        except ValueError:
            raise ValueError(f"invalid limit {values['limit']!r}: a whole number") from None
    return CallQuery(
        since=queries.parse_since(values["since"]) if "since" in values else None,
        status=queries.parse_status(values["status"]) if "status" in values else None,
        direction=queries.parse_direction(values["direction"]) if "direction" in values else None,
        limit=queries.parse_limit(limit),
        cursor=values.get("cursor") or None,
    )


async def list_calls(request: web.Request) -> web.Response:
    denied = authorize(request)
    if denied is not None:
        return denied
    try:
        query = _list_query(request.query)
        page = await request.app[RECORDS_STORE].list_calls(query)
    except ValueError as exc:
        return _error(400, "invalid_parameter", str(exc))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        return _unavailable(exc)
    return _json(200, page)


async def get_call(request: web.Request) -> web.Response:
    denied = authorize(request)
    if denied is not None:
        return denied
    key = request.match_info["call"]
    try:
        call = await request.app[RECORDS_STORE].get_call(key)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        return _unavailable(exc)
    if call is None:
        return _error(404, "not_found", "no call with that id or CallSid")
    return _json(200, call)


def _unavailable(exc: BaseException) -> web.Response:
    _log.warning("records_api.db_unavailable", error=type(exc).__name__)
    return _error(503, "database_unavailable", "the call records database is not answering")
