"""What the adapters tell a call's bridge about the verbs that act on the call: requests
(from the API or the command line; the agent's come as tool calls), the REST update's
outcome, and Twilio's callbacks (the dial's end, the person answering, the machine
detection's verdict)."""

from __future__ import annotations

import msgspec


class TransferRequested(msgspec.Struct, frozen=True):
    """Hand the caller to this allow-listed target (the agent announces it first)."""

    target: str


class DigitsRequested(msgspec.Struct, frozen=True):
    """Play these keypad tones on the call (`<Play digits>`), then carry on."""

    digits: str


class RedirectFinished(msgspec.Struct, frozen=True):
    """The REST update of a `RedirectCall` is done: `error` None if Twilio took it."""

    verb: str
    error: str | None = None


class DialEnded(msgspec.Struct, frozen=True):
    """The transfer's `<Dial>` is over (its action callback): Twilio's DialCallStatus."""

    status: str


class TransferAnswered(msgspec.Struct, frozen=True):
    """The person the caller is transferred to picked up."""


class CallCompleted(msgspec.Struct, frozen=True):
    """Twilio says the call is over (its status callback), whatever its streams did."""


class AmdVerdict(msgspec.Struct, frozen=True):
    """Twilio's answering-machine detection says who answered (AnsweredBy)."""

    answered_by: str
