"""POST /api/calls/{call}/session: an operator changes a live call's agent session.

The same changes a tool can make (`Call.update_session`): the system prompt, the tools
(by name, from the call's bot), the keyterms and the transcription prompt. Guarded by
CALLBRIDGE_API_TOKEN like the records API; shapes in `callbridge/records/openapi.yaml`.
A call is live on the instance that serves its stream only.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from callbridge.call import SessionUpdateError
from callbridge.server.api_auth import authorize, error_response, json_response
from callbridge.server.runner_control import RunnerControl
from callbridge.server.state import APP_STATE

_MAX_BODY_BYTES = 256 * 1024


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/calls/{call}/session", update_session)


async def update_session(request: web.Request) -> web.Response:
    denied = authorize(request, "the call records API")
    if denied is not None:
        return denied
    state = request.app[APP_STATE]
    key = request.match_info["call"]
    call_id = key if key in state.registry.live else state.registry.call_id_for_sid(key)
    runner = state.registry.live.get(call_id) if call_id is not None else None
    call = runner.call if runner is not None else None
    if call is None or not isinstance(call.control, RunnerControl):
        return error_response(404, "not_live", "no live call with that id or CallSid here")
    if request.content_length is not None and request.content_length > _MAX_BODY_BYTES:
        return error_response(400, "invalid_parameter", "the body is too large")
    try:
        body = msgspec.json.decode(await request.read())
    except msgspec.DecodeError:
        return error_response(400, "invalid_parameter", "the body is not JSON")
    if not isinstance(body, dict) or not body:
        return error_response(
            400, "invalid_parameter", "send a JSON object of the fields to change"
        )
    try:
        call.control.update(body, "operator")
    except SessionUpdateError as exc:
        code = "immutable_field" if exc.immutable else "invalid_parameter"
        return error_response(400, code, str(exc))
    return json_response(200, {"call_id": call.call_id, "fields": sorted(body)})
