"""The spooler: record entries from the in-memory queue to the spool file.

It lets entries gather for up to `StoreLimits.spool_window` after the first of them was
queued (not at all once `batch_size` are waiting, someone waits on flush() or
wait_durable(), or the store closes), encodes them and appends them to the spool file with
one write and one fsync in the spool thread, then hands them to the committer. It never
waits for the database. While the spool file cannot be written (disk full, say) it hands
them over in memory only, and says so in one error line.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from callbridge.logs import EventLogger
from callbridge.records import spool
from callbridge.records.committer import Committer
from callbridge.records.entries import RecordEntry
from callbridge.records.pipeline import Chunk, Drops, Progress, SpoolThread, StoreLimits, prepared
from callbridge.records.spool import Spool


class Spooler:
    """Owns the queue that `CallStore.submit()` appends to; `run()` is its task."""

    def __init__(
        self,
        spool_file: Spool,
        thread: SpoolThread,
        committer: Committer,
        progress: Progress,
        drops: Drops,
        limits: StoreLimits,
        log: EventLogger,
        *,
        store_transcripts: bool,
        instance_id: str,
    ) -> None:
        self.queue: deque[RecordEntry] = deque()
        self.taken = 0  # submission numbers taken off the queue
        self.first_queued_at = 0.0  # when the queue last went from empty to not
        self.wake = asyncio.Event()  # something was queued, or the store closes
        self.hurry = asyncio.Event()  # write what is queued now, do not wait the window
        self.failing = False  # the last spool write failed
        self._spool = spool_file
        self._thread = thread
        self._committer = committer
        self._progress = progress
        self._drops = drops
        self._limits = limits
        self._log = log
        self._store_transcripts = store_transcripts
        self._instance_id = instance_id
        self._closing = False

    def close_soon(self) -> None:
        """Spool what is queued at once, then stop."""
        self._closing = True
        self.wake.set()
        self.hurry.set()

    async def run(self) -> None:
        while True:
            self.wake.clear()
            if self.queue:
                await self._gather()
                await self.spool_queue()
                continue
            if self._closing:
                self._committer.wake.set()  # the committer may be waiting for this last batch
                return
            await self.wake.wait()

    async def _gather(self) -> None:
        """Let entries gather (one write + fsync for many) for up to `spool_window` after the
        first of them was queued, unless a batch is full or someone is waiting."""
        self.hurry.clear()
        if self._closing or self._progress.waiters or len(self.queue) >= self._limits.batch_size:
            return
        delay = self.first_queued_at + self._limits.spool_window - time.monotonic()
        if delay <= 0:
            return
        # A timer that sets the event rather than asyncio.timeout: under load nearly every
        # window runs out, and then costs no cancellation and no exception.
        timer = asyncio.get_running_loop().call_later(delay, self.hurry.set)
        try:
            await self.hurry.wait()
        finally:
            timer.cancel()

    async def spool_queue(self) -> None:
        """Write everything queued to the spool file and hand it to the committer."""
        taken = list(self.queue)
        self.queue.clear()
        self._drops.over("queue_full")
        first_n = self.taken + 1
        self.taken += len(taken)
        size = self._limits.batch_size
        transcripts, instance_id = self._store_transcripts, self._instance_id
        chunks: list[tuple[list[RecordEntry], bytes, int, int]] = []
        for i in range(0, len(taken), size):
            entries = [
                prepared(e, store_transcripts=transcripts, instance_id=instance_id)
                for e in taken[i : i + size]
            ]
            entries, data = self._encoded(entries)
            chunks.append((entries, data, first_n + i, first_n + min(i + size, len(taken)) - 1))
        try:
            start, _ = await self._thread.run(self._spool.append, b"".join(c[1] for c in chunks))
        except OSError as exc:
            if not self.failing:
                self.failing = True
                self._log.error(
                    "records.spool_failed",
                    error=exc.strerror or type(exc).__name__,
                    spool=str(self._spool.path),
                    effect="entries are kept only in memory until the database takes them",
                )
            new = [Chunk(e, None, None, last_n, first) for e, _, first, last_n in chunks]
        else:
            if self.failing:
                self.failing = False
                self._log.info("records.spool_recovered", spool=str(self._spool.path))
            new = []
            for entries, data, first, last_n in chunks:
                new.append(Chunk(entries, start, start + len(data), last_n, first))
                start += len(data)
        committer = self._committer
        was_empty = not committer.pending
        committer.add(new)
        self._progress.spooled = self._durable_upto()
        self._progress.notify()
        # A committer asleep with something pending already wakes for its next commit;
        # waking it for every spool write would only put it back to sleep.
        if was_empty or committer.commit_delay() <= 0:
            committer.wake.set()

    def _encoded(self, entries: list[RecordEntry]) -> tuple[list[RecordEntry], bytes]:
        try:
            return entries, spool.encode(entries)
        except Exception:  # one bad value must not cost the others: encode one by one
            kept, lines = [], []
            for entry in entries:
                try:
                    lines.append(spool.encode([entry]))
                except Exception as exc:
                    self._committer.note_rejected(entry, exc)
                    continue
                kept.append(entry)
            return kept, b"".join(lines)

    def _durable_upto(self) -> int:
        """The submission number up to which every entry is spooled or committed: short of
        the first entry the spool could not take, while the database has not taken it."""
        first = self._committer.first_unspooled()
        if first is not None:
            return max(first - 1, self._progress.spooled)
        return self._progress.spooled if self.failing else self.taken
