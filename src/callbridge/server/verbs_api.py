"""POST /api/calls/{call}/transfer and /digits: an operator (or a script) hands a live
call to a person from the bot's transfer list, or presses keys on its far end.

`{call}` is our call id or Twilio's CallSid; the call must be live on this instance.
Guarded by CALLBRIDGE_API_TOKEN like the records API. 202 once the verb is under way
(a transfer: the agent tells the caller first); 400 for a bad request, 404 for a call
nobody knows, 409 for a call that has ended or cannot take the verb now.
"""

from __future__ import annotations

import msgspec
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from callbridge.bridge.call_verbs import CALL_ENDED
from callbridge.server.api_auth import authorize, error_response, json_response
from callbridge.server.call_runner import CallRunner
from callbridge.server.records_api import RECORDS_STORE
from callbridge.server.state import APP_STATE, AppState
from callbridge.verbs import digits_problem

_MAX_BODY_BYTES = 4096


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/calls/{call}/transfer", transfer)
    app.router.add_post("/api/calls/{call}/digits", digits)


def live_call(state: AppState, key: str) -> CallRunner | None:
    """The live call with this id or CallSid on this instance."""
    runner = state.registry.live.get(key)
    if runner is None:
        call_id = state.registry.call_id_for_sid(key)
        runner = state.registry.live.get(call_id) if call_id else None
    return runner


async def transfer(request: web.Request) -> web.Response:
    return await _verb(request, "transfer", "target")


async def digits(request: web.Request) -> web.Response:
    return await _verb(request, "digits", "digits")


async def _verb(request: web.Request, verb: str, field: str) -> web.Response:
    denied = authorize(request, "the calls API")
    if denied is not None:
        return denied
    state = request.app[APP_STATE]
    body = await request.content.read(_MAX_BODY_BYTES + 1)
    try:
        if len(body) > _MAX_BODY_BYTES:
            raise ValueError("the body is too large")
        fields = msgspec.json.decode(body) if body else {}
        if not isinstance(fields, dict):
            raise ValueError("the body must be a JSON object")
    except (msgspec.DecodeError, ValueError) as exc:
        return error_response(400, "invalid_body", str(exc))
    argument = fields.get(field)
    problem = _argument_problem(state, verb, argument)
    if problem is not None:
        return error_response(400, "invalid_parameter", problem)
    assert isinstance(argument, str)
    key = request.match_info["call"]
    runner = live_call(state, key)
    if runner is None:
        return await _not_live(request, key)
    refusal = runner.request_verb(verb, argument)
    if refusal is not None:
        code = "call_ended" if refusal == CALL_ENDED else "not_possible"
        return error_response(409, code, refusal)
    return json_response(202, {"call_id": runner.call_id, "verb": verb, "status": "started"})


def _argument_problem(state: AppState, verb: str, argument: object) -> str | None:
    if verb == "digits":
        return digits_problem(argument)
    transfer = state.bot.verbs.transfer
    if transfer is None:
        return "the bot has no transfer targets"
    if transfer.target(argument) is None:
        names = ", ".join(repr(t.name) for t in transfer.targets)
        return f"target must be one of {names}"
    return None


async def _not_live(request: web.Request, key: str) -> web.Response:
    """409 for a call that has ended (its record says so), else 404."""
    try:
        record = await request.app[RECORDS_STORE].get_call(key)
    except (SQLAlchemyError, OSError, TimeoutError):
        record = None
    if record is not None:
        return error_response(409, "call_ended", CALL_ENDED)
    return error_response(404, "not_found", "no live call with that id or CallSid here")
