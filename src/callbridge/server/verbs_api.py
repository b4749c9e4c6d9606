"""POST /api/calls/{call}/hangup, /say, /transfer and /digits: the call verbs over HTTP, for
operators and scripts.

`{call}` is our call id or Twilio's CallSid. A verb for a call this instance holds is
performed here; with several instances (`REDIS_URL`), one held elsewhere is sent to its
holder through the shared state. 202 once the verb is under way (a hang-up with a goodbye,
a transfer: the agent speaks first); 400 for a bad request, 404 for a call nobody holds,
409 for a call that has ended or cannot take the verb now, never a crash. Guarded by
CALLBRIDGE_API_TOKEN like the records API (`api_auth`).
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from callbridge.bridge.call_verbs import CALL_ENDED
from callbridge.logs import EventLogger
from callbridge.server.api_auth import authorize, error_response, json_response
from callbridge.server.call_runner import CallRunner
from callbridge.server.control import HANDLERS
from callbridge.server.metrics import METRICS
from callbridge.server.records_api import RECORDS_STORE
from callbridge.server.shared_state import SHARED_STATE_DOWN, Command
from callbridge.server.state import APP_STATE, AppState
from callbridge.verbs import digits_problem

MAX_TEXT_CHARS = 1000  # what an operator makes the agent say: a sentence or a few
_MAX_BODY_BYTES = 4096
_log = EventLogger("verbs.api")
_RECORDED_AS = {"hangup": "hang-up", "say": "say"}  # the verbs' names in records and metrics


class _Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_routes(app: web.Application) -> None:
    for verb in ("hangup", "say", "transfer", "digits"):
        app.router.add_post(f"/api/calls/{{call}}/{verb}", _handler(verb))


def _handler(verb: str) -> Any:
    async def handle(request: web.Request) -> web.Response:
        return await _verb(request, verb)

    handle.__name__ = verb
    return handle


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


async def _verb(request: web.Request, verb: str) -> web.Response:
    denied = authorize(request, "the call verbs API")
    if denied is not None:
        return denied
    state = request.app[APP_STATE]
    try:
        args = _arguments(verb, await request.content.read(_MAX_BODY_BYTES + 1))
    except _Invalid as exc:
        return error_response(400, exc.code, str(exc))
    key = request.match_info["call"]
    runner = live_call(state, key)
    if runner is None:
        if state.shared.distributed:
            return await _send(request, state, verb, key, args)
        return await _not_live(request, key)
    if verb == "transfer" and args["target"] not in runner.bridge.transfer_targets:
        names = ", ".join(repr(n) for n in runner.bridge.transfer_targets) or "none"
        return error_response(400, "invalid_parameter", f"target must be one of: {names}")
    refusal = HANDLERS[verb](runner, args)
    if refusal is not None:
        runner.log.info("call.verb_refused", verb=verb, why=refusal)
        metrics = request.app.get(METRICS)
        if metrics is not None and verb in _RECORDED_AS:  # as the bridge counts its own
            metrics.call_actions.labels(_RECORDED_AS[verb], "refused").inc()
        if refusal == CALL_ENDED:
            return error_response(409, "call_ended", refusal)
        code = "call_ending" if verb in _RECORDED_AS else "not_possible"
        return error_response(409, code, f"{verb}: {refusal}")
    runner.log.info("call.verb", verb=verb, by="api")
    return json_response(202, {"call_id": runner.call_id, "verb": verb, "accepted": True})


def _arguments(verb: str, raw: bytes) -> dict[str, Any]:
    """The verb's arguments from the JSON body, checked (400 before anything is done)."""
    if len(raw) > _MAX_BODY_BYTES:
        raise _Invalid("invalid_body", "the body is too large")
    try:
        fields = msgspec.json.decode(raw) if raw.strip() else {}
    except msgspec.DecodeError as exc:
        raise _Invalid("invalid_body", f"invalid JSON body: {exc}") from None
    if not isinstance(fields, dict):
        raise _Invalid("invalid_body", "the body must be a JSON object")
    allowed = {"hangup": "goodbye", "say": "text", "transfer": "target", "digits": "digits"}
    name = allowed[verb]
    unknown = sorted(set(fields) - {name})
    if unknown:
        raise _Invalid("invalid_body", f"unknown field {unknown[0][:50]!r}: use {name!r}")
    value = fields.get(name)
    if verb == "hangup" and value is None:
        return {}
    if not isinstance(value, str):
        raise _Invalid("invalid_body", f"{name}: a string")
    if verb in ("hangup", "say") and not (value.strip() and len(value) <= MAX_TEXT_CHARS):
        raise _Invalid("invalid_body", f"the text must be 1 to {MAX_TEXT_CHARS} characters")
    problem = digits_problem(value) if verb == "digits" else None
    if problem is not None:
        raise _Invalid("invalid_parameter", problem)
    return {name: value}


async def _send(
    request: web.Request, state: AppState, verb: str, key: str, args: dict[str, Any]
) -> web.Response:
    """A call held by another instance: the shared state carries the verb there."""
    call_id = await state.shared.call_id_for_sid(key) or key
    result = await state.shared.send(Command(name=verb, call_id=call_id, args=args))
    if result.delivered:
        body = {"call_id": call_id, "verb": verb, "accepted": True}
        return json_response(202, {**body, "instance_id": result.instance_id})
    if result.error == SHARED_STATE_DOWN:
        return error_response(503, "shared_state_unavailable", "cannot reach the shared state")
    return await _not_live(request, key)


async def _not_live(request: web.Request, key: str) -> web.Response:
    """409 for a call the records know (it is not live: it has ended), else 404."""
    try:
        call = await request.app[RECORDS_STORE].get_call(key)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        _log.warning("verbs_api.db_unavailable", error=type(exc).__name__)
        call = None
    if call is not None:  # recorded, and no longer live here: it has ended
        return error_response(409, "call_ended", "that call has ended")
    return error_response(404, "not_found", "no live call with that id or CallSid here")
