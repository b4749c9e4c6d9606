"""The TwiML that moves a live call on: a transfer's `<Dial>`, keypad tones followed by
a new stream, a stream that re-attaches to the call. Pure functions over strings."""

from __future__ import annotations

from collections.abc import Mapping

from twilio.twiml.voice_response import Connect, Dial, VoiceResponse

# Attributes Twilio takes on <Dial record>: both sides, each on a channel, from answer.
RECORD_FROM_ANSWER = "record-from-answer-dual"


def _with_stream(
    response: VoiceResponse, url: str, parameters: Mapping[str, str], ended_url: str | None
) -> str:
    connect = Connect()
    # No query string on the stream URL: Twilio drops it. Data rides in <Parameter>s.
    stream = connect.stream(url=url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    if ended_url is not None:
        # Run only when the socket closes without the call ending or being redirected
        # (a blip, or our own hang-up): we answer with a new stream or <Hangup>.
        response.redirect(ended_url, method="POST")
    return str(response)


def stream_twiml(url: str, parameters: Mapping[str, str], ended_url: str | None = None) -> str:
    """`<Connect><Stream>`: a stream for the call (a later one re-attaches to its agent),
    then a `<Redirect>` to `ended_url` if given."""
    return _with_stream(VoiceResponse(), url, parameters, ended_url)


def digits_twiml(
    digits: str, url: str, parameters: Mapping[str, str], ended_url: str | None = None
) -> str:
    """Play keypad tones on the call, then open a new stream for it."""
    response = VoiceResponse()
    response.play(digits=digits)
    return _with_stream(response, url, parameters, ended_url)


def dial_twiml(
    to: str,
    *,
    action_url: str,
    answered_url: str,
    caller_id: str | None = None,
    ring_seconds: int = 30,
    record: bool = False,
) -> str:
    """Ring `to` (an E.164 number or a sip: address) and bridge the caller to whoever
    answers. `answered_url` is requested when the person picks up (before they are
    connected), `action_url` when the dial is over, whatever its outcome."""
    response = VoiceResponse()
    dial = Dial(
        action=action_url,
        method="POST",
        timeout=ring_seconds,
        caller_id=caller_id,
        record=RECORD_FROM_ANSWER if record else None,
    )
    if to.startswith(("sip:", "sips:")):
        dial.sip(to, url=answered_url, method="POST")
    else:
        dial.number(to, url=answered_url, method="POST")
    response.append(dial)
    return str(response)


def redirect_twiml(url: str) -> str:
    """Ask Twilio to fetch the call's TwiML from `url` (another instance, say)."""
    response = VoiceResponse()
    response.redirect(url, method="POST")
    return str(response)


def hangup_twiml() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)


def empty_twiml() -> str:
    return str(VoiceResponse())
