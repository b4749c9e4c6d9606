"""The verbs that act on the call itself, as policy: transfer to a person, keypad tones
out, a message left on an answering machine. No I/O.

Each verb waits for what the caller must hear first (Twilio's mark after the agent's
announcement, or after the voicemail message: what was played, not what was generated),
then acts. Transfers and digits replace the call's TwiML (`RedirectCall`); the stream
ends and, unless the transfer was answered, a new one re-attaches (`reattach`). One verb
at a time.
"""

from __future__ import annotations

import enum
import json

from callbridge.verbs import CallVerbs, TransferTarget, digits_problem

CALL_ENDED = "the call has ended"  # why a verb cannot be done, wherever it is asked for
VERB_MARK = "callbridge-verb-ready"  # sent after the reply the verb waits for
# At most this long for the announcement (or the voicemail message) to be generated and
# played; then the verb goes ahead all the same.
ANNOUNCE_SECONDS = 15.0
MESSAGE_SECONDS = 60.0
# After the digits' update, the stream is due back within this (tones, then a handshake).
DIGITS_WAIT_SECONDS = 30.0
# A dial rings at most ring_seconds; Twilio's own set-up and callback come on top.
DIAL_SLACK_SECONDS = 30.0

ANNOUNCE_INSTRUCTIONS = (
    "Tell the caller, in one short sentence, that you are transferring them to {name} now. "
    "Do not ask any question."
)
TRANSFER_FAILED_INSTRUCTIONS = (
    "The transfer to {name} did not go through ({why}); the caller is back with you. Tell "
    "them so in one short sentence and ask how else you can help."
)
TRANSFER_NOT_STARTED_INSTRUCTIONS = (
    "The transfer to {name} could not be started. Tell the caller in one short sentence "
    "and ask how else you can help."
)
VOICEMAIL_INSTRUCTIONS = (
    "An answering machine is recording. Say this, word for word, and nothing else: {message}"
)
# What each failed DialCallStatus means, told to the agent.
DIAL_FAILURES = {
    "busy": "the line was busy",
    "no-answer": "nobody answered",
    "failed": "the call could not be placed",
    "canceled": "the call was cancelled",
}
DIAL_ANSWERED = frozenset({"completed", "answered"})


class Phase(enum.Enum):
    IDLE = "idle"
    ANNOUNCING = "announcing"  # the agent tells the caller; then the redirect
    REDIRECTING = "redirecting"  # the REST update is on its way
    DIALING = "dialing"  # Twilio rings the person
    BACK = "back"  # the dial failed: the caller is coming back to the agent
    SENDING_DIGITS = "sending-digits"  # <Play digits>, then a new stream
    LEAVING_MESSAGE = "leaving-message"  # the voicemail message plays; then hang up


class VerbState:
    """The verb under way, and the call's verdicts for its record."""

    __slots__ = (
        "_awaiting_reply",
        "answered_by",
        "by",
        "config",
        "digits",
        "message_pending",
        "phase",
        "replies_started",
        "reply",
        "started_at",
        "target",
        "tool_call_id",
        "transfer_outcome",
    )

    def __init__(self, config: CallVerbs) -> None:
        self.config = config
        self.phase = Phase.IDLE
        self.target: TransferTarget | None = None
        self.digits = ""
        self.tool_call_id: str | None = None  # a tool call answered once the verb is done
        self.by: str | None = None  # who asked for the transfer or digits: agent, operator
        self.reply: str | None = None  # the reply that must play before the verb acts
        self._awaiting_reply = False
        self.transfer_outcome: str | None = None
        self.started_at: float | None = None  # when the transfer began (wall clock)
        self.answered_by: str | None = None
        self.message_pending = False  # leave the voicemail message once the agent speaks
        self.replies_started = 0

    @property
    def busy(self) -> bool:
        return self.phase is not Phase.IDLE

    # --- requests ---------------------------------------------------------------------

    def transfer_refusal(self, name: object) -> str | None:
        transfer = self.config.transfer
        if transfer is None:
            return "this bot has no transfer targets"
        if transfer.target(name) is None:
            names = ", ".join(repr(t.name) for t in transfer.targets)
            return f"unknown transfer target {name!r}: use one of {names}"
        return self._busy_refusal()

    def digits_refusal(self, digits: object) -> str | None:
        return digits_problem(digits) or self._busy_refusal()

    def _busy_refusal(self) -> str | None:
        if self.busy:
            return f"another action is under way ({self.phase.value})"
        return None

    def begin_transfer(self, name: str, tool_call_id: str | None, now: float) -> TransferTarget:
        assert self.config.transfer is not None
        target = self.config.transfer.target(name)
        assert target is not None
        self.phase = Phase.ANNOUNCING
        self.target = target
        self.tool_call_id = tool_call_id
        self.by = _requested_by(tool_call_id)
        self.transfer_outcome = None
        self.started_at = now
        self._await_next_reply()
        return target

    def begin_digits(self, digits: str, tool_call_id: str | None) -> None:
        self.phase = Phase.SENDING_DIGITS
        self.digits = digits
        self.tool_call_id = tool_call_id
        self.by = _requested_by(tool_call_id)

    def begin_message(self) -> None:
        self.phase = Phase.LEAVING_MESSAGE
        self._await_next_reply()

    # --- replies and marks ------------------------------------------------------------

    def _await_next_reply(self) -> None:
        self.reply = None
        self._awaiting_reply = True

    def reply_started(self, reply_id: str | None) -> None:
        self.replies_started += 1
        if self._awaiting_reply and self.reply is None:
            self.reply = reply_id

    def is_awaited(self, reply_id: str | None) -> bool:
        """Whether the verb waits for this reply to have played (then: `VERB_MARK`)."""
        if self._awaiting_reply and self.reply is not None and reply_id == self.reply:
            self._awaiting_reply = False
            return True
        return False

    def ready(self) -> Phase:
        """The awaited reply played (or the wait ran out): what is to happen now."""
        self._awaiting_reply = False
        return self.phase

    # --- the outcome ------------------------------------------------------------------

    def finish(self) -> str | None:
        """The verb is over; the tool call still to answer, if any."""
        call_id = self.tool_call_id
        self.phase = Phase.IDLE
        self.tool_call_id = None
        self.reply = None
        self._awaiting_reply = False
        return call_id


def _requested_by(tool_call_id: str | None) -> str:
    # The agent asks by a tool call; anyone else (the API, the console) is an operator.
    return "agent" if tool_call_id is not None else "operator"


def tool_result(**fields: object) -> str:
    return json.dumps(fields)
