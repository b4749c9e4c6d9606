"""POST /api/calls/{call}/hangup: a command for a live call, from whichever instance the
request reaches (the shared state carries it to the instance that holds the call).

Guarded by CALLBRIDGE_API_TOKEN like the records API (`api_auth`)."""

from __future__ import annotations

from aiohttp import web

from callbridge.server.api_auth import authorize, error_response, json_response
from callbridge.server.shared_state import SHARED_STATE_DOWN, Command
from callbridge.server.state import APP_STATE


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/calls/{call}/hangup", hang_up)


async def hang_up(request: web.Request) -> web.Response:
    return await _send(request, "hangup")


async def _send(request: web.Request, name: str) -> web.Response:
    denied = authorize(request, "the calls API")
    if denied is not None:
        return denied
    state = request.app[APP_STATE]
    call_id = request.match_info["call"]
    result = await state.shared.send(Command(name=name, call_id=call_id))
    if result.delivered:
        return json_response(202, {"call_id": call_id, "instance_id": result.instance_id})
    if result.error == SHARED_STATE_DOWN:
        return error_response(503, "shared_state_unavailable", "cannot reach the shared state")
    if result.instance_id is None:
        return error_response(404, "not_live", "no live call with that id")
    return error_response(
        409,
        "not_performed",
        result.error or "not performed",
        {"X-Callbridge-Instance": result.instance_id},
    )
