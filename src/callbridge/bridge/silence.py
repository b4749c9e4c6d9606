"""Silence: the caller says nothing after the agent's reply has played. The agent checks
in; after a number of check-ins it says goodbye and the call ends.

Judged from what the agent's API reports (the caller's speech starting) and from the
playout ledger (the reply has played, by Twilio's marks), never from audio energy: a
phone line's comfort noise is never quite silent. The wait starts once the agent's
last reply has played out, and stops when the caller speaks or the agent starts another
reply; speech from the caller also starts the count of check-ins over.
"""

from __future__ import annotations

from dataclasses import dataclass

from callbridge.agent import events as agent
from callbridge.bridge.actions import Action, CancelTimer, Log, SendToAgent, StartTimer
from callbridge.bridge.timers import Timer

CHECK_IN_INSTRUCTIONS = (
    "The caller has not said anything for a while. Check in with one short friendly "
    "question, such as whether they are still there."
)


@dataclass(frozen=True)
class SilenceRules:
    """Check in after `prompt_seconds` of silence, at most `prompts` times; then hang up.
    `prompts=0` turns the rule off."""

    prompt_seconds: float = 10.0
    prompts: int = 2

    def __post_init__(self) -> None:
        if self.prompt_seconds <= 0:
            raise ValueError("SilenceRules: prompt_seconds must be above 0")
        if self.prompts < 0:
            raise ValueError("SilenceRules: prompts must be 0 or more")


class Silence:
    """One call's silence rule: whether its wait is armed, and the check-ins so far."""

    __slots__ = ("_armed", "check_ins", "rules")

    def __init__(self, rules: SilenceRules | None) -> None:
        self.rules = rules if rules is not None and rules.prompts > 0 else None
        self._armed = False
        self.check_ins = 0

    @property
    def may_arm(self) -> bool:
        """Whether the rule is on and not already waiting (cheap: asked at every mark)."""
        return self.rules is not None and not self._armed

    def played_out(self) -> list[Action]:
        """The agent's last reply has played and nothing else is going on: wait."""
        if self.rules is None or self._armed:
            return []
        self._armed = True
        return [StartTimer(Timer.SILENCE, self.rules.prompt_seconds)]

    def caller_spoke(self) -> list[Action]:
        self.check_ins = 0
        return self.disarm()

    def disarm(self) -> list[Action]:
        if not self._armed:
            return []
        self._armed = False
        return [CancelTimer(Timer.SILENCE)]

    def waited(self) -> tuple[list[Action], bool]:
        """The wait ran out: the actions of a check-in, or (True) time to hang up."""
        self._armed = False
        if self.rules is None:
            return [], False
        if self.check_ins >= self.rules.prompts:
            return [Log.info("caller.silent", check_ins=self.check_ins)], True
        self.check_ins += 1
        return [
            Log.info("caller.silence_check_in", check_in=self.check_ins),
            SendToAgent(agent.encode_reply_create(CHECK_IN_INSTRUCTIONS)),
        ], False
