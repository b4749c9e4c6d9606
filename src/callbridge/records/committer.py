"""The committer: spooled record entries into the database, in order.

It commits at most once per `StoreLimits.commit_interval` (at once when `batch_size`
entries are waiting, someone waits on flush(), or the store closes): one transaction of up
to `batch_size` entries, rows inserted with one statement per table. Once everything in the
spool file is committed it empties the file. Spooled entries beyond `max_in_memory` are let
go from memory and read back from the file when their turn comes.

Before its first commit it migrates the schema, replays what a previous run left in the
spool, and closes the calls this instance left open then; it purges expired calls then and
every `purge_interval`. While the database is away it retries with exponential backoff,
logging once when the outage starts and once when it ends. An entry the database refuses
for its content (never for an outage) is moved aside to `<spool>.rejected`, in the spool's
line format, so that it cannot hold up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import math
import os
import random
import time
from collections import deque
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.logs import EventLogger
from callbridge.records import database, spool, writes
from callbridge.records.entries import CallClosed, CallOpened, RecordEntry
from callbridge.records.errors import detail, error_name, transient
from callbridge.records.pipeline import Chunk, Drops, Progress, SpoolThread, StoreLimits, prepared
from callbridge.records.spool import Spool

_MAX_ROWS_REMEMBERED = 100_000
# Entries the database refused are kept for a human to look at, not forever: past this
# size the file becomes `<name>.1` (replacing the one before) and a new one starts.
REJECTED_MAX_BYTES = 16 * 1024 * 1024


class Committer:
    """Holds the spooled entries not yet committed (`pending`); `run()` is its task."""

    def __init__(
        self,
        engine: AsyncEngine,
        spool_file: Spool,
        thread: SpoolThread,
        progress: Progress,
        drops: Drops,
        limits: StoreLimits,
        log: EventLogger,
        *,
        instance_id: str,
        store_transcripts: bool,
        retention_days: int | None,
        rejected_path: Path,
    ) -> None:
        self.pending: deque[Chunk] = deque()
        self.in_memory = 0  # entries of `pending` held in memory
        # Entries the spool could not take: in memory only, until the database has them.
        self.memory_only = 0
        self.rejected = 0
        # Calls opened through the store: live, never closed as interrupted by restart.
        # Only needed until that has been done, then no longer tracked.
        self.live: set[str] | None = set()
        self.wake = asyncio.Event()
        self.outage_since: float | None = None
        self.rejected_path = rejected_path
        self._engine = engine
        self._spool = spool_file
        self._thread = thread
        self._progress = progress
        self._drops = drops
        self._limits = limits
        self._log = log
        self._instance_id = instance_id
        self._store_transcripts = store_transcripts
        self._retention_days = retention_days
        self._backlog: Chunk | None = None
        self._committed_offset = 0
        # Calls whose row has been committed (opened, not yet closed): their entries need
        # no placeholder row, which would otherwise be a good part of each commit's rows.
        self._rows_committed: set[str] = set()
        self._last_commit = -math.inf
        self._committing = 0  # chunks at the front of `pending` being written now
        self._migrated = False
        self._backoff = 0.0
        self._retry_at = 0.0
        self._strikes = 0
        self._next_purge: float | None = None
        self._closing = False
        self._close_deadline = 0.0

    # -- what the spooler and the store hand over -------------------------------------------

    def add_backlog(self, size: int) -> None:
        """The first `size` bytes of the spool file are a previous run's: commit them first."""
        self._backlog = Chunk(None, 0, size, 0)
        self.pending.append(self._backlog)

    def add(self, chunks: list[Chunk]) -> None:
        self.pending.extend(chunks)
        self.in_memory += sum(len(c.entries or ()) for c in chunks)
        self.memory_only += sum(len(c.entries or ()) for c in chunks if c.start is None)
        self._bound_memory()

    def first_unspooled(self) -> int | None:
        """The submission number of the first entry held only in memory, if any."""
        if self.memory_only:
            for chunk in self.pending:
                if chunk.start is None and chunk.entries is not None:
                    return chunk.first_n
        return None

    def close_by(self, deadline: float) -> None:
        """Commit what there is (one more try now, if the database is away) until `deadline`,
        then stop."""
        self._closing = True
        self._close_deadline = deadline
        self._retry_at = min(self._retry_at, time.monotonic())
        self.wake.set()

    def _bound_memory(self) -> None:
        # Never touch the front chunks: they may be being written.
        index = max(1, self._committing)
        while self.in_memory > self._limits.max_in_memory and index < len(self.pending):
            chunk = self.pending[index]
            if chunk.entries is None or chunk.start is None:
                index += 1
                continue
            self.in_memory -= len(chunk.entries)
            chunk.entries = None
            before = self.pending[index - 1]
            if index > 1 and before.entries is None and before.end == chunk.start:
                before.end, before.last_n = chunk.end, chunk.last_n
                del self.pending[index]
            else:
                index += 1

    # -- the task ---------------------------------------------------------------------------

    async def run(self, spooler: asyncio.Task[None]) -> None:
        """Commit until closed and done (or past the close deadline); `spooler` is the task
        whose end means nothing more will be handed over."""
        while True:
            now = time.monotonic()
            if self._closing and (
                now >= self._close_deadline or (spooler.done() and not self.pending)
            ):
                return
            if self.outage_since is not None and now < self._retry_at:
                await self._sleep(self._retry_at - now)
                continue
            try:
                if not self._progress.ready:
                    await self._prepare()
                progressed = self.commit_delay() <= 0 and await self._commit_next()
                if self._next_purge is not None and time.monotonic() >= self._next_purge:
                    await self._purge()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._outage(exc)
                continue
            self._recovered()
            if not progressed:
                await self._sleep(None)

    async def _sleep(self, seconds: float | None) -> None:
        """Until there is something to commit, `seconds` pass, the next purge, or close."""
        self.wake.clear()
        deadlines = [seconds] if seconds is not None else []
        if self._progress.ready and self.pending and self.outage_since is None:
            delay = self.commit_delay()
            if delay <= 0:
                return
            deadlines.append(delay)
        if self._next_purge is not None:
            deadlines.append(max(0.0, self._next_purge - time.monotonic()))
        if self._closing:
            deadlines.append(max(0.0, self._close_deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(deadlines) if deadlines else None):
                await self.wake.wait()

    def commit_delay(self) -> float:
        """Seconds until the next commit is due (<= 0: now)."""
        if (
            self._closing
            or self.in_memory >= self._limits.batch_size
            or (self.pending and self.pending[0].entries is None)  # a backlog in the file
            or self._progress.waiting_for_commit()
        ):
            return 0.0
        return self._last_commit + self._limits.commit_interval - time.monotonic()

    async def _prepare(self) -> None:
        if not self._migrated:
            async with asyncio.timeout(self._limits.write_timeout):
                revision = await database.upgrade(self._engine)
            self._migrated = True
            self._log.info("records.schema_ready", revision=revision)
        while self._backlog is not None and self._backlog in self.pending:
            await self._commit_next()
        self._backlog = None
        live = self.live if self.live is not None else set()
        async with asyncio.timeout(self._limits.write_timeout), self._engine.begin() as conn:
            interrupted = await writes.close_interrupted(conn, self._instance_id, live)
        self.live = None
        if interrupted:
            self._log.info("records.closed_interrupted", calls=len(interrupted))
        if self._retention_days is not None:
            await self._purge()
        self._progress.set_ready()
        self._log.info("records.ready", instance_id=self._instance_id)
        self._progress.notify()

    # -- retention --------------------------------------------------------------------------

    async def _purge(self) -> None:
        try:
            await self.purge_expired()
        except Exception:
            # Try again within the hour rather than a day later.
            self._next_purge = time.monotonic() + min(self._limits.purge_interval, 3600.0)
            raise
        self._next_purge = time.monotonic() + self._limits.purge_interval

    async def purge_expired(self, now: datetime.datetime | None = None) -> int:
        """Delete calls older than the retention period (nothing if unset); how many."""
        if self._retention_days is None:
            return 0
        now = now or datetime.datetime.now(datetime.UTC)
        cutoff = now - datetime.timedelta(days=self._retention_days)
        async with asyncio.timeout(self._limits.write_timeout), self._engine.begin() as conn:
            purged = await writes.purge_before(conn, cutoff)
        self._rows_committed.clear()  # a purge deletes rows: assume nothing
        self._log.info("records.purged", calls=purged, before=cutoff.isoformat())
        return purged

    # -- committing -------------------------------------------------------------------------

    async def _commit_next(self) -> bool:
        """Commit the next batch; False if there was nothing to commit."""
        if not self.pending:
            return False
        chunk = self.pending[0]
        if chunk.entries is not None:
            # Everything in memory at the front, in order, up to batch_size: one transaction.
            chunks = self._front_chunks()
            entries = [e for c in chunks for e in c.entries or ()]
            self._committing = len(chunks)
            try:
                await self._commit(entries)
            finally:
                self._committing = 0
            self._last_commit = time.monotonic()
            self.in_memory -= len(entries)
            unspooled = sum(len(c.entries or ()) for c in chunks if c.start is None)
            if unspooled:
                self.memory_only -= unspooled
                self._drops.over("spool_failing_and_memory_full")
            for _ in range(len(chunks) - 1):
                done = self.pending.popleft()
                if done.end is not None:
                    self._committed_offset = done.end
                self._progress.done = max(self._progress.done, done.last_n)
            chunk = self.pending[0]
            done_to = chunk.end
        else:
            assert chunk.start is not None and chunk.end is not None
            lines, done_to = await self._thread.run(
                self._spool.read, chunk.start, chunk.end, self._limits.batch_size
            )
            entries = [e for e in map(spool.decode, lines) if e is not None]
            if len(entries) < len(lines):
                self._log.warning("records.spool_lines_unreadable", lines=len(lines) - len(entries))
            if entries:
                transcripts, instance_id = self._store_transcripts, self._instance_id
                await self._commit(
                    [
                        prepared(e, store_transcripts=transcripts, instance_id=instance_id)
                        for e in entries
                    ]
                )
            chunk.start = done_to
        if done_to is not None:
            self._committed_offset = done_to
        if chunk.end is None or done_to == chunk.end:
            self.pending.popleft()
            self._progress.done = max(self._progress.done, chunk.last_n)
        caught_up = self._committed_offset and self._committed_offset == self._spool.size
        if caught_up and await self._thread.run(self._spool_reset_if, self._committed_offset):
            self._committed_offset = 0
        self._progress.notify()
        return True

    def _front_chunks(self) -> list[Chunk]:
        chunks = [self.pending[0]]
        count = len(self.pending[0].entries or ())
        for chunk in itertools.islice(self.pending, 1, None):
            if chunk.entries is None or count + len(chunk.entries) > self._limits.batch_size:
                break
            chunks.append(chunk)
            count += len(chunk.entries)
        return chunks

    def _spool_reset_if(self, committed: int) -> bool:
        # In the spool thread, so no append can slip in between the check and the truncation.
        if self._spool.size != committed:
            return False
        self._spool.reset()
        return True

    async def _commit(self, entries: list[RecordEntry]) -> None:
        try:
            await self._transaction(entries)
        except Exception as exc:
            if transient(exc):
                raise
            await self._commit_one_by_one(entries, exc)
        self._strikes = 0

    async def _commit_one_by_one(self, entries: list[RecordEntry], batch_error: Exception) -> None:
        failed: list[tuple[RecordEntry, Exception]] = []
        for entry in entries:
            try:
                await self._transaction([entry])
            except Exception as exc:
                if transient(exc):
                    raise
                failed.append((entry, exc))
        if not failed:
            return
        if len(failed) == len(entries):
            # Nothing went through: maybe the database, not the entries. Wait and retry,
            # but not forever (a lone bad entry would hold up everything behind it).
            self._strikes += 1
            if self._strikes < self._limits.poison_strikes:
                raise batch_error
        for entry, error in failed:
            await self._reject(entry, error)

    async def _transaction(self, entries: list[RecordEntry]) -> None:
        async with asyncio.timeout(self._limits.write_timeout), self._engine.begin() as conn:
            await writes.apply(
                conn,
                entries,
                store_transcripts=self._store_transcripts,
                known_calls=self._rows_committed,
            )
        rows = self._rows_committed
        for entry in entries:
            if isinstance(entry, CallOpened):
                rows.add(entry.call_id)
            elif isinstance(entry, CallClosed):
                rows.discard(entry.call_id)
        if len(rows) > _MAX_ROWS_REMEMBERED:  # calls that never closed: start afresh
            rows.clear()

    # -- entries the database refuses -------------------------------------------------------

    async def _reject(self, entry: RecordEntry, exc: Exception) -> None:
        self.note_rejected(entry, exc)
        with contextlib.suppress(Exception):
            line = spool.encode([entry])
            await self._thread.run(append_rejected, self.rejected_path, line)

    def note_rejected(self, entry: RecordEntry, exc: Exception) -> None:
        """Count and log an entry refused for what it holds (by kind and key, not content)."""
        self.rejected += 1
        self._log.error(
            "records.entry_rejected",
            kind=type(entry).__name__,
            call_id=getattr(entry, "call_id", None),
            seq=getattr(entry, "seq", None),
            error=error_name(exc),
            moved_to=str(self.rejected_path),
        )

    # -- outages ----------------------------------------------------------------------------

    def _outage(self, exc: Exception) -> None:
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
            self._backoff = self._limits.retry_initial
            self._log.warning(
                "records.db_unavailable",
                error=error_name(exc),
                detail=detail(exc),
                database=self._engine.url.render_as_string(hide_password=True),
                effect="calls go ahead; records wait in the spool",
            )
        else:
            self._backoff = min(self._backoff * 2, self._limits.retry_max)
            self._log.debug("records.db_retry_failed", error=error_name(exc))
        self._retry_at = now + self._backoff * random.uniform(0.75, 1.0)

    def _recovered(self) -> None:
        if self.outage_since is None:
            return
        self._rows_committed.clear()  # the database may not be the one that went away
        self._log.info(
            "records.db_recovered",
            down_seconds=round(time.monotonic() - self.outage_since, 1),
            spool_bytes=self._spool.size,
        )
        self.outage_since = None


def append_rejected(path: Path, data: bytes) -> None:
    """Append (write + fsync) to the rejected file, rotating it past REJECTED_MAX_BYTES."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size + len(data) > REJECTED_MAX_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    _append_file(path, data)


def _append_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
