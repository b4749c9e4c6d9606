"""A bounded set of recent ids, for the bridge's per-reply and per-tool-call memory."""

from __future__ import annotations


class RecentIds(dict[str | None, None]):
    """The last `capacity` ids added, oldest forgotten first. A dict underneath, so `in`
    (asked for every reply frame) runs in C."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self._capacity = capacity

    def add(self, item: str | None) -> None:
        self.pop(item, None)
        self[item] = None
        if len(self) > self._capacity:
            del self[next(iter(self))]

    def discard(self, item: str | None) -> None:
        self.pop(item, None)
