"""What a bot lets its agent do to the call itself: hand the caller to a person
(`Transfer`), press keys on the far end's keypad (`keypad_out`), leave a message on an
answering machine (`Voicemail`), hang up (`end_call`, listed with the bot's tools:
`Bot(..., tools=(end_call, my_tool))`). Plain settings and the tool definitions the agent
sees; callbridge performs the verbs on the Twilio side (see docs/call-verbs.md and
docs/transfers-and-voicemail.md).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from callbridge.tools import Tool, tool

TRANSFER_TOOL = "transfer_call"
DIGITS_TOOL = "send_digits"
VERB_TOOLS = frozenset({TRANSFER_TOOL, DIGITS_TOOL})

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
# A SIP URI as Twilio's <Sip> noun takes it: sip:user@host, with optional ;params.
_SIP = re.compile(r"^sips?:[^\s<>\"@]+@[^\s<>\"]+$")
# Twilio's <Play digits>: 0-9, A-D, # and *, w (half a second's pause) and W (a second).
_DIGITS = re.compile(r"^[0-9A-D#*wW]{1,32}$")
MAX_NAME_CHARS = 64

# What Twilio's asynchronous answering-machine detection may report (AnsweredBy).
ANSWERED_BY = frozenset(
    {
        "human",
        "unknown",
        "fax",
        "machine_start",
        "machine_end_beep",
        "machine_end_silence",
        "machine_end_other",
    }
)
MESSAGE_END = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})


def is_address(value: str) -> bool:
    """An E.164 number or a sip: address, the two things a transfer may dial."""
    return bool(_E164.match(value) or _SIP.match(value))


def digits_problem(digits: object) -> str | None:
    """Why these cannot be played as keypad tones, or None."""
    if not isinstance(digits, str) or not _DIGITS.match(digits):
        return "digits must be 1 to 32 of 0-9, A-D, # and *, with w or W for a pause"
    return None


@dataclass(frozen=True)
class TransferTarget:
    """Someone the agent may hand the caller to: a name the model chooses by, and the
    E.164 number (`+15551234567`) or `sip:` address dialled."""

    name: str
    to: str

    def __post_init__(self) -> None:
        if not self.name.strip() or len(self.name) > MAX_NAME_CHARS:
            raise ValueError(f"transfer target name must be 1 to {MAX_NAME_CHARS} characters")
        if not is_address(self.to):
            raise ValueError(
                f"transfer target {self.name!r}: {self.to!r} is neither an E.164 number "
                "(+15551234567) nor a sip: address (sip:desk@example.com)"
            )

    @property
    def is_sip(self) -> bool:
        return self.to.startswith(("sip:", "sips:"))


@dataclass(frozen=True)
class Transfer:
    """The bot's transfer allow-list and how the person is rung.

    `caller_id`: the number the person sees (E.164; None: Twilio's default, the caller's
    number). `ring_seconds`: how long their phone rings before the caller comes back to
    the agent. `record`: record the transferred conversation (both sides, from answer).
    """

    targets: Sequence[TransferTarget]
    caller_id: str | None = None
    ring_seconds: int = 30
    record: bool = False

    def __post_init__(self) -> None:
        targets = tuple(self.targets)
        if not targets or not all(isinstance(t, TransferTarget) for t in targets):
            raise ValueError("Transfer(targets=...) takes one or more TransferTarget")
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise ValueError("transfer target names must differ")
        if self.caller_id is not None and not _E164.match(self.caller_id):
            raise ValueError(f"transfer caller_id {self.caller_id!r} is not an E.164 number")
        if not 5 <= self.ring_seconds <= 600:
            raise ValueError("transfer ring_seconds must be between 5 and 600")
        object.__setattr__(self, "targets", targets)

    def target(self, name: object) -> TransferTarget | None:
        for target in self.targets:
            if target.name == name:
                return target
        return None


@dataclass(frozen=True)
class Voicemail:
    """What the agent says to an answering machine, word for word, before it hangs up.

    `message` may name the call's custom parameters in braces (`{first_name}`); a name
    the call does not have is left out. `detect`: ask Twilio to listen for a machine on
    the bot's outbound calls (as `callbridge call --voicemail` does for one call).
    """

    message: str
    detect: bool = True

    def __post_init__(self) -> None:
        if not self.message.strip():
            raise ValueError("Voicemail(message=...) must say something")
        try:
            list(string.Formatter().parse(self.message))
        except ValueError as exc:
            raise ValueError(f"Voicemail message is not a valid template: {exc}") from None

    def text_for(self, parameters: Mapping[str, str]) -> str:
        """The message with the call's parameters filled in."""
        return self.message.format_map(_Blank(parameters))


class _Blank(dict[str, str]):
    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)

    def __missing__(self, key: str) -> str:
        return ""


@dataclass(frozen=True)
class CallVerbs:
    """The verbs a call's agent is offered (from its bot)."""

    transfer: Transfer | None = None
    keypad_out: bool = False
    voicemail: Voicemail | None = None
    tool_names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        names = set()
        if self.transfer is not None:
            names.add(TRANSFER_TOOL)
        if self.keypad_out:
            names.add(DIGITS_TOOL)
        object.__setattr__(self, "tool_names", frozenset(names))

    def tool_definitions(self) -> list[dict[str, Any]]:
        """The verbs' tools as the agent sees them: the transfer's targets by name only."""
        tools: list[dict[str, Any]] = []
        if self.transfer is not None:
            names = [t.name for t in self.transfer.targets]
            tools.append(
                {
                    "type": "function",
                    "name": TRANSFER_TOOL,
                    "description": (
                        "Hand the caller over to a person. Use it when the caller asks for a "
                        "person or you cannot help. First tell the caller you are "
                        "transferring them; the line moves once you have said it."
                    ),
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "target": {
                                "type": "string",
                                "enum": names,
                                "description": "Who to transfer the caller to.",
                            }
                        },
                        "required": ["target"],
                    },
                }
            )
        if self.keypad_out:
            tools.append(
                {
                    "type": "function",
                    "name": DIGITS_TOOL,
                    "description": (
                        "Press keys on the phone keypad, to pick options in an automated "
                        "phone menu. The menu's next prompt follows."
                    ),
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "digits": {
                                "type": "string",
                                "pattern": "^[0-9A-D#*wW]{1,32}$",
                                "description": (
                                    "The keys, in order: 0-9, * and #; w waits half a second."
                                ),
                            }
                        },
                        "required": ["digits"],
                    },
                }
            )
        return tools


@dataclass(frozen=True)
class VerbTool(Tool):
    """A tool the bridge performs on the call (`verb` says which) instead of running it."""

    verb: str = ""


@tool
async def _end_call() -> str:
    """End the phone call. Call it when the conversation is over: the caller said goodbye,
    asked to hang up, or has nothing more to ask. Do not say goodbye before calling it;
    you say your goodbye right after, and the line closes once the caller has heard it."""
    return "the call ends after your goodbye"


# The bridge performs it: once the agent's goodbye has played, the line closes.
end_call = VerbTool(
    name="end_call",
    description=_end_call.description,
    function=_end_call.function,
    arguments_model=_end_call.arguments_model,
    verb="hang-up",
)
