"""Hanging up from our side: the agent says goodbye, and the line closes once Twilio has
played it, not when the agent finished generating it.

Who asks: the agent (its `end_call` tool), an operator (the API or the command line), or
the silence rule (the caller said nothing through every check-in). The goodbye is the
first reply the agent starts after the request (not the one that asked, for `end_call`
is called in a reply of its own); when that reply is done, the bridge sends a mark after
its audio, and Twilio's echo of that mark, which comes once everything queued before it
has played, ends the call. If the goodbye is interrupted, the next reply says it again.
If no goodbye plays within the wait, the call ends all the same: never an open line
with nobody on our side.
"""

from __future__ import annotations

from typing import Literal

from callbridge.agent import events as agent
from callbridge.bridge.actions import Action, Log, SendToAgent, StartTimer
from callbridge.bridge.timers import Timer

HANG_UP_MARK = "callbridge-hang-up"
HangUpBy = Literal["agent", "operator", "silence"]

# For an operator's hang-up with a goodbye of their own, and for the silence rule.
SAY_GOODBYE_INSTRUCTIONS = (
    "Tell the caller, in one short friendly sentence, that you are ending the call now, "
    "and say goodbye. Do not ask any question."
)
# What `end_call`'s result tells the model: the line stays open for its goodbye.
END_CALL_RESULT = (
    "The call will end as soon as you have said goodbye. Say one short goodbye now and "
    "nothing else."
)


def say_instructions(text: str) -> str:
    """A `reply.create`'s instructions that make the agent say `text` now."""
    return (
        "Say the following to the caller now, in your own voice, word for word, and "
        f"nothing else: {text}"
    )


class HangUpAfterGoodbye:
    """One call's hang-up: requested once; the goodbye reply; whether it is over."""

    __slots__ = ("_asking_reply", "by", "goodbye_reply", "requested", "wait_seconds")

    def __init__(self, wait_seconds: float) -> None:
        self.wait_seconds = wait_seconds
        self.requested = False
        self.by: HangUpBy | None = None
        self.goodbye_reply: str | None = None
        self._asking_reply: str | None = None  # the reply that asked (end_call's pre-amble)

    def request(
        self, by: HangUpBy, current_reply: str | None, instructions: str | None
    ) -> list[Action]:
        """Wait for a goodbye (asked for with `instructions`, unless the agent says its
        own), within the wait."""
        self.requested = True
        self.by = by
        self._asking_reply = current_reply
        actions: list[Action] = [
            Log.info("call.hanging_up", by=by, within_seconds=self.wait_seconds),
            StartTimer(Timer.HANG_UP, self.wait_seconds),
        ]
        if instructions is not None:
            actions.append(SendToAgent(agent.encode_reply_create(instructions)))
        return actions

    def reply_started(self, reply_id: str | None) -> None:
        if self.requested and self.goodbye_reply is None and reply_id != self._asking_reply:
            self.goodbye_reply = reply_id

    def reply_interrupted(self, reply_id: str | None) -> None:
        """The caller talked over the goodbye: the agent's next reply is the goodbye."""
        if self.requested and reply_id == self.goodbye_reply:
            self.goodbye_reply = None
            self._asking_reply = reply_id

    def is_goodbye(self, reply_id: str | None) -> bool:
        return self.requested and self.goodbye_reply is not None and reply_id == self.goodbye_reply
