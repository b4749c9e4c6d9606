"""Barge-in: the caller speaking over the agent.

While a reply plays, `speech.started` means the server has cut it: Twilio's buffered audio
is cleared at once (`clear`) and whatever else of that reply still arrives is dropped
(the reply is fenced; `CallBridge.audio_to_twilio` and the audio routes skip it).
"""

from __future__ import annotations

from callbridge.bridge.actions import Action, Log, SendToTwilio
from callbridge.bridge.playout_ledger import PlayoutLedger
from callbridge.bridge.recent_ids import RecentIds
from callbridge.twilio import media_stream as twilio


class BargeIn:
    __slots__ = ("_ledger", "fenced")

    def __init__(self, ledger: PlayoutLedger) -> None:
        self._ledger = ledger
        # Cut-off replies, whose late audio is dropped. Bounded: only recent ones matter.
        self.fenced = RecentIds(16)

    def speech_started(self, current_reply: str | None, stream_sid: str) -> list[Action]:
        """The caller started speaking; `current_reply` (if any) is cut off."""
        if current_reply is not None:
            self.fenced.add(current_reply)
        # Every turn starts so: INFO only for the turns that cut the agent off.
        if current_reply is None:
            log = Log.debug("caller.speech_started")
        else:
            log = Log.info("caller.barged_in")
        return [*self.clear(stream_sid), log]

    def clear(self, stream_sid: str) -> list[Action]:
        """Empty Twilio's buffer of our audio: a `clear`, unless no audio went since the
        last one (a barge-in's `reply.done` comes right after its `speech.started`)."""
        if not self._ledger.sent_since_clear():
            return []
        self._ledger.cleared()
        return [SendToTwilio(twilio.encode_clear(stream_sid))]
