"""The console's live view: the calls in progress as their record entries come in.

`LiveFeed.tap` is one of `AppState.taps`: it sees every record entry as the bridge makes it
(never audio: entries are a handful per turn), keeps what a live page shows of each call in
progress, and tells each open live page which call changed. A page that does not keep up is
not waited for: its queue is bounded, and once full further changes are dropped and counted,
and the page is told to reload (`Subscription.dropped`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field

from callbridge.records.entries import (
    AgentSessionStarted,
    CallClosed,
    CallError,
    CallOpened,
    RecordEntry,
    ToolInvocation,
    TranscriptLine,
)

MAX_LINES_PER_CALL = 200  # the live card shows the end of a long conversation
RECENTLY_ENDED = 10  # calls still shown, as ended, after they end
# A call with no runner this long after it opened is over, even without its CallClosed (a
# call that crashed has none).
GONE_AFTER_SECONDS = 60.0
SUBSCRIBER_QUEUE = 256  # changes waiting for one page before it is told to reload


Line = TranscriptLine | ToolInvocation
# The entries a live card shows (`LiveFeed.tap` ignores the rest).
SHOWN = (CallOpened, TranscriptLine, ToolInvocation, AgentSessionStarted, CallError, CallClosed)


@dataclass
class LiveCall:
    call_id: str
    started_at: float  # epoch seconds
    direction: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    call_sid: str | None = None
    resumes: int = 0
    errors: int = 0
    # What was said, and the tools the agent called, in order.
    lines: deque[Line] = field(default_factory=lambda: deque(maxlen=MAX_LINES_PER_CALL))
    closed: CallClosed | None = None
    # Another instance holding the call (its entries come through `console/relay.py`), and
    # where its bot may transfer it; None: this instance.
    holder: str | None = None
    targets: tuple[str, ...] = ()


Change = tuple[str, Line | None]
"""A call's new line (said, or a tool called), or None: the call's card as a whole changed."""


TICK: Change = ("", None)
"""Not a change: time for the page's periodic look (its session, each call's state)."""


class Subscription:
    """One open live page: what changed since it last looked.

    A plain list and an event rather than an asyncio.Queue: entries arrive one by one, are
    taken all at once, and the page needs waking only when the list was empty."""

    def __init__(self, maxsize: int = SUBSCRIBER_QUEUE) -> None:
        self.maxsize = maxsize
        self.dropped = 0
        self.ticked = False  # a TICK was among the changes taken
        self.ticker: asyncio.TimerHandle | None = None
        self._changes: list[Change] = []
        self._waiting = asyncio.Event()

    def tick(self) -> None:
        self._changes.append(TICK)  # not counted against maxsize: one every few seconds
        self._waiting.set()

    def offer(self, call_id: str, line: Line | None = None) -> None:
        changes = self._changes
        if len(changes) >= self.maxsize:
            self.dropped += 1
            return
        changes.append((call_id, line))
        if len(changes) == 1:
            self._waiting.set()

    def ticked_only(self) -> bool:
        """Whether all there is to take is the periodic tick (no call changed)."""
        return all(change is TICK for change in self._changes)

    async def wait(self) -> None:
        """Until there is a change (or a tick) to take."""
        if not self._changes:
            self._waiting.clear()
            await self._waiting.wait()

    def take_all(self) -> dict[str, list[Line] | None]:
        """Every change waiting, by call in the order they first came: the new lines to
        add, or None to draw the card again (which shows its lines, so takes them in)."""
        changes, self._changes = self._changes, []
        out: dict[str, list[Line] | None] = {}
        for change in changes:
            if change is TICK:
                self.ticked = True
                continue
            call_id, line = change
            if line is None:
                out[call_id] = None
            elif call_id not in out:
                out[call_id] = [line]
            else:
                lines = out[call_id]
                if lines is not None:
                    lines.append(line)
        return out


class LiveFeed:
    def __init__(self, longest_call: float = 4 * 3600.0) -> None:
        # A call held elsewhere is over after this long even without its CallClosed (its
        # instance died): no runner here says otherwise.
        self.longest_call = longest_call
        self.calls: dict[str, LiveCall] = {}
        self.ended: OrderedDict[str, LiveCall] = OrderedDict()
        self._subscriptions: set[Subscription] = set()

    def tap(
        self, entry: RecordEntry, holder: str | None = None, targets: Sequence[str] = ()
    ) -> None:
        """An entry of a call held here, or (`holder`) by another instance."""
        call_id = entry.call_id
        if call_id is None:  # a status callback before we knew the call: not a live call
            return
        kind = type(entry)
        call = self.calls.get(call_id)
        if kind is CallOpened:
            assert isinstance(entry, CallOpened)
            call = self.calls.setdefault(call_id, LiveCall(call_id, entry.at))
            call.started_at = entry.at
            call.direction = entry.direction
            call.from_number = entry.from_number
            call.to_number = entry.to_number
            call.call_sid = entry.call_sid
            call.holder = holder
            call.targets = tuple(targets)
        elif call is None:
            return  # a call that began before the console was on, or a late status
        elif kind is TranscriptLine or kind is ToolInvocation:
            assert isinstance(entry, TranscriptLine | ToolInvocation)
            call.lines.append(entry)
            for subscription in self._subscriptions:
                subscription.offer(call_id, entry)  # a line to add, not the card again
            return
        elif kind is AgentSessionStarted:
            assert isinstance(entry, AgentSessionStarted)
            call.resumes += entry.resumed
        elif kind is CallError:
            call.errors += 1
        elif kind is CallClosed:
            assert isinstance(entry, CallClosed)
            call.closed = entry
            self._ended(call)
        else:
            return  # latencies and the like: nothing a live card shows
        for subscription in self._subscriptions:
            subscription.offer(call_id)

    def _ended(self, call: LiveCall) -> None:
        self.calls.pop(call.call_id, None)
        self.ended[call.call_id] = call
        while len(self.ended) > RECENTLY_ENDED:
            self.ended.popitem(last=False)

    def settle(self, live: Container[str], now: float) -> None:
        """Count as ended the calls no longer `live` (by id) that opened a while ago."""
        for call in list(self.calls.values()):
            if call.holder is not None:
                if call.started_at < now - self.longest_call:
                    self._ended(call)
            elif call.call_id not in live and call.started_at < now - GONE_AFTER_SECONDS:
                self._ended(call)

    def find(self, call_id: str) -> LiveCall | None:
        return self.calls.get(call_id) or self.ended.get(call_id)

    @contextlib.contextmanager
    def subscribe(self, maxsize: int = SUBSCRIBER_QUEUE) -> Iterator[Subscription]:
        subscription = Subscription(maxsize)
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    @property
    def watching(self) -> int:
        return len(self._subscriptions)
