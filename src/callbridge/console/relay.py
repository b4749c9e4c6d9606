"""The live feed across instances (REDIS_URL set): each instance publishes the record entries
a live card shows, and takes in those of the others, so that every console page shows every
call on the line, whichever instance holds it.

What is published is what the feed itself is given (`LiveFeed.tap`): a handful of entries a
turn, never audio. A call's opening also carries where it may be transferred, which the
record entries do not say, for the card's transfer form.
"""

from __future__ import annotations

import msgspec

from callbridge.console.actions import transfer_targets
from callbridge.console.feed import SHOWN, LiveFeed
from callbridge.logs import EventLogger
from callbridge.records import spool
from callbridge.records.entries import CallOpened, RecordEntry
from callbridge.server.state import AppState

_log = EventLogger("console")


class Relayed(msgspec.Struct, array_like=True):
    instance_id: str  # the instance holding the call
    targets: list[str] | None  # where the call may be transferred (with its opening only)
    entry: msgspec.Raw  # a spool line: the entry's kind and fields


_decoder = msgspec.json.Decoder(Relayed)


class FeedRelay:
    def __init__(self, state: AppState, feed: LiveFeed) -> None:
        self._state = state
        self._feed = feed
        self.received = 0  # entries taken in from other instances

    def publish(self, entry: RecordEntry) -> None:
        """A tap: this instance's entry, for the other instances' feeds."""
        if type(entry) not in SHOWN or entry.call_id is None:
            return
        targets = None
        if type(entry) is CallOpened:
            targets = transfer_targets(self._state.registry.live.get(entry.call_id))
        try:
            line = spool.encode([entry]).rstrip(b"\n")
        except (TypeError, ValueError):
            return  # a tool result JSON cannot hold: the card misses one line elsewhere
        shared = self._state.shared
        message = Relayed(shared.instance_id, targets, msgspec.Raw(line))
        shared.publish_feed(msgspec.json.encode(message))

    def receive(self, data: bytes) -> None:
        """Another instance's entry (or this one's own, which its feed has already)."""
        try:
            message = _decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            _log.warning("console.bad_feed_message", why="not a live-feed message")
            return
        if message.instance_id == self._state.shared.instance_id:
            return
        entry = spool.decode(bytes(message.entry))
        if entry is None or type(entry) not in SHOWN:
            return
        self.received += 1
        self._feed.tap(entry, holder=message.instance_id, targets=message.targets or ())
