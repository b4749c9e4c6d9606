"""Placing outbound calls through Twilio's REST API (the `twilio` package's client)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import NamedTuple

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from callbridge.config import Settings
from callbridge.twilio import call_parameters

STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
REST_TIMEOUT_SECONDS = 15.0


class OutboundCallError(Exception):
    """Why a call was not placed. `field`: the input at fault (`to`, `parameters`, ...),
    if it was ours to refuse; `rest`: Twilio refused it or could not be reached."""

    def __init__(
        self, message: str, exit_code: int = 1, *, field: str | None = None, rest: bool = False
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.field = field
        self.rest = rest


def twilio_client(settings: Settings) -> Client:
    if not settings.twilio_account_sid or not settings.auth_token:
        raise OutboundCallError(
            "configuration error: TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set", 2
        )
    # A Twilio that does not answer is an error after a while, not a wait for ever (the
    # server places calls from worker threads).
    http = TwilioHttpClient(timeout=REST_TIMEOUT_SECONDS)
    if settings.twilio_api_base_url:
        # An empty environment keeps TWILIO_EDGE/TWILIO_REGION from rewriting the host.
        client = Client(
            settings.twilio_account_sid, settings.auth_token, environment={}, http_client=http
        )
        client.api.base_url = settings.twilio_api_base_url
        return client
    return Client(settings.twilio_account_sid, settings.auth_token, http_client=http)


class PlacedCall(NamedTuple):
    call_id: str  # ours, assigned here and carried in the signed TwiML URL
    call_sid: str  # Twilio's


def place_call(
    settings: Settings,
    *,
    call_id: str,
    to: str | None = None,
    from_: str | None = None,
    parameters: Mapping[str, str] | None = None,
    bot: str | None = None,
    voicemail: bool = False,
) -> PlacedCall:
    """Ask Twilio to call `to`; when answered it fetches our /outbound-twiml, whose query
    carries `call_id` (ours, from `new_call_id`), the parameters and the bot, signed
    (`call_parameters`).

    OutboundCallError before anything is placed for parameters beyond the limits (its
    `field` names the culprit), missing settings or a number that is not E.164.

    `voicemail`: Twilio listens for an answering machine while the call goes on
    (asynchronous detection, so a person is never kept waiting) and tells /amd-status."""
    to = to or settings.target_phone_number
    from_ = from_ or settings.twilio_phone_number
    if not to:
        raise OutboundCallError(
            "no number to call: pass one or set TARGET_PHONE_NUMBER", 2, field="to"
        )
    if not from_:
        raise OutboundCallError(
            "no caller ID: pass --from or set TWILIO_PHONE_NUMBER", 2, field="from"
        )
    if not settings.public_url:
        raise OutboundCallError(
            "configuration error: PUBLIC_URL must be set: Twilio fetches "
            "{PUBLIC_URL}/outbound-twiml when the call is answered",
            2,
        )
    client = twilio_client(settings)
    assert settings.auth_token is not None  # twilio_client checked it
    try:
        to = call_parameters.normalize_number(to)  # as Twilio sends it back in `To`
        query = call_parameters.encode(
            call_id=call_id,
            to=to,
            key=call_parameters.parameters_key(settings.auth_token),
            now=time.time(),
            parameters=parameters,
            bot=bot,
        )
    except call_parameters.ParameterError as exc:
        raise OutboundCallError(str(exc), field=exc.field) from None
    detection: dict[str, str] = {}
    if voicemail:
        detection = {
            "machine_detection": "DetectMessageEnd",
            "async_amd": "true",
            "async_amd_status_callback": f"{settings.public_url}/amd-status",
            "async_amd_status_callback_method": "POST",
        }
    try:
        call = client.calls.create(
            to=to,
            from_=from_,
            url=f"{settings.public_url}/outbound-twiml?{query}",
            method="POST",
            status_callback=f"{settings.public_url}/call-status",
            status_callback_event=STATUS_EVENTS,
            status_callback_method="POST",
            **detection,
        )
    except TwilioRestException as exc:
        raise OutboundCallError(explain_rest_error(exc, to=to, from_=from_), rest=True) from None
    except TwilioException as exc:
        raise OutboundCallError(f"Twilio request failed: {exc}", rest=True) from None
    except OSError as exc:  # requests' connection errors derive from OSError
        raise OutboundCallError(f"could not reach Twilio: {exc}", rest=True) from None
    return PlacedCall(call_id=call_id, call_sid=str(call.sid))


def explain_rest_error(exc: TwilioRestException, *, to: str, from_: str) -> str:
    """One line a person can act on, for the errors people actually hit."""
    code = exc.code
    if exc.status == 401 or code == 20003:
        return "Twilio rejected the credentials: check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
    if code == 21219:
        return (
            f"{to} is not a verified number: trial accounts can only call numbers "
            "verified in the Twilio console"
        )
    if code in (21211, 21217):
        return f"{to} is not a valid phone number (use E.164, e.g. +15551234567)"
    if code in (21210, 21212, 21606):
        return f"{from_} is not a Twilio number (or verified caller ID) on this account"
    message = (exc.msg or "").removeprefix("Unable to create record: ")
    return f"Twilio error {code}: {message}"
