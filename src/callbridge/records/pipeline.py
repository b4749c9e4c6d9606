"""What the store's stages share: their limits, the chunks the spooler hands the committer,
how far submitted entries have got (and who waits for that), the entries refused at the
door, and the one thread that does all spool file I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from callbridge.logs import EventLogger
from callbridge.records import writes
from callbridge.records.entries import CallOpened, RecordEntry

_T = TypeVar("_T")


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


class Chunk:
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


class Progress:
    """How far submitted entries have got, by submission number (the n-th entry submit()
    accepted), and the callers waiting for some of them to get that far."""

    __slots__ = ("done", "ready", "ready_event", "spooled", "waiters")

    def __init__(self) -> None:
        self.spooled = 0  # every entry up to this one is spooled or committed
        self.done = 0  # every entry up to this one is committed or rejected
        self.ready = False  # migrated, replayed, calls of the last run closed
        self.ready_event = asyncio.Event()
        self.waiters: list[tuple[int, bool, asyncio.Future[None]]] = []

    @property
    def durable(self) -> int:
        return max(self.spooled, self.done)

    def satisfied(self, target: int, durable_only: bool) -> bool:
        if durable_only:
            return self.durable >= target
        return self.ready and self.done >= target

    def waiting_for_commit(self) -> bool:
        """Does someone wait on flush() (not only on wait_durable())?"""
        return any(not durable_only for _, durable_only, _ in self.waiters)

    def set_ready(self) -> None:
        self.ready = True
        self.ready_event.set()

    def notify(self) -> None:
        if not self.waiters:
            return
        waiting = []
        for target, durable_only, future in self.waiters:
            if future.done():
                continue
            if self.satisfied(target, durable_only):
                future.set_result(None)
            else:
                waiting.append((target, durable_only, future))
        self.waiters = waiting

    def fail_waiters(self, message: str) -> None:
        for _, _, future in self.waiters:
            if not future.done():
                future.set_exception(RuntimeError(message))
        self.waiters.clear()


class Drops:
    """Entries refused by submit(): counted, and logged once per episode of each reason."""

    __slots__ = ("_log", "_ongoing", "count")

    def __init__(self, log: EventLogger) -> None:
        self._log = log
        self._ongoing: set[str] = set()
        self.count = 0

    def drop(self, reason: str) -> None:
        self.count += 1
        if reason not in self._ongoing:  # once per episode, not per entry
            self._ongoing.add(reason)
            self._log.error("records.entries_dropped", reason=reason, dropped_total=self.count)

    def over(self, reason: str) -> None:
        """The cause of `reason` is gone: log the next drop for it again."""
        self._ongoing.discard(reason)


class SpoolThread:
    """One thread for all spool I/O: appends, reads and truncation never interleave."""

    __slots__ = ("_executor",)

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._executor is not None

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="callbridge-records-spool")

    def shutdown(self, *, forget: bool = False) -> None:
        """Wait for the thread to finish; with `forget`, it may be started again."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            if forget:
                self._executor = None

    async def run(self, fn: Callable[..., _T], *args: object) -> _T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def prepared(entry: RecordEntry, *, store_transcripts: bool, instance_id: str) -> RecordEntry:
    """An entry as it is spooled and written: without words if transcripts are not kept (on
    disk neither, the spool included), and a call opened here marked with this instance."""
    if not store_transcripts:
        entry = writes.without_words(entry)
    if isinstance(entry, CallOpened) and entry.instance_id is None:
        entry = msgspec.structs.replace(entry, instance_id=instance_id)
    return entry
