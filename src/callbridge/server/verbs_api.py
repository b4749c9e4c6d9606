"""POST /api/calls/{call}/hangup and /say: the call verbs over HTTP, for operators.

`{call}` is our call id or Twilio's CallSid. A verb goes to the call on this instance;
a call that has ended (or that this instance does not hold) is a clear 409 or 404,
never a crash. Guarded by CALLBRIDGE_API_TOKEN like the records API (`api_auth`).
"""

from __future__ import annotations

import msgspec
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from callbridge.logs import EventLogger
from callbridge.server.api_auth import authorize, error_response, json_response
from callbridge.server.call_runner import CallRunner, VerbRefused
from callbridge.server.metrics import METRICS
from callbridge.server.records_api import RECORDS_STORE
from callbridge.server.state import APP_STATE, AppState

MAX_TEXT_CHARS = 1000  # what an operator makes the agent say: a sentence or a few
_log = EventLogger("verbs.api")
_RECORDED_AS = {"hangup": "hang-up", "say": "say"}  # the verbs' names in records and metrics


class _HangUpBody(msgspec.Struct, forbid_unknown_fields=True):
    goodbye: str | None = None


class _SayBody(msgspec.Struct, forbid_unknown_fields=True):
    text: str


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/calls/{call}/hangup", hang_up)
    app.router.add_post("/api/calls/{call}/say", say)


def live_call(state: AppState, key: str) -> CallRunner | None:
    """The live call on this instance with `key` as its call id or CallSid."""
    runner = state.registry.live.get(key)
    if runner is not None:
        return runner
    call_id = state.registry.call_id_for_sid(key)
    if call_id is not None and call_id in state.registry.live:
        return state.registry.live[call_id]
    for candidate in state.registry.live.values():
        if candidate.bridge.call_sid == key:
            return candidate
    return None


async def hang_up(request: web.Request) -> web.Response:
    return await _verb(request, "hangup", _HangUpBody)


async def say(request: web.Request) -> web.Response:
    return await _verb(request, "say", _SayBody)


async def _verb(
    request: web.Request, verb: str, body_type: type[_HangUpBody] | type[_SayBody]
) -> web.Response:
    denied = authorize(request, "the call verbs API")
    if denied is not None:
        return denied
    raw = await request.read()
    try:
        body = msgspec.json.decode(raw or b"{}", type=body_type)
    except msgspec.DecodeError as exc:
        return error_response(400, "invalid_body", f"invalid JSON body: {exc}")
    text = body.text if isinstance(body, _SayBody) else body.goodbye
    if text is not None and not (len(text.strip()) > 0 and len(text) <= MAX_TEXT_CHARS):
        return error_response(
            400, "invalid_body", f"the text must be 1 to {MAX_TEXT_CHARS} characters"
        )
    state = request.app[APP_STATE]
    key = request.match_info["call"]
    runner = live_call(state, key)
    if runner is None:
        return await _not_live(request, key)
    try:
        if isinstance(body, _SayBody):
            runner.say(body.text)
        else:
            runner.hang_up(body.goodbye)
    except VerbRefused as exc:
        runner.log.info("call.verb_refused", verb=verb, why=str(exc))
        metrics = request.app.get(METRICS)
        if metrics is not None:  # as the bridge counts its own refusals
            metrics.verbs.labels(_RECORDED_AS[verb], "refused").inc()
        return error_response(409, "call_ending", f"{verb}: {exc}")
    runner.log.info("call.verb", verb=verb, by="api")
    return json_response(202, {"call_id": runner.call_id, "verb": verb, "accepted": True})


async def _not_live(request: web.Request, key: str) -> web.Response:
    """409 for a call the records say has ended, else 404 (no such call, or not live
    on this instance)."""
    try:
        call = await request.app[RECORDS_STORE].get_call(key)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        _log.warning("verbs_api.db_unavailable", error=type(exc).__name__)
        call = None
    if call is not None and call.ended_at is not None:
        return error_response(409, "call_ended", "that call has ended")
    return error_response(404, "not_found", "no live call with that id or CallSid on this server")
