"""Waiting for what a fake records: wake waiters when a list they watch grows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TypeVar

from callbridge.testing.fake_agent.messages import Event

__all__ = ["Changes", "matcher", "scanner"]

_T = TypeVar("_T")


class Changes:
    """Wakes waiters when a list they watch grows; free when nobody waits."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def until(self, check: Callable[[], _T | None], timeout: float, what: str) -> _T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = check()
            if found is not None:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            if self._event is None:
                self._event = asyncio.Event()
            # On timeout the loop checks one last time, then raises.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)


def matcher(predicate: Callable[[Event], bool] | str) -> Callable[[Event], bool]:
    """A test of events: an event ``type`` or a predicate."""
    if isinstance(predicate, str):
        type_ = predicate
        return lambda event: event.get("type") == type_
    return predicate


def scanner(items: list[Event], match: Callable[[Event], bool]) -> Callable[[], Event | None]:
    """A check for `Changes.until`: the first item matching, never scanning one twice."""
    position = 0

    def check() -> Event | None:
        nonlocal position
        while position < len(items):
            item = items[position]
            position += 1
            if match(item):
                return item
        return None

    return check
