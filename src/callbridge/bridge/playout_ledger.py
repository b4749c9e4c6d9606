"""What the caller actually heard: the agent's audio as sent, and as Twilio confirmed played.

Twilio echoes a `mark` once the audio queued before it has played, and echoes every pending
mark at once when we send `clear`. So we send a mark every quarter second of a reply's
audio (about one mark per seven audio frames: cheap) and one at its end. A mark echoed
before a clear confirms its bytes as played; marks echoed because of a clear confirm
nothing. On a clear, the audio heard since the last confirmation is estimated from the
time elapsed at 8000 bytes/s, never beyond what was sent.

This ledger is the one source of truth for "has the caller heard it": transcripts of what
was heard next to what was generated, and latency to the first audio actually played.
No I/O: the bridge feeds it and passes a clock.

Every reply starts with a fraction of a second to two seconds of silence, and a tool's
pre-amble may be silent throughout. So the ledger also finds each reply's first audible
chunk (`is_audible`: cheap, on the bytes, and only until it is found), sends a mark right
after it, and times the turn to it as well: to the caller's ear, the answer starts there.
A turn whose replies stay silent (a pre-amble) is answered by the first reply after it
that is audible.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import NamedTuple

BYTES_PER_SECOND = 8000  # μ-law, 8 kHz
MARK_EVERY_BYTES = 2000  # a quarter of a second
MARK_PREFIX = "cb-"
_END_SUFFIX = ":end"
_PREFIX_LEN, _SUFFIX_LEN = len(MARK_PREFIX), len(_END_SUFFIX)

# Audibility, judged on μ-law bytes without decoding them. A byte is quiet when its
# (inverted) exponent is 0 or 1, that is when bits 5 and 6 are both set: 0x60-0x7F and
# 0xE0-0xFF, every sample within 372 of 0 out of 32767 (below about -39 dBFS; 0xFF and
# 0x7F are digital silence). A chunk is audible when at least one in AUDIBLE_SHARE of the
# bytes sampled, every third one from the first, is not quiet. Every third byte, because
# the compiled fast path judges the chunks it relays the same way on their base64 text, in
# which every third byte starts a group of four characters and is read from the first
# character alone (see `_compiled.pyx`): both paths judge every chunk alike.
AUDIBLE_SHARE = 16
_QUIET_BYTES = bytes(b for b in range(256) if b & 0x60 == 0x60)


class FastPathMarks(NamedTuple):
    """What the compiled fast path is told of the ledger's marks. It sends the marks
    `relay_window` makes room for, named `prefix` and a number (the window gives the next
    number), and judges chunks audible as `is_audible` does (`audible_share`). After each
    mark, the next is due `every_bytes` further on: the fast path subtracts each chunk's
    size from the window's budget and adds `every_bytes` when a mark goes."""

    prefix: str
    every_bytes: int
    audible_share: int


def is_audible(data: bytes) -> bool:
    """Whether a chunk of μ-law audio holds something a caller would hear (see above)."""
    samples = data[::3]
    loud = len(samples.translate(None, _QUIET_BYTES))
    return loud > 0 and loud * AUDIBLE_SHARE >= len(samples)


@dataclass
class ReplyPlayout:
    index: int
    reply_id: str | None
    turn_ended_at: float | None  # when the caller's turn this reply answers ended
    text: str = ""
    interrupted: bool = False
    bytes_sent: int = 0
    next_mark_at: int = 0  # bytes_sent at which a mark is due (0: the first chunk)
    bytes_played: int = 0
    first_sent_at: float | None = None
    first_played_at: float | None = None
    confirmed_at: float | None = None  # clock of the last played mark
    # Until the first audible chunk: next_mark_at stays 0 (so every chunk the bridge is
    # given comes to `count_marked`, which judges it) and the next mark is due here.
    quiet_mark_at: int = 0
    audible_from: int | None = None  # bytes_sent before the first audible chunk
    audible_turn_ended_at: float | None = None  # the turn still waiting for audible audio
    first_audible_sent_at: float | None = None
    first_audible_played_at: float | None = None
    done: bool = False  # reply.done seen
    resolved: bool = False  # playback is over: end mark played, or cleared
    settled: bool = False

    @property
    def generated_seconds(self) -> float:
        return self.bytes_sent / BYTES_PER_SECOND

    @property
    def heard_seconds(self) -> float:
        return self.bytes_played / BYTES_PER_SECOND


