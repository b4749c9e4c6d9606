"""Placing outbound calls through Twilio's REST API (the `twilio` package's client)."""

from __future__ import annotations

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from callbridge.config import Settings

STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]


class OutboundCallError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def twilio_client(settings: Settings) -> Client:
    if not settings.twilio_account_sid or not settings.auth_token:
        raise OutboundCallError(
            "configuration error: TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set", 2
        )
    if settings.twilio_api_base_url:
        # An empty environment keeps TWILIO_EDGE/TWILIO_REGION from rewriting the host.
        client = Client(settings.twilio_account_sid, settings.auth_token, environment={})
        client.api.base_url = settings.twilio_api_base_url
        return client
    return Client(settings.twilio_account_sid, settings.auth_token)


def place_call(
    settings: Settings,
    *,
    to: str | None = None,
    from_: str | None = None,
    voicemail: bool = False,
) -> str:
    """Ask Twilio to call `to`; when answered it fetches our /outbound-twiml. Returns the SID.

    `voicemail`: Twilio listens for an answering machine while the call goes on
    (asynchronous detection, so a person is never kept waiting) and tells /amd-status."""
    to = to or settings.target_phone_number
    from_ = from_ or settings.twilio_phone_number
    if not to:
        raise OutboundCallError("no number to call: pass one or set TARGET_PHONE_NUMBER", 2)
    if not from_:
        raise OutboundCallError("no caller ID: pass --from or set TWILIO_PHONE_NUMBER", 2)
    if not settings.public_url:
        raise OutboundCallError(
            "configuration error: PUBLIC_URL must be set: Twilio fetches "
            "{PUBLIC_URL}/outbound-twiml when the call is answered",
            2,
        )
    client = twilio_client(settings)
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
            url=f"{settings.public_url}/outbound-twiml",
            method="POST",
            status_callback=f"{settings.public_url}/call-status",
            status_callback_event=STATUS_EVENTS,
            status_callback_method="POST",
            **detection,
        )
    except TwilioRestException as exc:
        raise OutboundCallError(explain_rest_error(exc, to=to, from_=from_)) from None
    except TwilioException as exc:
        raise OutboundCallError(f"Twilio request failed: {exc}") from None
    except OSError as exc:  # requests' connection errors derive from OSError
        raise OutboundCallError(f"could not reach Twilio: {exc}") from None
    return str(call.sid)


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
