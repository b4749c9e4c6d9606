"""The call's record entries, as the bridge builds them: numbered in order, stamped with
the wall clock. Plain values; the runner hands them to the records writer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from callbridge.bridge.actions import Record
from callbridge.bridge.playout_ledger import ReplyPlayout
from callbridge.records import entries as records
from callbridge.records.config_redaction import hide_secrets


def _ms_since(start: float | None, at: float | None) -> float | None:
    return None if start is None or at is None else round((at - start) * 1000, 1)


class RecordEntries:
    __slots__ = ("_seq", "_wall", "call_id")

    def __init__(self, call_id: str, wall_clock: Callable[[], float]) -> None:
        self.call_id = call_id
        self._wall = wall_clock
        self._seq = 0

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq - 1

    def opened(self, **fields: Any) -> Record:
        return Record(records.CallOpened(self.call_id, self._next_seq(), self._wall(), **fields))

    def error(
        self,
        source: Literal["agent", "twilio", "bridge", "tool", "setup"],
        code: str,
        message: str,
    ) -> Record:
        entry = records.CallError(
            self.call_id, self._next_seq(), self._wall(), source, code, message[:500]
        )
        return Record(entry)

    def session_started(self, session_id: str, resumed: bool) -> Record:
        return Record(
            records.AgentSessionStarted(
                self.call_id, self._next_seq(), self._wall(), session_id, resumed
            )
        )

    def session_configured(self, config: dict[str, Any]) -> Record:
        """The configuration the agent confirmed; secrets never reach the record."""
        return Record(
            records.SessionConfigured(
                self.call_id, self._next_seq(), self._wall(), hide_secrets(config)
            )
        )

    def caller_line(self, text: str) -> Record:
        line = records.TranscriptLine(self.call_id, self._next_seq(), self._wall(), "caller", text)
        return Record(line)

    def tool(self, **fields: Any) -> Record:
        return Record(
            records.ToolInvocation(self.call_id, self._next_seq(), self._wall(), **fields)
        )

    def now(self) -> float:
        """The wall clock's time, as entries carry it."""
        return self._wall()

    def action(
        self,
        verb: str,
        outcome: str,
        *,
        by: str | None = None,
        detail: str = "",
        target: str | None = None,
        started_at: float | None = None,
    ) -> Record:
        """An action on the call (`records.CallAction`); `detail` never holds keys."""
        entry = records.CallAction(
            self.call_id,
            self._next_seq(),
            self._wall(),
            verb,
            outcome,
            target=target,
            started_at=started_at,
            by=by,
            detail=detail,
        )
        return Record(entry)

    def closed(self, **fields: Any) -> Record:
        return Record(records.CallClosed(self.call_id, self._next_seq(), self._wall(), **fields))

    def reply(self, reply: ReplyPlayout) -> list[Record]:
        """A settled reply's transcript line and turn latency, each if there is one."""
        out: list[Record] = []
        # A reply that said nothing (no words, no audible audio: a tool's silent pre-amble,
        # a reply cut off in its silent lead-in) is no line of the transcript.
        if reply.text or reply.first_audible_sent_at is not None:
            out.append(
                Record(
                    records.TranscriptLine(
                        self.call_id,
                        self._next_seq(),
                        self._wall(),
                        "agent",
                        reply.text,
                        reply_id=reply.reply_id,
                        interrupted=reply.interrupted,
                        generated_seconds=round(reply.generated_seconds, 3),
                        heard_seconds=round(reply.heard_seconds, 3),
                    )
                )
            )
        turn, audible_turn = reply.turn_ended_at, reply.audible_turn_ended_at
        if turn is not None or (audible_turn is not None and reply.first_audible_sent_at):
            # To the reply's first audio (its silent lead-in, as a rule), and to its first
            # audible audio, which may come in a later reply than the turn's first one.
            out.append(
                Record(
                    records.TurnLatency(
                        self.call_id,
                        self._next_seq(),
                        self._wall(),
                        reply.reply_id,
                        to_first_audio_sent_ms=_ms_since(turn, reply.first_sent_at),
                        to_first_audio_played_ms=_ms_since(turn, reply.first_played_at),
                        to_first_audible_sent_ms=_ms_since(
                            audible_turn, reply.first_audible_sent_at
                        ),
                        to_first_audible_played_ms=_ms_since(
                            audible_turn, reply.first_audible_played_at
                        ),
                    )
                )
            )
        return out