class PlayoutLedger:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._replies: dict[int, ReplyPlayout] = {}
        self._by_id: dict[str | None, ReplyPlayout] = {}
        self._current: ReplyPlayout | None = None
        self._next_index = 0
        self._next_mark = 0
        self._pending: deque[tuple[int, int, int]] = deque()  # (mark, reply index, bytes)
        self._flushed_upto = -1  # marks up to this number were flushed by a clear
        self._turn_ended_at: float | None = None
        # The last turn no reply has answered with audible audio yet.
        self._unanswered_turn_at: float | None = None
        self._maybe_settled = False  # a reply became done or resolved since settled()
        self._sent_since_clear = False  # audio went to Twilio after the last clear

    # --- what the bridge tells it -----------------------------------------------------

    def turn_ended(self) -> None:
        self._turn_ended_at = self._unanswered_turn_at = self._clock()

    def reply_started(self, reply_id: str | None) -> None:
        reply = ReplyPlayout(self._next_index, reply_id, self._turn_ended_at)
        reply.audible_turn_ended_at = self._unanswered_turn_at
        self._turn_ended_at = None
        self._next_index += 1
        self._replies[reply.index] = reply
        self._by_id[reply_id] = reply
        self._current = reply

    def count_unmarked(self, reply_id: str | None, audio_bytes: int) -> bool:
        """Count a chunk that needs no mark after it and return True; or count nothing and
        return False when a mark is due (the reply's first chunk, or a quarter second
        crossed, or the reply's first audible chunk not found yet); then `count_marked`
        counts it."""
        reply = self._by_id.get(reply_id)
        if reply is None:
            return False
        after = reply.bytes_sent + audio_bytes
        if after >= reply.next_mark_at:
            return False
        reply.bytes_sent = after
        self._sent_since_clear = True
        return True

    def relay_window(self, fenced: Container[str | None]) -> tuple[str | None, int, int, int, bool]:
        """What the fast path may do until the next event: (the current reply's id, unless
        `fenced`, else None; the bytes it may relay before a mark is due; the first mark
        not echoed; the next mark's number; quiet chunks only?). It numbers the marks it
        sends from that next one, and may hold back echoes of the marks in between."""
        pending = self._pending
        next_mark = self._next_mark
        first = pending[0][0] if pending else next_mark
        reply = self._current
        if reply is not None and self._by_id.get(reply.reply_id) is reply:
            quiet_only = reply.audible_from is None
            due = reply.quiet_mark_at if quiet_only else reply.next_mark_at
            budget = due - reply.bytes_sent
            if budget > 0 and reply.reply_id not in fenced:
                return reply.reply_id, budget, first, next_mark, quiet_only
        return None, 0, first, next_mark, False

    def count_relayed(self, audio_bytes: int, marks: Sequence[int] = ()) -> None:
        """Count chunks the fast path relayed for the current reply since `relay_window`
        (nothing else reaches the ledger in between), with the marks it sent after the
        chunks that crossed a mark, as `count_marked` would have: each given as the bytes
        relayed up to it, numbered on from `relay_window`'s next mark. Under a quiet-only
        window the chunks were all quiet: the reply still awaits its audible start."""
        reply = self._current
        assert reply is not None, "relayed audio without an unmarked budget"
        start = reply.bytes_sent
        for relayed in marks:
            reply.bytes_sent = start + relayed
            self._mark(reply)
        if marks:
            if reply.audible_from is None:
                reply.quiet_mark_at = _mark_after(reply.bytes_sent)
            else:
                reply.next_mark_at = _mark_after(reply.bytes_sent)
        reply.bytes_sent = start + audio_bytes
        if audio_bytes:
            self._sent_since_clear = True

    def count_marked(
        self, reply_id: str | None, audio_bytes: int, data: bytes | None = None
    ) -> str | None:
        """Count a chunk that `count_unmarked` refused; returns the mark to send after it,
        if one is due. Until the reply's first audible chunk, each is judged by its audio
        `data` (None: audible): the first audible one gets a mark of its own."""
        reply = self._reply(reply_id)
        before = reply.bytes_sent
        reply.bytes_sent += audio_bytes
        self._sent_since_clear = True
        if reply.first_sent_at is None:
            reply.first_sent_at = self._clock()  # the first mark times the first audio played
        if reply.audible_from is None:
            if data is not None and not is_audible(data):
                if reply.bytes_sent < reply.quiet_mark_at:
                    return None
                reply.quiet_mark_at = _mark_after(reply.bytes_sent)
                return self._mark(reply)
            reply.audible_from = before
            reply.first_audible_sent_at = self._clock()  # its mark times it played
            if reply.audible_turn_ended_at == self._unanswered_turn_at:
                self._unanswered_turn_at = None  # this reply answers the turn
            else:  # another reply did, or the caller spoke again since this one started
                reply.audible_turn_ended_at = None
        reply.next_mark_at = _mark_after(reply.bytes_sent)
        return self._mark(reply)

    def transcript(self, reply_id: str | None, text: str, interrupted: bool) -> None:
        reply = self._reply(reply_id)
        reply.text = text
        reply.interrupted = reply.interrupted or interrupted

    def reply_done(self, reply_id: str | None, interrupted: bool) -> str | None:
        """The agent finished (or was cut); returns the end mark to send, if any audio went."""
        reply = self._reply(reply_id)
        reply.done = True
        self._maybe_settled = True
        reply.interrupted = reply.interrupted or interrupted
        if self._current is reply:
            self._current = None
        if reply.resolved or reply.bytes_sent == 0:
            reply.resolved = True
            return None
        return self._mark(reply, end=True)

    def played_out(self) -> bool:
        """Whether everything sent has played: no reply under way, every mark echoed."""
        return self._current is None and not self._pending

    def sent_since_clear(self) -> bool:
        """Whether any audio went to Twilio after the last `clear`. If none did, Twilio
        holds none of ours, and another `clear` would change nothing."""
        return self._sent_since_clear

    def cleared(self) -> None:
        """We sent Twilio `clear`: whatever was queued is gone; estimate what got played."""
        self._sent_since_clear = False
        now = self._clock()
        if self._pending:
            self._flushed_upto = max(self._flushed_upto, self._pending[-1][0])
        # Every reply with audio out, marks pending or not: all its marks may have been
        # echoed with audio sent since (up to a quarter second of it, the next mark not due).
        for reply in self._replies.values():
            if reply.resolved or reply.bytes_sent == 0:
                continue
            since = reply.confirmed_at if reply.confirmed_at is not None else reply.first_sent_at
            if since is not None:
                estimate = reply.bytes_played + round((now - since) * BYTES_PER_SECOND)
                reply.bytes_played = max(reply.bytes_played, min(reply.bytes_sent, estimate))
            reply.interrupted = True
            reply.resolved = True
            self._maybe_settled = True

    def mark_echoed(self, name: str) -> bool:
        """Returns whether the name was one of ours (the bridge has other marks too)."""
        if not name.startswith(MARK_PREFIX):
            return False
        end = -_SUFFIX_LEN if name.endswith(_END_SUFFIX) else None
        digits = name[_PREFIX_LEN:end]
        try:
            number = int(digits)
        except ValueError:
            return False
        self._echoed(number, self._clock())
        return True

    def marks_echoed(self, echoes: Sequence[tuple[int, float]]) -> None:
        """Echoes the fast path held back (their numbers, and when each came), as if
        `mark_echoed` had been given each then: see `relay_window`."""
        for number, at in echoes:
            self._echoed(number, at)

    def _echoed(self, number: int, now: float) -> None:
        while self._pending and self._pending[0][0] <= number:
            mark, index, confirmed = self._pending.popleft()
            reply = self._replies.get(index)
            if mark <= self._flushed_upto or reply is None:
                continue
            reply.bytes_played = max(reply.bytes_played, confirmed)
            reply.confirmed_at = now
            if reply.first_played_at is None:
                reply.first_played_at = now
            if (
                reply.first_audible_played_at is None
                and reply.audible_from is not None
                and confirmed > reply.audible_from
            ):
                reply.first_audible_played_at = now
            if reply.done and reply.bytes_played >= reply.bytes_sent:
                reply.resolved = True
                self._maybe_settled = True

    # --- what the bridge takes out ----------------------------------------------------

    def settled(self, *, everything: bool = False) -> list[ReplyPlayout]:
        """Replies whose outcome is final (all of them when the call is over), each once."""
        if not (everything or self._maybe_settled):
            return []  # the common case: a mark echoed mid-reply
        self._maybe_settled = False
        out = []
        for index in sorted(self._replies):
            reply = self._replies[index]
            if reply.settled or not (everything or (reply.done and reply.resolved)):
                continue
            reply.settled = True
            out.append(reply)
            del self._replies[index]
            if self._by_id.get(reply.reply_id) is reply:
                del self._by_id[reply.reply_id]
        return out

    # --- internals --------------------------------------------------------------------

    def _reply(self, reply_id: str | None) -> ReplyPlayout:
        reply = self._by_id.get(reply_id)
        if reply is None:  # audio without reply.started (older servers): a reply all the same
            self.reply_started(reply_id)
            reply = self._by_id[reply_id]
        return reply

    def _mark(self, reply: ReplyPlayout, end: bool = False) -> str:
        number = self._next_mark
        self._next_mark += 1
        self._pending.append((number, reply.index, reply.bytes_sent))
        return f"{MARK_PREFIX}{number}{_END_SUFFIX if end else ''}"


FAST_PATH_MARKS = FastPathMarks(MARK_PREFIX, MARK_EVERY_BYTES, AUDIBLE_SHARE)


def _mark_after(bytes_sent: int) -> int:
    """The reply's next quarter-second boundary: where the next mark is due."""
    return (bytes_sent // MARK_EVERY_BYTES + 1) * MARK_EVERY_BYTES
