"""CallStore: takes record entries from calls without ever making them wait, and gets them
into the database.

    call path --submit()--> queue --spooler--> spool file --committer--> database

`submit()` appends to an in-memory queue and returns: no I/O, no encoding, never raises.
The spooler task lets entries gather for up to `spool_window` (100 ms; less once `batch_size`
are waiting), then encodes them and appends them to the spool file (one write + fsync, in a
worker thread). The committer task writes spooled entries to the database in order, at most
once per `commit_interval` (1 s) unless `batch_size` are waiting, in one transaction of up
to `batch_size` entries (rows inserted with one statement per table, not one per entry),
and empties the spool file whenever everything in it is committed. Nobody waits out a
window: `flush()`, `wait_durable()` and `close()` make both tasks go at once. The two
run independently, so a slow or dead database never delays spooling. While the database is
down the committer retries with exponential backoff (logging once when the outage starts and
once when it ends); spooled batches wait in memory up to a bound, beyond which they are read
back from the spool file when the database returns.

Delivery guarantee. An entry given to `submit()` is in the spool file, fsynced, one spool
write after it was submitted: within the spool window plus that write (about 100 ms, at
once for what `wait_durable()` waits on), whatever the database does. From then on it
survives the process being killed (SIGKILL, OOM, crash) or the host losing power, and
reaches the database exactly once in effect: committed by this process when the database
takes it, else by the next `start()` on the same spool file, which replays the file before
anything else. "Exactly once" comes from idempotent keys, not from an atomic
spool-and-database commit: a replayed entry may be written again, which changes nothing.
Not covered: entries submitted in the last spool window before a crash, that the
spooler had not written yet; entries refused because the in-memory queue is full (`max_queue`,
counted in `stats().dropped` and logged); and, while the spool file itself cannot be written
(disk full), entries exist only in memory until the database takes them (logged as an error).
An entry the database refuses for its content (never for an outage) is moved aside to
`<spool>.rejected` (same line format) so that it cannot hold up the others.

At `start()` the store migrates the schema, replays the spool, then closes the calls that
this instance (CALLBRIDGE_INSTANCE_ID, default the host name) left open when it last stopped,
as ended by "restart", "interrupted by restart"; calls opened through this store since it
was created are live and left alone. Instance ids must therefore be unique among processes
sharing a database. Calls older than RETENTION_DAYS are purged at start and then daily.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import logging
import math
import os
import random
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.config import Settings
from callbridge.logs import EventLogger
from callbridge.records import database, queries, spool, writes
from callbridge.records.entries import CallClosed, CallOpened, RecordEntry
from callbridge.records.queries import CallDetail, CallPage, CallQuery
from callbridge.records.spool import Spool

_T = TypeVar("_T")
_ENTRY_TYPES = frozenset(spool.KINDS.values())
_MAX_ROWS_REMEMBERED = 100_000
# SQLSTATE classes worth waiting out: connection (08), resources (53), operator intervention
# such as a restart (57), and serialization failures/deadlocks (40).
_TRANSIENT_SQLSTATE = ("08", "53", "57", "40")
# SQLite's primary result codes for the database file or its disk failing, not the data:
# BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB. Most
# come as OperationalError; a damaged or overwritten file (CORRUPT, NOTADB) comes as a
# plain DatabaseError and would otherwise be taken for entries the database refuses.
_SQLITE_DATABASE_FAULTS = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})


@dataclass(frozen=True, slots=True)
class StoreLimits:
    max_queue: int = 50_000  # entries waiting to be spooled, or held while the spool fails
    max_in_memory: int = 10_000  # spooled entries kept in memory; beyond, reread from the file
    batch_size: int = 500  # entries per database transaction (at most)
    # The spooler gathers entries this long (from the first one waiting) before one write +
    # fsync, unless batch_size of them are waiting or someone waits on flush()/wait_durable().
    spool_window: float = 0.1
    # The committer commits at most this often: one transaction for everything spooled since,
    # unless batch_size entries are waiting, someone waits on flush(), or the store closes.
    commit_interval: float = 1.0
    startup_timeout: float = 10.0  # start() waits this long for the database, then goes on
    write_timeout: float = 30.0  # one transaction; longer counts as the database being down
    read_timeout: float = 10.0
    retry_initial: float = 0.5
    retry_max: float = 30.0
    purge_interval: float = 86_400.0
    # A batch the database refuses for its content this many times in a row (when there is no
    # other entry to prove the database works) is moved to the rejected file.
    poison_strikes: int = 10


@dataclass(frozen=True, slots=True)
class StoreStats:
    submitted: int  # accepted by submit()
    durable: int  # of those, spooled or committed
    committed: int  # of those, done with (committed, or rejected by the database)
    queued: int  # waiting to be spooled
    spool_bytes: int
    dropped: int  # refused by submit(): queue full, store closed, not an entry
    rejected: int  # moved to the rejected file
    database_up: bool


class _Chunk:
    """Spooled entries on their way to the database, in order.

    `entries` is None when they are only in the spool file (the backlog of a previous run, or
    dropped from memory); `start`/`end` are None when the spool could not be written.
    """

    __slots__ = ("end", "entries", "first_n", "last_n", "start")

    def __init__(
        self,
        entries: list[RecordEntry] | None,
        start: int | None,
        end: int | None,
        last_n: int,
        first_n: int = 0,
    ) -> None:
        self.entries = entries
        self.start = start
        self.end = end
        self.first_n = first_n
        self.last_n = last_n  # submission number of its last entry (0: none of ours)


class CallStore:
    """The records of calls. `start()` it, `submit()` entries, `close()` it."""

    def __init__(
        self,
        engine: AsyncEngine,
        spool_path: str | os.PathLike[str],
        *,
        instance_id: str,
        store_transcripts: bool = True,
        retention_days: int | None = None,
        api_token: str | None = None,
        log: EventLogger | None = None,
        limits: StoreLimits | None = None,
    ) -> None:
        self.engine = engine  # owned: disposed by close()
        self.instance_id = instance_id
        self.store_transcripts = store_transcripts
        self.retention_days = retention_days
        self.api_token = api_token  # bearer token of GET /api/calls; None: API disabled
        self._log = log or EventLogger("records")
        self._limits = limits or StoreLimits()
        self._spool = Spool(spool_path)
        self._rejected_path = Path(f"{spool_path}.rejected")

        self._queue: deque[RecordEntry] = deque()
        self._accepted = 0  # submission numbers handed out
        self._taken = 0  # submission numbers taken off the queue by the spooler
        self._spooled_n = 0
        self._done_n = 0
        self._pending: deque[_Chunk] = deque()
        self._in_memory = 0
        # Entries the spool could not take: in memory only, until the database has them.
        self._memory_only = 0
        self._backlog: _Chunk | None = None
        self._committed_offset = 0
        self._spool_failing = False
        self._dropping: set[str] = set()
        self._dropped = 0
        self._rejected = 0
        self._strikes = 0
        # Calls opened through this store: live, never closed as interrupted by restart.
        # Only needed until that has been done, then no longer tracked.
        self._live: set[str] | None = set()
        # Calls whose row this store has committed (opened, not yet closed): their entries
        # need no placeholder row (in the 200-call bench, about a third of the rows of a
        # commit were those).
        self._rows_committed: set[str] = set()

        self._spool_wake = asyncio.Event()
        self._spool_hurry = asyncio.Event()  # write what is queued now, do not wait the window
        self._first_queued_at = 0.0  # when the queue last went from empty to not
        self._last_commit = -math.inf
        self._committing = 0  # chunks at the front of _pending in the committer's hands
        self._commit_wake = asyncio.Event()
        self._ready_event = asyncio.Event()
        self._waiters: list[tuple[int, bool, asyncio.Future[None]]] = []
        self._migrated = False
        self._ready = False
        self._outage_since: float | None = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._next_purge: float | None = None
        self._closing = False
        self._closed = False
        self._close_deadline = 0.0
        self._executor: ThreadPoolExecutor | None = None
        self._spooler: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        log: EventLogger | None = None,
        limits: StoreLimits | None = None,
    ) -> CallStore:
        """A store as configured; ValueError naming DATABASE_URL if it cannot be used."""
        engine = database.create_engine(settings.database_url)
        path = database.sqlite_path(settings.database_url)
        # SQLite creates its file but not the folder: without it no record could ever be
        # written, which is a typo to report now, not an outage to wait out.
        if path is not None and not path.parent.is_dir():
            raise ValueError(
                f"DATABASE_URL: the folder {path.parent} does not exist (SQLite creates the "
                "database file, not its folder)"
            )
        token = settings.callbridge_api_token
        return cls(
            engine,
            settings.callbridge_spool_path,
            instance_id=settings.callbridge_instance_id or socket.gethostname(),
            store_transcripts=settings.store_transcripts,
            retention_days=settings.retention_days,
            api_token=token.get_secret_value() if token is not None else None,
            log=log,
            limits=limits,
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool, then migrate, replay and tidy up the database (waiting up to
        `startup_timeout` for it; if it does not answer, that continues in the background
        while entries are spooled). Raises SpoolError if the spool cannot be used."""
        if self._executor is not None:
            raise RuntimeError("CallStore.start() called twice")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="callbridge-records-spool")
        try:
            backlog = await self._in_thread(self._spool.open)
        except BaseException:
            self._executor.shutdown()
            self._executor = None
            raise
        if backlog:
            self._backlog = _Chunk(None, 0, backlog, 0)
            self._pending.append(self._backlog)
            self._log.info("records.spool_replay", bytes=backlog, spool=str(self._spool.path))
        self._spooler = asyncio.create_task(self._spool_loop(), name="callbridge-records-spooler")
        self._committer = asyncio.create_task(
            self._commit_loop(), name="callbridge-records-committer"
        )
        try:
            async with asyncio.timeout(self._limits.startup_timeout):
                await self._ready_event.wait()
        except TimeoutError:
            self._log.warning(
                "records.start_deferred",
                effect="calls go ahead; records wait in the spool until the database answers",
            )

    async def close(self, timeout: float = 10.0) -> None:
        """Write out everything submitted (waiting at most `timeout` for the database; what
        it does not take stays in the spool for the next start), then stop."""
        if self._closed or self._closing:
            return
        self._closing = True
        self._close_deadline = time.monotonic() + timeout
        self._retry_at = min(self._retry_at, time.monotonic())  # one more try, now
        self._spool_wake.set()
        self._spool_hurry.set()
        self._commit_wake.set()
        tasks = [t for t in (self._spooler, self._committer) if t is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout + 1.0)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5.0)
        self._closed = True
        if self._executor is not None:
            if self._queue:  # only if the spooler was cancelled: spool what we can
                with contextlib.suppress(Exception):
                    await self._spool_queue()
            with contextlib.suppress(Exception):
                await self._in_thread(self._spool.close)
            self._executor.shutdown(wait=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await self.engine.dispose()
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(RuntimeError("the call store was closed first"))
        self._waiters.clear()
        lost = sum(len(c.entries or ()) for c in self._pending if c.start is None)
        self._log.log(
            logging.ERROR if lost else logging.INFO,
            "records.closed",
            committed=self._done_n,
            left_in_spool_bytes=self._spool.size,
            lost_not_spooled=lost,
            dropped=self._dropped,
        )

    # -- the call path ----------------------------------------------------------------------

    def submit(self, entry: RecordEntry) -> None:
        """Queue an entry for the database. O(1), no I/O, never raises, never waits.
        Call it from the event loop's thread (the call path's)."""
        try:
            if self._closed:
                self._drop("store_closed")
            elif type(entry) not in _ENTRY_TYPES:
                self._drop("not_a_record_entry")
            elif len(self._queue) >= self._limits.max_queue:
                self._drop("queue_full")
            elif self._memory_only >= self._limits.max_queue:
                self._drop("spool_failing_and_memory_full")
            else:
                queue = self._queue
                if not queue:
                    self._first_queued_at = time.monotonic()
                queue.append(entry)
                self._accepted += 1
                live = self._live
                if live is not None and type(entry) is CallOpened:
                    live.add(entry.call_id)
                if not self._spool_wake.is_set():
                    self._spool_wake.set()
                elif len(queue) >= self._limits.batch_size and not self._spool_hurry.is_set():
                    self._spool_hurry.set()
        except Exception:
            pass

    def _drop(self, reason: str) -> None:
        self._dropped += 1
        if reason not in self._dropping:  # once per episode, not per entry
            self._dropping.add(reason)
            self._log.error("records.entries_dropped", reason=reason, dropped_total=self._dropped)

    # -- waiting for progress ---------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed (and the start-up replay is
        done). Waits through outages: bound it with asyncio.timeout if needed."""
        await self._wait_for(self._accepted, durable_only=False)

    async def wait_durable(self) -> None:
        """Wait until everything submitted so far would survive a crash (spooled or
        committed)."""
        await self._wait_for(self._accepted, durable_only=True)

    async def _wait_for(self, target: int, *, durable_only: bool) -> None:
        if self._executor is None or self._closed:
            raise RuntimeError("the call store is not running")
        if self._satisfied(target, durable_only):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, durable_only, future))
        # Someone is waiting: no gathering window for the spooler or the committer.
        self._spool_hurry.set()
        self._commit_wake.set()
        await future

    def _satisfied(self, target: int, durable_only: bool) -> bool:
        if durable_only:
            return max(self._spooled_n, self._done_n) >= target
        return self._ready and self._done_n >= target

    def _notify(self) -> None:
        if not self._waiters:
            return
        waiting = []
        for target, durable_only, future in self._waiters:
            if future.done():
                continue
            if self._satisfied(target, durable_only):
                future.set_result(None)
            else:
                waiting.append((target, durable_only, future))
        self._waiters = waiting

    def stats(self) -> StoreStats:
        return StoreStats(
            submitted=self._accepted,
            durable=max(self._spooled_n, self._done_n),
            committed=self._done_n,
            queued=len(self._queue),
            spool_bytes=self._spool.size,
            dropped=self._dropped,
            rejected=self._rejected,
            database_up=self._ready and self._outage_since is None,
        )

    # -- reading ----------------------------------------------------------------------------

    async def list_calls(self, query: CallQuery) -> CallPage:
        async with asyncio.timeout(self._limits.read_timeout), self.engine.connect() as conn:
            return await queries.list_calls(conn, query)

    async def get_call(self, key: str) -> CallDetail | None:
        """A call by our call id or Twilio's CallSid."""
        async with asyncio.timeout(self._limits.read_timeout), self.engine.connect() as conn:
            return await queries.get_call(conn, key)

    async def purge_expired(self, now: datetime.datetime | None = None) -> int:
        """Delete calls older than `retention_days` (nothing if unset); returns how many."""
        if self.retention_days is None:
            return 0
        now = now or datetime.datetime.now(datetime.UTC)
        cutoff = now - datetime.timedelta(days=self.retention_days)
        async with asyncio.timeout(self._limits.write_timeout), self.engine.begin() as conn:
            purged = await writes.purge_before(conn, cutoff)
        self._rows_committed.clear()  # a purge deletes rows: assume nothing
        self._log.info("records.purged", calls=purged, before=cutoff.isoformat())
        return purged

    # -- the spooler: queue -> spool file ---------------------------------------------------

    async def _spool_loop(self) -> None:
        while True:
            self._spool_wake.clear()
            if self._queue:
                await self._gather()
                await self._spool_queue()
                continue
            if self._closing:
                self._commit_wake.set()  # the committer may be waiting for this last batch
                return
            await self._spool_wake.wait()

    async def _gather(self) -> None:
        """Let entries gather (one write + fsync for many) for up to `spool_window` after the
        first of them was queued, unless a batch is full or someone is waiting."""
        self._spool_hurry.clear()
        if self._closing or self._waiters or len(self._queue) >= self._limits.batch_size:
            return
        delay = self._first_queued_at + self._limits.spool_window - time.monotonic()
        if delay <= 0:
            return
        # A timer that sets the event rather than asyncio.timeout: under load nearly every
        # window runs out, and then costs no cancellation and no exception.
        timer = asyncio.get_running_loop().call_later(delay, self._spool_hurry.set)
        try:
            await self._spool_hurry.wait()
        finally:
            timer.cancel()

    async def _spool_queue(self) -> None:
        taken = list(self._queue)
        self._queue.clear()
        self._dropping.discard("queue_full")
        first_n = self._taken + 1
        self._taken += len(taken)
        size = self._limits.batch_size
        chunks: list[tuple[list[RecordEntry], bytes, int, int]] = []
        for i in range(0, len(taken), size):
            entries = [self._prepared(e) for e in taken[i : i + size]]
            entries, data = self._encoded(entries)
            chunks.append((entries, data, first_n + i, first_n + min(i + size, len(taken)) - 1))
        try:
            start, _ = await self._in_thread(self._spool.append, b"".join(c[1] for c in chunks))
        except OSError as exc:
            if not self._spool_failing:
                self._spool_failing = True
                self._log.error(
                    "records.spool_failed",
                    error=exc.strerror or type(exc).__name__,
                    spool=str(self._spool.path),
                    effect="entries are kept only in memory until the database takes them",
                )
            new = [_Chunk(e, None, None, last_n, first) for e, _, first, last_n in chunks]
            self._memory_only += sum(len(c.entries or ()) for c in new)
        else:
            if self._spool_failing:
                self._spool_failing = False
                self._log.info("records.spool_recovered", spool=str(self._spool.path))
            new = []
            for entries, data, first, last_n in chunks:
                new.append(_Chunk(entries, start, start + len(data), last_n, first))
                start += len(data)
        was_empty = not self._pending
        self._pending.extend(new)
        self._spooled_n = self._durable_upto()
        self._in_memory += sum(len(c.entries or ()) for c in new)
        self._bound_memory()
        self._notify()
        # A committer asleep with something pending already wakes for its next commit;
        # waking it for every spool write (ten a second) would only put it back to sleep.
        if was_empty or self._commit_delay() <= 0:
            self._commit_wake.set()

    def _prepared(self, entry: RecordEntry) -> RecordEntry:
        if not self.store_transcripts:
            entry = writes.without_words(entry)  # no words on disk, the spool included
        if isinstance(entry, CallOpened) and entry.instance_id is None:
            entry = msgspec.structs.replace(entry, instance_id=self.instance_id)
        return entry

    def _encoded(self, entries: list[RecordEntry]) -> tuple[list[RecordEntry], bytes]:
        try:
            return entries, spool.encode(entries)
        except Exception:  # one bad value must not cost the others: encode one by one
            kept, lines = [], []
            for entry in entries:
                try:
                    lines.append(spool.encode([entry]))
                except Exception as exc:
                    self._reject_log(entry, exc)
                    continue
                kept.append(entry)
            return kept, b"".join(lines)

    def _durable_upto(self) -> int:
        """The submission number up to which every entry is spooled or committed: short of
        the first entry the spool could not take, while the database has not taken it."""
        if self._memory_only:
            for chunk in self._pending:
                if chunk.start is None and chunk.entries is not None:
                    return max(chunk.first_n - 1, self._spooled_n)
        return self._spooled_n if self._spool_failing else self._taken

    def _bound_memory(self) -> None:
        # Never touch the front chunks: the committer may be writing them.
        index = max(1, self._committing)
        while self._in_memory > self._limits.max_in_memory and index < len(self._pending):
            chunk = self._pending[index]
            if chunk.entries is None or chunk.start is None:
                index += 1
                continue
            self._in_memory -= len(chunk.entries)
            chunk.entries = None
            before = self._pending[index - 1]
            if index > 1 and before.entries is None and before.end == chunk.start:
                before.end, before.last_n = chunk.end, chunk.last_n
                del self._pending[index]
            else:
                index += 1

    # -- the committer: spool -> database ---------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            now = time.monotonic()
            if self._closing:
                spooled_all = self._spooler is None or self._spooler.done()
                if now >= self._close_deadline or (spooled_all and not self._pending):
                    return
            if self._outage_since is not None and now < self._retry_at:
                await self._sleep(self._retry_at - now)
                continue
            try:
                if not self._ready:
                    await self._prepare()
                progressed = self._commit_delay() <= 0 and await self._commit_next()
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
        self._commit_wake.clear()
        deadlines = [seconds] if seconds is not None else []
        if self._ready and self._pending and self._outage_since is None:
            delay = self._commit_delay()
            if delay <= 0:
                return
            deadlines.append(delay)
        if self._next_purge is not None:
            deadlines.append(max(0.0, self._next_purge - time.monotonic()))
        if self._closing:
            deadlines.append(max(0.0, self._close_deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(deadlines) if deadlines else None):
                await self._commit_wake.wait()

    def _commit_delay(self) -> float:
        """Seconds until the next commit is due (<= 0: now)."""
        if (
            self._closing
            or self._in_memory >= self._limits.batch_size
            or (self._pending and self._pending[0].entries is None)  # a backlog in the file
            or any(not durable_only for _, durable_only, _ in self._waiters)
        ):
            return 0.0
        return self._last_commit + self._limits.commit_interval - time.monotonic()

    async def _prepare(self) -> None:
        if not self._migrated:
            async with asyncio.timeout(self._limits.write_timeout):
                revision = await database.upgrade(self.engine)
            self._migrated = True
            self._log.info("records.schema_ready", revision=revision)
        while self._backlog is not None and self._backlog in self._pending:
            await self._commit_next()
        self._backlog = None
        live = self._live if self._live is not None else set()
        async with asyncio.timeout(self._limits.write_timeout), self.engine.begin() as conn:
            interrupted = await writes.close_interrupted(conn, self.instance_id, live)
        self._live = None
        if interrupted:
            self._log.info("records.closed_interrupted", calls=len(interrupted))
        if self.retention_days is not None:
            await self._purge()
        self._ready = True
        self._ready_event.set()
        self._log.info("records.ready", instance_id=self.instance_id)
        self._notify()

    async def _purge(self) -> None:
        try:
            await self.purge_expired()
        except Exception:
            # Try again within the hour rather than a day later.
            self._next_purge = time.monotonic() + min(self._limits.purge_interval, 3600.0)
            raise
        self._next_purge = time.monotonic() + self._limits.purge_interval

    async def _commit_next(self) -> bool:
        """Commit the next batch; False if there was nothing to commit."""
        if not self._pending:
            return False
        chunk = self._pending[0]
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
            self._in_memory -= len(entries)
            unspooled = sum(len(c.entries or ()) for c in chunks if c.start is None)
            if unspooled:
                self._memory_only -= unspooled
                self._dropping.discard("spool_failing_and_memory_full")
            for _ in range(len(chunks) - 1):
                done = self._pending.popleft()
                if done.end is not None:
                    self._committed_offset = done.end
                self._done_n = max(self._done_n, done.last_n)
            chunk = self._pending[0]
            done_to = chunk.end
        else:
            assert chunk.start is not None and chunk.end is not None
            lines, done_to = await self._in_thread(
                self._spool.read, chunk.start, chunk.end, self._limits.batch_size
            )
            entries = [e for e in map(spool.decode, lines) if e is not None]
            if len(entries) < len(lines):
                self._log.warning("records.spool_lines_unreadable", lines=len(lines) - len(entries))
            if entries:
                await self._commit([self._prepared(e) for e in entries])
            chunk.start = done_to
        if done_to is not None:
            self._committed_offset = done_to
        if chunk.end is None or done_to == chunk.end:
            self._pending.popleft()
            self._done_n = max(self._done_n, chunk.last_n)
        caught_up = self._committed_offset and self._committed_offset == self._spool.size
        if caught_up and await self._in_thread(self._spool_reset_if, self._committed_offset):
            self._committed_offset = 0
        self._notify()
        return True

    def _front_chunks(self) -> list[_Chunk]:
        chunks = [self._pending[0]]
        count = len(self._pending[0].entries or ())
        for chunk in itertools.islice(self._pending, 1, None):
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
            if _transient(exc):
                raise
            await self._commit_one_by_one(entries, exc)
        self._strikes = 0

    async def _commit_one_by_one(self, entries: list[RecordEntry], batch_error: Exception) -> None:
        failed: list[tuple[RecordEntry, Exception]] = []
        for entry in entries:
            try:
                await self._transaction([entry])
            except Exception as exc:
                if _transient(exc):
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
        async with asyncio.timeout(self._limits.write_timeout), self.engine.begin() as conn:
            await writes.apply(
                conn,
                entries,
                store_transcripts=self.store_transcripts,
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

    async def _reject(self, entry: RecordEntry, exc: Exception) -> None:
        self._reject_log(entry, exc)
        with contextlib.suppress(Exception):
            line = spool.encode([entry])
            await self._in_thread(_append_rejected, self._rejected_path, line)

    def _reject_log(self, entry: RecordEntry, exc: Exception) -> None:
        self._rejected += 1
        self._log.error(
            "records.entry_rejected",
            kind=type(entry).__name__,
            call_id=getattr(entry, "call_id", None),
            seq=getattr(entry, "seq", None),
            error=_error_name(exc),
            moved_to=str(self._rejected_path),
        )

    def _outage(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            self._backoff = self._limits.retry_initial
            self._log.warning(
                "records.db_unavailable",
                error=_error_name(exc),
                detail=_detail(exc),
                database=self.engine.url.render_as_string(hide_password=True),
                effect="calls go ahead; records wait in the spool",
            )
        else:
            self._backoff = min(self._backoff * 2, self._limits.retry_max)
            self._log.debug("records.db_retry_failed", error=_error_name(exc))
        self._retry_at = now + self._backoff * random.uniform(0.75, 1.0)

    def _recovered(self) -> None:
        if self._outage_since is None:
            return
        self._rows_committed.clear()  # the database may not be the one that went away
        self._log.info(
            "records.db_recovered",
            down_seconds=round(time.monotonic() - self._outage_since, 1),
            spool_bytes=self._spool.size,
        )
        self._outage_since = None

    async def _in_thread(self, fn: Callable[..., _T], *args: object) -> _T:
        # One thread for all spool I/O: appends, reads and truncation never interleave.
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


# Entries the database refused are kept for a human to look at, not forever: past this
# size the file becomes `<name>.1` (replacing the one before) and a new one starts.
REJECTED_MAX_BYTES = 16 * 1024 * 1024


def _append_rejected(path: Path, data: bytes) -> None:
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


def _transient(exc: BaseException) -> bool:
    """Is this the database being away (wait and retry), rather than refusing the data?"""
    if isinstance(
        exc,
        OSError | TimeoutError | PoolTimeoutError | DisconnectionError | OperationalError,
    ):
        return True
    if isinstance(exc, InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in _SQLITE_DATABASE_FAULTS
        state = _sqlstate(exc)
        return state is not None and state.startswith(_TRANSIENT_SQLSTATE)
    return False


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


def _error_name(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    name = type(orig).__name__ if orig is not None else type(exc).__name__
    state = _sqlstate(exc) if isinstance(exc, DBAPIError) else None
    return f"{name} ({state})" if state else name


def _detail(exc: BaseException) -> str:
    # Only for the database being away: its messages say why ("connection refused"). A
    # refusal of data can quote the data, so it is logged by class and SQLSTATE only.
    if not _transient(exc):
        return ""
    orig = getattr(exc, "orig", None) or exc
    return str(orig).splitlines()[0][:200] if str(orig) else type(orig).__name__
