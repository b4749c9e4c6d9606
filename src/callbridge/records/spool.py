"""The append-only local spool file: record entries on disk before they reach the database.

One JSON array per line, `["TranscriptLine", {...entry...}]`. The store's writer appends each
batch (write, then fsync) before writing it to the database, and empties the file once
everything in it is committed, so the file holds only what the database does not have yet.
After a crash the next process replays it; replaying is safe because every database write
is idempotent.

The file is created private (0600: it may hold what callers said) and locked for as long as
it is open, so two processes can never share one spool. A line torn by a crash mid-write is
cut off on open; a line that cannot be decoded is skipped and counted.

All methods block on disk I/O: the store calls them from one worker thread, never from the
event loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from callbridge.records.entries import (
    AgentSessionStarted,
    CallAction,
    CallClosed,
    CallError,
    CallOpened,
    CallSetupDone,
    CallStatusChanged,
    RecordEntry,
    SessionConfigured,
    ToolInvocation,
    TranscriptLine,
    TurnLatency,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one process per spool is then on you
    fcntl = None  # type: ignore[assignment]

KINDS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        CallOpened,
        CallStatusChanged,
        AgentSessionStarted,
        TranscriptLine,
        ToolInvocation,
        TurnLatency,
        CallError,
        CallAction,
        CallClosed,
        CallSetupDone,
        SessionConfigured,
    )
}


class _CallVerb(msgspec.Struct, frozen=True):
    """How a spool written before hang-ups, say, keypad entries and silence check-ins were
    recorded as `CallAction`s holds them: such a line is still replayed, as a CallAction."""

    call_id: str
    seq: int
    at: float
    verb: str
    by: str
    outcome: str
    detail: str = ""

    def as_action(self) -> CallAction:
        return CallAction(
            self.call_id,
            self.seq,
            self.at,
            self.verb,
            self.outcome,
            by=self.by,
            detail=self.detail,
        )


class SpoolError(Exception):
    """The spool cannot be used (one line, naming CALLBRIDGE_SPOOL_PATH)."""


class _Line(msgspec.Struct, array_like=True):
    kind: str
    entry: Any


class _RawLine(msgspec.Struct, array_like=True):
    kind: str
    entry: msgspec.Raw


# Values a tool returned that JSON cannot hold (dates, sets...) are spooled as text.
_encoder = msgspec.json.Encoder(enc_hook=str)
_line_decoder = msgspec.json.Decoder(_RawLine)
_entry_decoders = {name: msgspec.json.Decoder(cls) for name, cls in KINDS.items()}
_legacy_decoders = {"CallVerb": msgspec.json.Decoder(_CallVerb)}


def encode(entries: Sequence[RecordEntry]) -> bytes:
    """Entries as spool lines. Raises if one cannot be encoded (see `encode_each`)."""
    return _encoder.encode_lines([_Line(type(e).__name__, e) for e in entries])


def decode(line: bytes) -> RecordEntry | None:
    """One spool line (without its newline) as an entry; None if it is not a valid one."""
    try:
        raw = _line_decoder.decode(line)
        decoder = _entry_decoders.get(raw.kind)
        if decoder is None:
            legacy = _legacy_decoders.get(raw.kind)
            return None if legacy is None else legacy.decode(raw.entry).as_action()
        entry: RecordEntry = decoder.decode(raw.entry)
        return entry
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class Spool:
    """The spool file at `path`. `open()` before use, `close()` after."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.size = 0  # bytes in the file: everything after the last `reset()`

    def open(self) -> int:
        """Lock and open the file; returns how many bytes are waiting from a previous run."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise SpoolError(
                f"CALLBRIDGE_SPOOL_PATH: cannot open {self.path}: {exc.strerror or exc}"
            ) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise SpoolError(
                    f"CALLBRIDGE_SPOOL_PATH: {os.path.abspath(self.path)} is in use by another "
                    "process, most likely another callbridge server; start this one from "
                    "another folder or set its own CALLBRIDGE_SPOOL_PATH, and if "
                    "the two share a DATABASE_URL, give each its own CALLBRIDGE_INSTANCE_ID"
                ) from None
        self._fd = fd
        self.size = self._cut_torn_tail(fd)
        return self.size

    @staticmethod
    def _cut_torn_tail(fd: int) -> int:
        # A crash mid-write can leave a partial last line; the next append would glue onto it.
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        chunk = 65536
        end = size
        while end > 0:
            start = max(0, end - chunk)
            data = os.pread(fd, end - start, start)
            if start + len(data) == size and data.endswith(b"\n"):
                return size
            newline = data.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                os.ftruncate(fd, keep)
                return keep
            end = start
        os.ftruncate(fd, 0)
        return 0

    def append(self, data: bytes) -> tuple[int, int]:
        """Append whole lines and make them durable; returns their (start, end) offsets."""
        fd = self._require_fd()
        start = self.size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError:
            # Leave no partial line behind (a full disk, say): the batch is retried in memory.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        self.size = start + len(data)
        return start, self.size

    def read(self, start: int, end: int, max_lines: int) -> tuple[list[bytes], int]:
        """Up to `max_lines` whole lines from `start` (before `end`), and the offset after."""
        fd = self._require_fd()
        lines: list[bytes] = []
        buffer = b""  # file bytes from `buffer_at` on
        buffer_at = start
        cursor = 0  # next unread line's index in `buffer`
        block = 1 << 20
        while len(lines) < max_lines:
            newline = buffer.find(b"\n", cursor)
            if newline >= 0:
                lines.append(buffer[cursor:newline])
                cursor = newline + 1
                continue
            read_from = buffer_at + len(buffer)
            if read_from >= end:
                if cursor < len(buffer):  # no newline before `end`: never loop on it
                    lines.append(buffer[cursor:])
                    cursor = len(buffer)
                break
            more = os.pread(fd, min(block, end - read_from), read_from)
            if not more:
                break
            buffer_at += cursor
            buffer = buffer[cursor:] + more
            cursor = 0
        return lines, buffer_at + cursor

    def reset(self) -> None:
        """Everything in the file is committed: empty it."""
        fd = self._require_fd()
        os.ftruncate(fd, 0)
        self.size = 0

    def close(self) -> None:
        """Unlock and close; an empty spool file is removed."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self.size == 0:
                with contextlib.suppress(OSError):
                    self.path.unlink()
        finally:
            os.close(fd)  # also releases the lock

    def _require_fd(self) -> int:
        if self._fd is None:
            raise RuntimeError("spool is not open")
        return self._fd
