"""Structured logging: one JSON object per line (or a readable line on a terminal).

Every line about a call carries its `call_id` (a line about one of the call's tool calls
carries that tool call's id as `tool_call_id` besides). Fields are given as keyword arguments,
never formatted into the message, so logs can be queried. Secrets and audio are never
passed in: settings hold secrets as `SecretStr`, and the bridge logs counts, not payloads.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any

import msgspec

_ROOT = "callbridge"
# Fields of any other type (exceptions, paths, enums...) are written as their str().
_encoder = msgspec.json.Encoder(enc_hook=str)


def _timestamp(record: logging.LogRecord) -> str:
    """When the line was logged, in UTC to the millisecond (as the call records are)."""
    moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        try:
            return _encoder.encode(line).decode()
        except Exception:  # a field whose str() raises, a dict that holds itself...
            return _encoder.encode({k: _text(v) for k, v in line.items()}).decode()


class ConsoleFormatter(logging.Formatter):
    """`2026-12-03 10:15:02.123Z INFO    [call id] event key=value ...`: one line an event."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        call_id = fields.get("call_id")
        rest = " ".join(f"{k}={_console_value(v)}" for k, v in fields.items() if k != "call_id")
        prefix = f"[{call_id}] " if call_id else ""
        when = _timestamp(record).replace("T", " ").replace("+00:00", "Z")
        text = f"{when} {record.levelname:<7} {prefix}{record.getMessage()} {rest}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _console_value(value: Any) -> str:
    """A field as a reader scans it: text with spaces quoted, a mapping as `k:v,k:v`."""
    if isinstance(value, dict):
        return ",".join(f"{k}:{_console_value(v)}" for k, v in value.items())
    if value is None:
        return "-"
    text = _text(value) or ""
    if not text or any(c.isspace() or c == '"' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__} that cannot be shown>"


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """Send callbridge's logs to stderr; `fmt` is json, console, or auto (console on a tty)."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ConsoleFormatter() if fmt == "console" else JsonFormatter())
    # What our formatters never print, logging would still gather for every record: the
    # caller's file and line (a walk up the stack), the thread, the process. The logging
    # HOWTO's "Optimization" section names these switches.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger(_ROOT)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # The libraries' own warnings and errors (a request handler that raised, a task whose
    # exception nobody retrieved) go through the same formatter: one line each, with any
    # traceback in its `exception` field, never a bare multi-line traceback.
    for name in _LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers[:] = [handler]
        library.setLevel(max(logging.WARNING, root.level))
        library.propagate = False


_LIBRARY_LOGGERS = ("aiohttp", "asyncio")


class EventLogger:
    """A logger bound to fixed fields (a call's id, say)."""

    def __init__(self, name: str, **bound: Any) -> None:
        self._logger = logging.getLogger(f"{_ROOT}.{name}")
        self._bound = bound

    def bind(self, **fields: Any) -> EventLogger:
        child = EventLogger.__new__(EventLogger)
        child._logger = self._logger
        child._bound = {**self._bound, **fields}
        return child

    @property
    def level(self) -> int:
        """The lowest of our levels a line is written at now (lines below it are dropped)."""
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
            if self._logger.isEnabledFor(level):
                return level
        return logging.CRITICAL

    def log(self, level: int, event: str, exc_info: Any = None, **fields: Any) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(
                level, event, exc_info=exc_info, extra={"fields": {**self._bound, **fields}}
            )

    def debug(self, event: str, **fields: Any) -> None:
        self.log(logging.DEBUG, event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log(logging.INFO, event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log(logging.WARNING, event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log(logging.ERROR, event, **fields)

    def exception(self, event: str, exc: BaseException, **fields: Any) -> None:
        self.log(logging.ERROR, event, exc_info=(type(exc), exc, exc.__traceback__), **fields)
