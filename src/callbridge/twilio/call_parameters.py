"""Custom parameters of a placed call, signed into the query of its TwiML URL.

Whoever places a call (`callbridge call`, `POST /api/calls`) may give it parameters (a
customer's name, an order number) and a bot. They have to reach the server when Twilio
fetches `/outbound-twiml`, and the placing machine may not be the server: so they ride
in that URL's query string, the one place Twilio carries them (it drops query strings
on stream URLs), with our call id, the number called and an expiry, under an
HMAC-SHA256 keyed by a secret both machines hold (derived from TWILIO_AUTH_TOKEN).

The MAC means that nobody who learns the URL (from Twilio's call logs, a proxy's log,
an API key that may place calls) can change a parameter, add one, reuse the URL for
another number, or use it once it has expired. Twilio's own request signature covers
the whole URL too, but only says that Twilio sent it, not who wrote it.

Pure: no I/O, no clock (the caller passes the time).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qsl, quote, urlencode

import msgspec

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "EXPIRED",
    "MALFORMED",
    "MAX_BOT_NAME_CHARS",
    "MAX_KEY_CHARS",
    "MAX_PARAMETERS",
    "MAX_QUERY_CHARS",
    "MAX_VALUE_CHARS",
    "OTHER_NUMBER",
    "TAMPERED",
    "TOO_LARGE",
    "CallParameters",
    "ParameterError",
    "Refusal",
    "decode",
    "encode",
    "normalize_number",
    "parameters_key",
    "parse_assignment",
    "validate",
]

# The limits, documented in docs/placing-calls.md. The query stays far below the 4,000
# characters Twilio accepts in a callback URL and what proxies pass in a request line.
MAX_PARAMETERS = 20
MAX_KEY_CHARS = 40
MAX_VALUE_CHARS = 256
MAX_BOT_NAME_CHARS = 64
MAX_QUERY_CHARS = 2000
# Twilio fetches the URL when the callee answers: after the ring time (at most 600 s) and
# any queueing behind the account's calls-per-second limit.
DEFAULT_TTL_SECONDS = 3600

_VERSION = "1"
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_BOT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CALL_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_PHONE = re.compile(r"\+[1-9][0-9]{1,14}")
_ADDRESS = re.compile(r"(client|sip):[^\s]{1,200}")
_PHONE_PUNCTUATION = str.maketrans("", "", " -.()")
_PARAM_PREFIX = "p."
_FIELDS = frozenset({"v", "id", "to", "exp", "bot", "mac"})
# Each field of the signed message, in a fixed order; the parameters last, sorted.
_DOMAIN = b"callbridge call parameters v1"


class ParameterError(ValueError):
    """A parameter, bot name or number that cannot be placed: `field` names it (`to`,
    `bot`, `parameters`, or `parameters.<key>`), the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class CallParameters:
    """What the placing side signed: checked values, read-only."""

    call_id: str
    to: str
    expires_at: int  # Unix time, seconds
    bot: str | None = None
    parameters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Refusal:
    """Why a query was not accepted. `reason` is one of a few fixed texts (safe to log,
    never the request's own text): tampered, expired, for another number, too large,
    malformed."""

    reason: str


TAMPERED = Refusal("tampered: the parameters do not match their signature")
EXPIRED = Refusal("expired")
OTHER_NUMBER = Refusal("for another number")
TOO_LARGE = Refusal("too large")
MALFORMED = Refusal("malformed")


def parameters_key(secret: str) -> bytes:
    """The MAC key, derived from a shared secret (TWILIO_AUTH_TOKEN): never the token
    itself, so that these MACs and Twilio's signatures use different keys."""
    return hmac.new(secret.encode(), _DOMAIN, hashlib.sha256).digest()


def normalize_number(to: str) -> str:
    """`to` as Twilio will send it back in the webhook's `To`: E.164 with the spaces,
    dashes, dots and brackets people write taken out, or a `client:`/`sip:` address as
    given. ParameterError for anything else."""
    text = to.strip()
    if _ADDRESS.fullmatch(text):
        return text
    number = text.translate(_PHONE_PUNCTUATION)
    if _PHONE.fullmatch(number):
        return number
    raise ParameterError(
        "to", f"{to[:50]} is not a valid phone number (use E.164, e.g. +15551234567)"
    )


