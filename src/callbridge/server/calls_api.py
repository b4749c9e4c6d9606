"""POST /api/calls: place an outbound call from the server, with custom parameters.

For a CRM or a script: a JSON body (`to`, optional `from`, `parameters`, `bot`), the same
bearer token as the records API (`api_auth`), and 201 with our call id and Twilio's
CallSid. The call is placed as `callbridge call` places it (`twilio.rest.place_call`):
the parameters ride, signed, in the URL Twilio fetches when the callee answers.
Shapes and errors as in `callbridge/records/openapi.yaml`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiohttp import web

from callbridge.server.api_auth import authorize, json_response
from callbridge.server.call_registry import new_call_id
from callbridge.server.state import APP_STATE
from callbridge.twilio import call_parameters
from callbridge.twilio.call_parameters import ParameterError
from callbridge.twilio.rest import OutboundCallError, place_call

# Far above what the limits allow (call_parameters), far below what would cost anything.
MAX_BODY_BYTES = 64 * 1024
_FIELDS = frozenset({"to", "from", "parameters", "bot", "voicemail"})
_JSON = "application/json"


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/calls", place)


class _Invalid(Exception):
    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


def _error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    body: dict[str, str] = {"error": code, "message": message}
    if field is not None:
        body["field"] = field
    return json_response(status, body)


async def place(request: web.Request) -> web.Response:
    denied = authorize(request, "the calls API")
    if denied is not None:
        return denied
    state = request.app[APP_STATE]
    try:
        body = await _body(request)
        to, from_, parameters, bot = _call_of(body)
        voicemail = body.get("voicemail", False)
        if not isinstance(voicemail, bool):
            raise _Invalid("invalid_field", "voicemail: true or false", "voicemail")
    except _Invalid as exc:
        return _error(400, exc.code, str(exc), exc.field)
    if bot is not None and bot not in state.bots:
        known = ", ".join(sorted(state.bots))
        return _error(400, "invalid_field", f"bot: no bot named {bot!r} (known: {known})", "bot")
    answering = state.bots[bot or "default"].voicemail
    voicemail = voicemail or (answering is not None and answering.detect)
    try:
        # twilio's client is synchronous: a thread, so that no call waits for Twilio.
        placed = await asyncio.to_thread(
            place_call,
            state.settings,
            call_id=new_call_id(),
            to=to,
            from_=from_,
            parameters=parameters,
            bot=bot,
            voicemail=voicemail,
        )
    except OutboundCallError as exc:
        if exc.rest:
            state.log.warning("api.call_not_placed", to=to, why=str(exc))
            return _error(502, "twilio_error", str(exc))
        if exc.field is not None:
            return _error(400, "invalid_field", str(exc), exc.field)
        state.log.error("api.call_not_placed", to=to, why=str(exc))
        return _error(503, "not_configured", str(exc))
    state.log.info(
        "api.call_placed",
        call_id=placed.call_id,
        call_sid=placed.call_sid,
        to=to,
        bot=bot,
        parameters=sorted(parameters),
    )
    return json_response(201, {"call_id": placed.call_id, "call_sid": placed.call_sid})


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != _JSON:
        raise _Invalid("invalid_body", f"send a JSON object with Content-Type: {_JSON}")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _Invalid("invalid_body", f"the body is larger than {MAX_BODY_BYTES} bytes")
    raw = bytearray()
    while len(raw) <= MAX_BODY_BYTES:  # read() returns what has arrived: loop to the end
        chunk = await request.content.read(MAX_BODY_BYTES + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > MAX_BODY_BYTES:
        raise _Invalid("invalid_body", f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise _Invalid("invalid_body", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _Invalid("invalid_body", "the body must be a JSON object")
    return body


def _call_of(body: dict[str, Any]) -> tuple[str, str | None, dict[str, str], str | None]:
    """The call the body asks for, checked against the limits before anything is placed."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise _Invalid(
            "invalid_field",
            f"unknown field {unknown[0][:50]!r}: use {', '.join(sorted(_FIELDS))}",
            unknown[0][:50],
        )
    to = body.get("to")
    if not isinstance(to, str) or not to:
        raise _Invalid("invalid_field", "to: the number to call, as a string", "to")
    from_ = body.get("from")
    if from_ is not None and not isinstance(from_, str):
        raise _Invalid("invalid_field", "from: your Twilio number, as a string", "from")
    bot = body.get("bot")
    if bot is not None and not isinstance(bot, str):
        raise _Invalid("invalid_field", "bot: a bot's name, as a string", "bot")
    parameters = body.get("parameters", {})
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise _Invalid(
            "invalid_field", "parameters: an object whose values are strings", "parameters"
        )
    for key, value in parameters.items():
        if not isinstance(value, str):
            raise _Invalid(
                "invalid_field",
                f"parameter {key[:50]}: the value must be a string",
                f"parameters.{key[:50]}",
            )
    try:
        to = call_parameters.normalize_number(to)
        if from_ is not None:
            from_ = _caller_id(from_)
        call_parameters.validate(parameters, bot)
    except ParameterError as exc:
        raise _Invalid("invalid_field", str(exc), exc.field) from None
    return to, from_, parameters, bot


def _caller_id(from_: str) -> str:
    try:
        return call_parameters.normalize_number(from_)
    except ParameterError:
        raise ParameterError(
            "from", f"{from_[:50]} is not a valid phone number (use E.164, e.g. +15551234567)"
        ) from None
