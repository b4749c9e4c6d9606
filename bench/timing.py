"""One shared clock for every frame the harness sends, and latency bookkeeping.

Hundreds of calls each sending a frame every 20 ms (and agent audio every 37.5 ms) would
be tens of thousands of timer callbacks a second if every stream had its own timer. One
1 ms tick instead walks a wheel: caller streams sit in one of 20 slots (one per ms of the
20 ms frame period, spread evenly) and one-shot events (the agent's next audio chunk) in
per-ms buckets. A late tick catches up on every ms it missed, so nothing drifts or is
skipped; the send timestamp is taken per frame, at the moment of sending, so a late tick
never shows up as latency added by the server.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections.abc import Callable

FRAME_MS = 20


class Ticker:
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._t0 = time.monotonic()
        self._tick = 0  # the next ms to process
        self._slots: list[list[Callable[[], None]]] = [[] for _ in range(FRAME_MS)]
        self._once: dict[int, list[Callable[[], None]]] = {}
        self._handle: asyncio.TimerHandle | None = None
        self.late_ticks = 0  # ticks processed more than 5 ms late: the harness was busy

    def start(self) -> None:
        self._run()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def now_ms(self) -> float:
        return (time.monotonic() - self._t0) * 1000.0

    def every_frame(self, slot: int, callback: Callable[[], None]) -> None:
        """Call `callback` every 20 ms, in ms `slot` (0-19) of each period."""
        self._slots[slot % FRAME_MS].append(callback)

    def clear_periodic(self) -> None:
        for slot in self._slots:
            slot.clear()

    def at(self, ms: float, callback: Callable[[], None]) -> None:
        """Call `callback` once, at the first tick at or after `ms` on this clock."""
        tick = max(math.ceil(ms), self._tick + 1)
        bucket = self._once.get(tick)
        if bucket is None:
            self._once[tick] = [callback]
        else:
            bucket.append(callback)

    def _run(self) -> None:
        now = self.now_ms()
        if now - self._tick > 5:
            self.late_ticks += 1
        slots, once = self._slots, self._once
        while self._tick <= now:
            for callback in slots[self._tick % FRAME_MS]:
                callback()
            bucket = once.pop(self._tick, None)
            if bucket is not None:
                for callback in bucket:
                    callback()
            self._tick += 1
        # At least 1 ms: libuv timers have ms resolution and a 0 ms timer would spin.
        delay = max(0.001, (self._tick - self.now_ms()) / 1000.0)
        self._handle = self._loop.call_later(delay, self._run)


class Latencies:
    """One-way latencies in µs, kept whole so that percentiles are exact."""

    def __init__(self) -> None:
        self.samples: array[int] = array("q")

    def summary(self) -> dict[str, float | int | None]:
        data = sorted(self.samples)
        n = len(data)
        if n == 0:
            keys = ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms")
            return {"n": 0, **dict.fromkeys(keys)}

        def pct(q: float) -> float:
            # Nearest rank: the smallest sample with at least q of the samples at or below.
            return data[min(n - 1, max(0, math.ceil(q * n) - 1))] / 1000.0

        return {
            "n": n,
            "p50_ms": pct(0.50),
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
            "p999_ms": pct(0.999),
            "max_ms": data[-1] / 1000.0,
            "mean_ms": sum(data) / n / 1000.0,
        }