def parse_assignment(text: str) -> tuple[str, str]:
    """`name=value` (a command line's `--param`) as a pair; ParameterError if there is no
    `=` or the name is empty. The value may contain `=` and may be empty."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise ParameterError("parameters", f"{text!r} is not name=value")
    return key, value


def validate(
    parameters: Mapping[str, str], bot: str | None = None
) -> tuple[Mapping[str, str], str | None]:
    """The parameters and bot name checked against the limits; ParameterError naming the
    first thing that is not allowed."""
    if len(parameters) > MAX_PARAMETERS:
        raise ParameterError(
            "parameters", f"{len(parameters)} parameters: at most {MAX_PARAMETERS} are allowed"
        )
    for key, value in parameters.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key) or len(key) > MAX_KEY_CHARS:
            raise ParameterError(
                "parameters",
                f"parameter name {str(key)[:50]!r}: 1 to {MAX_KEY_CHARS} letters, digits, "
                "'_' or '-', starting with a letter",
            )
        if not isinstance(value, str):
            raise ParameterError(f"parameters.{key}", f"parameter {key}: the value must be text")
        if len(value) > MAX_VALUE_CHARS:
            raise ParameterError(
                f"parameters.{key}",
                f"parameter {key}: {len(value)} characters, at most {MAX_VALUE_CHARS}",
            )
        if not value.isprintable():
            raise ParameterError(
                f"parameters.{key}",
                f"parameter {key}: printable text only (no line breaks or control characters)",
            )
    if bot is not None and (not _BOT.fullmatch(bot) or len(bot) > MAX_BOT_NAME_CHARS):
        raise ParameterError(
            "bot",
            f"bot name {bot[:80]!r}: 1 to {MAX_BOT_NAME_CHARS} letters, digits, '_', '-' "
            "or '.', starting with a letter or digit",
        )
    return MappingProxyType(dict(parameters)), bot


def encode(
    *,
    call_id: str,
    to: str,
    key: bytes,
    now: float,
    parameters: Mapping[str, str] | None = None,
    bot: str | None = None,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
) -> str:
    """The signed query string (no leading '?') for the outbound TwiML URL.

    Raises ParameterError when something is beyond the limits, so that nothing is placed."""
    checked, bot = validate(parameters or {}, bot)
    to = normalize_number(to)
    if not _CALL_ID.fullmatch(call_id):
        raise ValueError("call id: 8 to 64 URL-safe characters")
    values = CallParameters(
        call_id=call_id, to=to, expires_at=int(now) + ttl_seconds, bot=bot, parameters=checked
    )
    pairs = [("v", _VERSION), ("id", call_id), ("to", to), ("exp", str(values.expires_at))]
    if bot is not None:
        pairs.append(("bot", bot))
    pairs.extend((_PARAM_PREFIX + k, v) for k, v in sorted(checked.items()))
    pairs.append(("mac", _mac(key, values)))
    query = urlencode(pairs, quote_via=quote, safe="")
    if len(query) > MAX_QUERY_CHARS:
        raise ParameterError(
            "parameters",
            f"the parameters take {len(query)} characters in the call's URL, at most "
            f"{MAX_QUERY_CHARS}: send fewer or shorter ones",
        )
    return query


def decode(
    query: str, *, key: bytes | None, to: str | None, now: float
) -> CallParameters | Refusal:
    """The values of a signed query, checked; or why they are refused.

    `to` is the webhook's `To`. `key` None skips the MAC (a server that holds no secret,
    the local demo mode): every other check still applies."""
    if len(query) > MAX_QUERY_CHARS:
        return TOO_LARGE
    try:
        pairs = parse_qsl(
            query,
            keep_blank_values=True,
            strict_parsing=True,
            errors="strict",
            max_num_fields=MAX_PARAMETERS + len(_FIELDS),
        )
    except UnicodeError:
        return MALFORMED
    except ValueError as exc:
        return TOO_LARGE if "Max number of fields" in str(exc) else MALFORMED
    fields: dict[str, str] = {}
    parameters: dict[str, str] = {}
    for name, value in pairs:
        if name.startswith(_PARAM_PREFIX):
            target, name = parameters, name[len(_PARAM_PREFIX) :]
        elif name in _FIELDS:
            target = fields
        else:
            return MALFORMED  # a field the MAC would not cover
        if name in target:
            return MALFORMED
        target[name] = value
    if fields.get("v") != _VERSION or not {"id", "to", "exp", "mac"} <= fields.keys():
        return MALFORMED
    expires = fields["exp"]
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
        return MALFORMED
    values = CallParameters(
        call_id=fields["id"],
        to=fields["to"],
        expires_at=int(expires),
        bot=fields.get("bot"),
        parameters=MappingProxyType(parameters),
    )
    if key is not None and not hmac.compare_digest(
        _mac(key, values).encode(), fields["mac"].encode("utf-8", "replace")
    ):
        return TAMPERED
    if now > values.expires_at:
        return EXPIRED
    if to is not None and to != values.to:
        return OTHER_NUMBER
    try:
        validate(values.parameters, values.bot)
    except ParameterError:
        return MALFORMED
    if not _CALL_ID.fullmatch(values.call_id):
        return MALFORMED
    return values


def _mac(key: bytes, values: CallParameters) -> str:
    # JSON of a fixed-order list: unambiguous, so no two different sets of values sign alike.
    message = msgspec.json.encode(
        [
            _VERSION,
            values.call_id,
            values.to,
            values.expires_at,
            values.bot,
            sorted(values.parameters.items()),
        ]
    )
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
