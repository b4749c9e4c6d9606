"""Catching callbridge's log events by name in a test (they are our structured events)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator


class Events(logging.Handler):
    """The log events seen, by name, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.fields: list[dict[str, object]] = []  # each event's fields, in the same order
        self.levels: list[int] = []  # and its level
        self.tracebacks: list[str] = []  # the formatted exception of each event that has one
        self._seen: dict[str, asyncio.Event] = {}

    def emit(self, record: logging.LogRecord) -> None:
        name = record.getMessage()
        self.names.append(name)
        self.fields.append(dict(getattr(record, "fields", {})))
        self.levels.append(record.levelno)
        if record.exc_info:
            self.tracebacks.append(logging.Formatter().formatException(record.exc_info))
        self._seen.setdefault(name, asyncio.Event()).set()

    def fields_of(self, name: str) -> list[dict[str, object]]:
        """The fields of every `name` event seen, in order."""
        return [f for n, f in zip(self.names, self.fields, strict=True) if n == name]

    def levels_of(self, name: str) -> list[int]:
        """The level of every `name` event seen, in order."""
        return [level for n, level in zip(self.names, self.levels, strict=True) if n == name]

    async def wait_for(self, name: str, times: int = 1) -> None:
        async with asyncio.timeout(10):
            while self.names.count(name) < times:
                seen = self._seen.setdefault(name, asyncio.Event())
                seen.clear()
                if self.names.count(name) < times:
                    await seen.wait()


@contextlib.contextmanager
def caught(logger_name: str = "callbridge") -> Iterator[Events]:
    """Every event of `logger_name` and below, whatever the levels configured."""
    handler = Events()
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
