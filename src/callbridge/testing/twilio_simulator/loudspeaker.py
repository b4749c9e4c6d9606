"""The caller's loudspeaker: the server's audio, played at a steady rate, with its marks.

Server ``media`` is queued and "played" at ``playback_rate`` bytes a second into
`SimulatedCall.heard`. A ``mark`` waits in the queue and is echoed when playback reaches
it; ``clear`` empties the queue and echoes every pending mark at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from callbridge.testing.audio import FRAME_BYTES, SAMPLE_RATE
from callbridge.testing.twilio_simulator.timeline import place

if TYPE_CHECKING:
    from callbridge.testing.twilio_simulator.call import SimulatedCall

__all__ = ["EchoMark", "Loudspeaker"]

# Sends the echo of a mark back to the server: (name, whether its audio was played).
EchoMark = Callable[[str, bool], Awaitable[None]]


class Loudspeaker:
    """One stream's playback queue; `run` drains it for as long as the stream lives."""

    def __init__(self, call: SimulatedCall, echo_mark: EchoMark) -> None:
        self.call = call
        # The queue: bytes are audio, str items are mark names.
        self.fifo: deque[bytes | str] = deque()
        self.head_offset = 0  # bytes of the first item already played
        self.wake = asyncio.Event()
        self._echo_mark = echo_mark

    @property
    def idle(self) -> bool:
        return not self.fifo

    @property
    def unplayed(self) -> int:
        """Bytes of audio queued and not played yet."""
        queued = sum(len(item) for item in self.fifo if isinstance(item, bytes))
        return queued - self.head_offset

    def play(self, audio: bytes) -> None:
        self.fifo.append(audio)
        self.wake.set()

    async def mark(self, name: str) -> None:
        """Echo ``name`` once what is queued before it has played (at once if nothing is)."""
        if self.fifo:
            self.fifo.append(name)
            self.wake.set()
        else:
            await self._echo_mark(name, True)

    async def clear(self) -> None:
        """Drop what is queued; its marks are echoed as not played."""
        pending = [item for item in self.fifo if isinstance(item, str)]
        self.fifo.clear()
        self.head_offset = 0
        for name in pending:
            await self._echo_mark(name, False)

    async def run(self) -> None:
        """Drain the queue at playback_rate bytes/s into `heard`, echoing marks."""
        loop = asyncio.get_running_loop()
        call = self.call
        rate = call.simulator.playback_rate
        tick = min(0.02, max(0.001, FRAME_BYTES / rate))  # about one frame of audio per tick
        fifo = self.fifo
        heard = call.heard
        timeline = call.simulator.record_timeline
        while True:
            await self.wake.wait()
            began = loop.time()  # playback (re)starts now: idle time earns no credit
            played = 0
            # Where this burst starts on the call's timeline (real time: a byte a sample).
            # One that starts within a frame of the last one's end continues it: the queue
            # ran dry only between two chunks the server sent on time.
            position = round((began - (call.timeline_start or began)) * SAMPLE_RATE)
            if abs(position - call._played_end) <= FRAME_BYTES:
                position = call._played_end
            since = position / SAMPLE_RATE
            try:
                while fifo:
                    head = fifo[0]
                    if isinstance(head, str):
                        fifo.popleft()
                        await self._echo_mark(head, True)
                        continue
                    budget = int((loop.time() - began) * rate) - played
                    if budget <= 0:
                        await asyncio.sleep(tick)
                        continue
                    while budget > 0 and fifo and not isinstance(head := fifo[0], str):
                        offset = self.head_offset
                        available = len(head) - offset
                        if available <= budget:
                            piece = memoryview(head)[offset:]
                            fifo.popleft()
                            self.head_offset = 0
                            taken = available
                        else:
                            piece = memoryview(head)[offset : offset + budget]
                            self.head_offset = offset + budget
                            taken = budget
                        heard += piece
                        if timeline:
                            place(call.played_track, position + played, piece)
                        budget -= taken
                        played += taken
                    call._notify()
            finally:  # a clear, or the end of the stream, ends the burst too
                if timeline and played:
                    call.played_spans.append((since, since + played / rate))
                    call._played_end = position + played
            self.wake.clear()
            call._notify()
