"""GET /api/calls and GET /api/calls/{call}: call records over HTTP, for dashboards and scripts.

Shapes and errors as in `callbridge/records/openapi.yaml` (tests check real responses against
it). Guarded by CALLBRIDGE_API_TOKEN, and off without it (`api_auth`).
"""

from __future__ import annotations

from aiohttp import web
from multidict import MultiMapping
from sqlalchemy.exc import SQLAlchemyError

from callbridge.logs import EventLogger
from callbridge.records import queries
from callbridge.records.queries import CallQuery
from callbridge.records.store import CallStore
from callbridge.server.api_auth import authorize, error_response, json_response

RECORDS_STORE = web.AppKey("callbridge_records", CallStore)

_LIST_PARAMETERS = frozenset({"limit", "cursor", "since", "status", "direction"})
_log = EventLogger("records.api")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/calls", list_calls)
    app.router.add_get("/api/calls/{call}", get_call)


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
    denied = authorize(request, "the call records API")
    if denied is not None:
        return denied
    try:
        query = _list_query(request.query)
        page = await request.app[RECORDS_STORE].list_calls(query)
    except ValueError as exc:
        return error_response(400, "invalid_parameter", str(exc))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        return _unavailable(exc)
    return json_response(200, page)


async def get_call(request: web.Request) -> web.Response:
    denied = authorize(request, "the call records API")
    if denied is not None:
        return denied
    key = request.match_info["call"]
    try:
        call = await request.app[RECORDS_STORE].get_call(key)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        return _unavailable(exc)
    if call is None:
        return error_response(404, "not_found", "no call with that id or CallSid")
    return json_response(200, call)


def _unavailable(exc: BaseException) -> web.Response:
    _log.warning("records_api.db_unavailable", error=type(exc).__name__)
    return error_response(503, "database_unavailable", "the call records database is not answering")
