"""The agent's replies: queued, streamed at real-time pace, with their tool calls.

A reply is ``reply.started``, a burst of word deltas, its audio in chunks paced against
one monotonic clock, then ``transcript.agent`` and ``reply.done``. A tool pre-amble is a
silent reply that carries ``tool.call`` and stays open a little while for the result.
"""

from __future__ import annotations

import asyncio
import collections
import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from callbridge.testing.fake_agent.config import tool_timeout_for
from callbridge.testing.fake_agent.messages import Event, new_id
from callbridge.testing.fake_agent.script import TOOL_TIMEOUT_APOLOGY

if TYPE_CHECKING:
    from callbridge.testing.fake_agent.session import FakeSession

__all__ = ["Reply", "ReplyPlayer", "ToolCall"]


@dataclass(slots=True, eq=False)
class ToolCall:
    call_id: str
    name: str
    arguments: dict[str, Any] | str | None
    legacy_args: bool
    after_tool: str
    answered: bool = False
    timed_out: bool = False
    timer: asyncio.Task[None] | None = None

    @classmethod
    def new(
        cls, name: str, arguments: dict[str, Any] | str | None, legacy_args: bool, after: str
    ) -> ToolCall:
        return cls(new_id("call_", 24), name, arguments, legacy_args, after)


@dataclass(slots=True, eq=False)
class Reply:
    reply_id: str
    item_id: str
    text: str
    tool: ToolCall | None = None
    sent_bytes: int = 0  # audio bytes (output encoding) already written to the socket

    @classmethod
    def new(cls, text: str, tool: ToolCall | None = None) -> Reply:
        return cls(new_id("resp_"), new_id("msg_"), text, tool)


class _Pacer:
    """Schedules audio chunks against one monotonic start time, so pacing never drifts."""

    __slots__ = ("_bytes_per_second", "_loop", "_offset", "_pace", "_start")

    def __init__(self, pace: float, bytes_per_second: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()
        self._offset = 0.0
        self._pace = pace
        self._bytes_per_second = bytes_per_second

    async def wait(self) -> None:
        delay = self._start + self._offset - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def advance(self, nbytes: int) -> None:
        self._offset += nbytes / self._bytes_per_second / self._pace


class ReplyPlayer:
    """One session's replies: the one playing, those queued behind it, its tool calls."""

    def __init__(self, session: FakeSession) -> None:
        self.current: Reply | None = None
        self.calls: dict[str, ToolCall] = {}  # every tool call sent, by call_id
        self._session = session
        self._queue: collections.deque[Reply] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    def enqueue(self, reply: Reply) -> None:
        """Play ``reply`` after those queued; dropped while disconnected or if empty."""
        session = self._session
        if not session.connected or session.ended.is_set() or not (reply.text or reply.tool):
            return
        self._queue.append(reply)
        if self._task is None or self._task.done():
            self._task = session._spawn(self._play_queue(), "reply player")

    def stop(self) -> None:
        """Stop the reply playing and forget those queued."""
        self.current = None
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def spoken_text(self, reply: Reply) -> str:
        """The characters whose audio was completely sent."""
        session = self._session
        agent = session._agent
        per_sample = session._out_fmt.bytes_per_8k_sample
        samples = reply.sent_bytes // per_sample - agent._leading_samples
        if agent._samples_per_char <= 0:
            return reply.text
        return reply.text[: max(0, samples) // agent._samples_per_char]

    async def _play_queue(self) -> None:
        while self._queue and self._session.connected:
            reply = self._queue.popleft()
            self.current = reply
            try:
                await self._play(reply)
            finally:
                if self.current is reply:
                    self.current = None

    async def _play(self, reply: Reply) -> None:
        session = self._session
        agent = session._agent
        out_fmt = session._out_fmt
        encoding = out_fmt.encoding
        pacer = _Pacer(agent.pace, out_fmt.bytes_per_second)
        await session._emit(
            {"type": "reply.started", "reply_id": reply.reply_id, "item_id": reply.item_id}
        )
        if reply.text:
            await session._emit_many(
                [
                    {
                        "type": "transcript.agent.delta",
                        "reply_id": reply.reply_id,
                        "item_id": reply.item_id,
                        "delta": delta,
                        "start_ms": start_ms,
                        "end_ms": end_ms,
                    }
                    for delta, start_ms, end_ms in agent._deltas(reply.text)
                ]
            )
        await self._stream(reply, agent._chunks(reply.text, encoding), pacer)
        call = reply.tool
        if call is not None:
            await self._send_tool_call(call)
            # Live: the silent pre-amble stays open a while after tool.call, and closes
            # sooner when the result is already in.
            for chunk in agent._hold_chunks(encoding):
                if call.answered or call.timed_out:
                    break
                await self._stream(reply, [chunk], pacer)
        if reply.text:
            await session._emit(
                {
                    "type": "transcript.agent",
                    "reply_id": reply.reply_id,
                    "item_id": reply.item_id,
                    "text": reply.text,
                    "interrupted": False,
                }
            )
        await session._emit(
            {"type": "reply.done", "reply_id": reply.reply_id, "status": "completed"}
        )

    async def _stream(self, reply: Reply, chunks: list[tuple[str, int]], pacer: _Pacer) -> None:
        emit = self._session._emit
        for data, size in chunks:
            await pacer.wait()
            reply.sent_bytes += size  # before the await: a barge-in may run during the send
            pacer.advance(size)
            await emit({"type": "reply.audio", "reply_id": reply.reply_id, "data": data})

    async def _send_tool_call(self, call: ToolCall) -> None:
        session = self._session
        event: Event = {"type": "tool.call", "call_id": call.call_id, "name": call.name}
        event["args" if call.legacy_args else "arguments"] = (
            {} if call.arguments is None else copy.deepcopy(call.arguments)
        )
        self.calls[call.call_id] = call
        stamped = await session._emit(event)
        if stamped is not None:
            session.tool_calls.append(stamped)
        timeout = session._agent.tool_timeout
        if timeout is None:
            timeout = tool_timeout_for(session.config, call.name)
        call.timer = session._spawn(self._tool_timer(call, timeout), "tool timeout")

    async def _tool_timer(self, call: ToolCall, timeout: float) -> None:
        await asyncio.sleep(timeout)
        if not call.answered:
            call.timed_out = True
            self.enqueue(Reply.new(TOOL_TIMEOUT_APOLOGY))
