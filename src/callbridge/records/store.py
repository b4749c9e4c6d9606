"""CallStore: takes record entries from calls without ever making them wait, and gets them
into the database.

    call path --submit()--> queue --Spooler--> spool file --Committer--> database

`submit()` appends to an in-memory queue and returns: no I/O, never raises. The spooler
(`spooler.py`) and the committer (`committer.py`) are two tasks that run independently, so a
slow or dead database never delays spooling; `flush()`, `wait_durable()` and `close()` make
both go at once. An entry is fsynced in the spool file one spool write after `submit()`;
from then on it survives a crash or power loss and reaches the database exactly once in
effect (writes are idempotent, and the next `start()` replays the file first), unless the
database refuses it for its content: then it goes to `<spool>.rejected`. Not covered:
entries not yet spooled at a crash, entries refused because the queue is full (counted in
`stats().dropped`, logged), and entries held only in memory while the spool cannot be written.

`start()` migrates the schema, replays the spool, then closes the calls this instance left
open when it last stopped, as ended by "restart" (not those opened through this store since
it was created). The instance is CALLBRIDGE_INSTANCE_ID, default the host name: it must be
unique among processes sharing a database. Calls older than RETENTION_DAYS are purged at
start and then daily.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.config import Settings
from callbridge.logs import EventLogger
from callbridge.records import database, queries, spool
from callbridge.records.committer import Committer
from callbridge.records.entries import CallOpened, RecordEntry
from callbridge.records.pipeline import Drops, Progress, SpoolThread, StoreLimits
from callbridge.records.queries import CallDetail, CallPage, CallQuery
from callbridge.records.spool import Spool
from callbridge.records.spooler import Spooler

__all__ = ["CallStore", "StoreLimits", "StoreStats"]

_ENTRY_TYPES = frozenset(spool.KINDS.values())


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
        log: EventLogger | None = None,
        limits: StoreLimits | None = None,
    ) -> None:
        self.engine = engine  # owned: disposed by close()
        self.instance_id = instance_id
        self.store_transcripts = store_transcripts
        self.retention_days = retention_days
        self._log = log or EventLogger("records")
        self._limits = limits or StoreLimits()
        self._spool = Spool(spool_path)
        self._thread = SpoolThread()
        self._progress = Progress()
        self._drops = Drops(self._log)
        self._committer = Committer(
            engine,
            self._spool,
            self._thread,
            self._progress,
            self._drops,
            self._limits,
            self._log,
            instance_id=instance_id,
            store_transcripts=store_transcripts,
            retention_days=retention_days,
            rejected_path=Path(f"{spool_path}.rejected"),
        )
        self._spooler = Spooler(
            self._spool,
            self._thread,
            self._committer,
            self._progress,
            self._drops,
            self._limits,
            self._log,
            store_transcripts=store_transcripts,
            instance_id=instance_id,
        )
        # The spooler's, for submit(): the same objects, one lookup less per entry.
        self._queue = self._spooler.queue
        self._spool_wake = self._spooler.wake
        self._spool_hurry = self._spooler.hurry
        self._accepted = 0  # submission numbers handed out
        self._closing = False
        self._closed = False
        self._spooling: asyncio.Task[None] | None = None
        self._committing: asyncio.Task[None] | None = None

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
        return cls(
            engine,
            settings.callbridge_spool_path,
            instance_id=settings.callbridge_instance_id or socket.gethostname(),
            store_transcripts=settings.store_transcripts,
            retention_days=settings.retention_days,
            log=log,
            limits=limits,
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool, then migrate, replay and tidy up the database (waiting up to
        `startup_timeout` for it; if it does not answer, that continues in the background
        while entries are spooled). Raises SpoolError if the spool cannot be used."""
        if self._thread.running:
            raise RuntimeError("CallStore.start() called twice")
        self._thread.start()
        try:
            backlog = await self._thread.run(self._spool.open)
        except BaseException:
            self._thread.shutdown(forget=True)
            raise
        if backlog:
            self._committer.add_backlog(backlog)
            self._log.info("records.spool_replay", bytes=backlog, spool=str(self._spool.path))
        self._spooling = asyncio.create_task(self._spooler.run(), name="callbridge-records-spooler")
        self._committing = asyncio.create_task(
            self._committer.run(self._spooling), name="callbridge-records-committer"
        )
        try:
            async with asyncio.timeout(self._limits.startup_timeout):
                await self._progress.ready_event.wait()
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
        self._committer.close_by(time.monotonic() + timeout)
        self._spooler.close_soon()
        tasks = [t for t in (self._spooling, self._committing) if t is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout + 1.0)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5.0)
        self._closed = True
        if self._thread.running:
            if self._queue:  # only if the spooler was cancelled: spool what we can
                with contextlib.suppress(Exception):
                    await self._spooler.spool_queue()
            with contextlib.suppress(Exception):
                await self._thread.run(self._spool.close)
            self._thread.shutdown()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await self.engine.dispose()
        self._progress.fail_waiters("the call store was closed first")
        lost = sum(len(c.entries or ()) for c in self._committer.pending if c.start is None)
        self._log.log(
            logging.ERROR if lost else logging.INFO,
            "records.closed",
            committed=self._progress.done,
            left_in_spool_bytes=self._spool.size,
            lost_not_spooled=lost,
            dropped=self._drops.count,
        )

    # -- the call path ----------------------------------------------------------------------

    def submit(self, entry: RecordEntry) -> None:
        """Queue an entry for the database. O(1), no I/O, never raises, never waits.
        Call it from the event loop's thread (the call path's)."""
        try:
            if self._closed:
                self._drops.drop("store_closed")
            elif type(entry) not in _ENTRY_TYPES:
                self._drops.drop("not_a_record_entry")
            elif len(self._queue) >= self._limits.max_queue:
                self._drops.drop("queue_full")
            elif self._committer.memory_only >= self._limits.max_queue:
                self._drops.drop("spool_failing_and_memory_full")
            else:
                queue = self._queue
                if not queue:
                    self._spooler.first_queued_at = time.monotonic()
                queue.append(entry)
                self._accepted += 1
                live = self._committer.live
                if live is not None and type(entry) is CallOpened:
                    live.add(entry.call_id)
                if not self._spool_wake.is_set():
                    self._spool_wake.set()
                elif len(queue) >= self._limits.batch_size and not self._spool_hurry.is_set():
                    self._spool_hurry.set()
        except Exception:
            pass

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
        if not self._thread.running or self._closed:
            raise RuntimeError("the call store is not running")
        if self._progress.satisfied(target, durable_only):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._progress.waiters.append((target, durable_only, future))
        # Someone is waiting: no gathering window for the spooler or the committer.
        self._spool_hurry.set()
        self._committer.wake.set()
        await future

    def stats(self) -> StoreStats:
        progress = self._progress
        return StoreStats(
            submitted=self._accepted,
            durable=progress.durable,
            committed=progress.done,
            queued=len(self._queue),
            spool_bytes=self._spool.size,
            dropped=self._drops.count,
            rejected=self._committer.rejected,
            database_up=progress.ready and self._committer.outage_since is None,
        )

    # -- reading ----------------------------------------------------------------------------

    async def list_calls(self, query: CallQuery) -> CallPage:
        async with asyncio.timeout(self._limits.read_timeout), self.engine.connect() as conn:
            return await queries.list_calls(conn, query)

    async def get_call(self, key: str) -> CallDetail | None:
        """A call by our call id or Twilio's CallSid."""
        async with asyncio.timeout(self._limits.read_timeout), self.engine.connect() as conn:
            return await queries.get_call(conn, key)

    async def overview(self, since: datetime.datetime) -> queries.Overview:
        """What the console's overview charts show, since `since`."""
        async with asyncio.timeout(self._limits.read_timeout), self.engine.connect() as conn:
            return await queries.overview(conn, since)

    async def purge_expired(self, now: datetime.datetime | None = None) -> int:
        """Delete calls older than `retention_days` (nothing if unset); returns how many."""
        return await self._committer.purge_expired(now)
