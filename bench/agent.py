"""A lean Voice Agent API server for the benchmark: the protocol, none of the checking.

`callbridge.testing.fake_agent.FakeVoiceAgent` validates every message against the API's
schema and synthesises speech; that is what tests want and far too much work per frame
for hundreds of calls on the harness's one core. This agent speaks the same protocol
(session.update -> session.updated -> session.ready; reply.started / reply.audio /
transcript.agent / reply.done; input.speech.started / stopped; tool.call -> tool.result;
session.end -> session.ended) on picows, and does only what the measurement needs:

* each reply.audio carries 300 bytes (37.5 ms of μ-law), sent every 37.5 ms on the shared
  tick, stamped with the send time and a per-session sequence number;
* turns come from the caller: caller frames inside a "speech burst" carry a flag in their
  header (cheaper than measuring energy, same effect), so speech start/stop is known at
  once; speech over a playing reply is a barge-in: input.speech.started, two "late"
  chunks of the interrupted reply (which the bridge must drop), reply.done interrupted;
* replies rotate through: a tool call (generate_random_number, answered after the
  tool.result), a long reply (6 s: the next speech burst interrupts it), a short one.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import msgspec
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest

from bench import stamp

if TYPE_CHECKING:
    from bench.harness import Harness

CHUNK_BYTES = 300
CHUNK_MS = 37.5
GREETING_SECONDS = 2.0
THINK_SECONDS = 0.2  # from the end of the caller's speech to the reply
TOOL_RESULT_WAIT = 1.5  # a relay that never answers tools (the baselines) gets this long
LATE_CHUNKS = 2

_FILLER = bytes([0xFF]) * (CHUNK_BYTES - stamp.HEADER_BYTES)  # the "voice" is silence


class _Inbound(msgspec.Struct):
    type: str
    audio: str = ""
    call_id: str = ""


_decode = msgspec.json.Decoder(_Inbound).decode
_encode = msgspec.json.Encoder().encode


class _Reply:
    __slots__ = ("chunks", "reply_id", "sent", "start_ms")

    def __init__(self, reply_id: str, chunks: int, start_ms: float) -> None:
        self.reply_id = reply_id
        self.chunks = chunks
        self.sent = 0
        self.start_ms = start_ms


class AgentSession(WSListener):
    """One upstream socket from the server under test: one call's agent session."""

    def __init__(self, harness: Harness, index: int) -> None:
        self.h = harness
        self.index = index
        self.transport: WSTransport | None = None
        self.closed = False
        self.ready = False
        self.call_index: int | None = None  # learnt from the stamps of the caller's audio
        # Caller -> agent: what arrived.
        self.rx_first = 0
        self.rx_last = 0
        self.rx_count = 0
        self.rx_reordered = 0
        # Agent -> caller: what we sent (sent_seq frames that must all arrive).
        self.sent_seq = 0
        self.late_sent = 0
        self.speaking = False
        self.turn = 0
        self.reply: _Reply | None = None
        self.replies = 0
        self.tool_wait: tuple[str, asyncio.TimerHandle] | None = None
        self.barge_ins = 0
        self.tool_calls = 0
        self.tool_results = 0
        self.tool_timeouts = 0
        self.late_tool_results = 0
        self.session_end = False
        self._next_id = 0

    # --- picows callbacks ----------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.h.agent.session_closed()
        self.reply = None
        if self.tool_wait is not None:
            self.tool_wait[1].cancel()
            self.tool_wait = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT:
            try:
                msg = _decode(frame.get_payload_as_memoryview())
            except msgspec.DecodeError:
                self.h.errors.append("agent: undecodable frame")
                return
            t = msg.type
            if t == "input.audio":
                self._on_audio(msg.audio)
            elif t == "session.update":
                if not self.ready:
                    self._become_ready()
            elif t == "tool.result":
                self._on_tool_result(msg.call_id)
            elif t == "session.end":
                self.session_end = True
                self._send(b'{"type":"session.ended","session_duration_seconds":1.0}')
                transport.send_close(WSCloseCode.OK)
        elif kind is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    # --- protocol ------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.send(WSMsgType.TEXT, data)

    def _become_ready(self) -> None:
        self.ready = True
        self._send(b'{"type":"session.updated","config":{}}')
        self._send(b'{"type":"session.ready","session_id":"bench-%d"}' % self.index)
        self._start_reply(GREETING_SECONDS)

    def _on_audio(self, audio: str) -> None:
        h = self.h
        now = time.monotonic_ns()
        header = stamp.read(audio)
        if header is None:
            h.errors.append("agent: input.audio without a stamp")
            return
        kind, call, seq, sent = header
        h.rx_up += 1
        if h.recording and sent >= h.window_start_ns:
            h.lat_up.samples.append((now - sent) // 1000)
        if self.call_index is None:
            self.call_index = call
            h.link(call, self)
        if seq > self.rx_last:
            if self.rx_first == 0:
                self.rx_first = seq
            self.rx_last = seq
        else:
            self.rx_reordered += 1
        self.rx_count += 1
        if kind == stamp.KIND_SPEECH:
            if not self.speaking:
                self.speaking = True
                self._speech_started()
        elif self.speaking:
            self.speaking = False
            self._speech_stopped()

    def _speech_started(self) -> None:
        self._send(b'{"type":"input.speech.started"}')
        reply = self.reply
        if reply is None:
            return
        # Barge-in: the reply stops, but a little of its audio was already on its way.
        self.reply = None
        self.barge_ins += 1
        for _ in range(LATE_CHUNKS):
            self._send_chunk(reply, stamp.KIND_LATE, 0)
            self.late_sent += 1
        rid = reply.reply_id.encode()
        self._send(
            b'{"type":"transcript.agent","text":"Sorry, go on.","interrupted":true,'
            b'"reply_id":"%s"}' % rid
        )
        self._send(b'{"type":"reply.done","reply_id":"%s","status":"interrupted"}' % rid)

    def _speech_stopped(self) -> None:
        self._send(b'{"type":"input.speech.stopped"}')
        self._send(b'{"type":"transcript.user","text":"Give me a random number.","item_id":"u"}')
        asyncio.get_running_loop().call_later(THINK_SECONDS, self._respond)

    def _respond(self) -> None:
        if self.closed or self.h.quiet:
            return
        step = self.turn % 3
        self.turn += 1
        if step == 0:
            self._call_tool()
        elif step == 1:
            self._start_reply(6.0)  # long: the caller's next burst interrupts it
        else:
            self._start_reply(2.0)

    def _call_tool(self) -> None:
        rid = self._new_id("t")
        call_id = rid.replace("t", "c", 1)
        self.tool_calls += 1
        self._send(b'{"type":"reply.started","reply_id":"%s"}' % rid.encode())
        self._send(
            _encode(
                {
                    "type": "tool.call",
                    "call_id": call_id,
                    "name": "generate_random_number",
                    "arguments": {"minimum": 1, "maximum": 6},
                }
            )
        )
        self._send(b'{"type":"reply.done","reply_id":"%s","status":"completed"}' % rid.encode())
        timer = asyncio.get_running_loop().call_later(TOOL_RESULT_WAIT, self._tool_timeout)
        self.tool_wait = (call_id, timer)

    def _on_tool_result(self, call_id: str) -> None:
        if self.tool_wait is None or self.tool_wait[0] != call_id:
            self.late_tool_results += 1  # after we gave up waiting (an overloaded server)
            return
        self.tool_wait[1].cancel()
        self.tool_wait = None
        self.tool_results += 1
        asyncio.get_running_loop().call_later(0.1, self._start_reply, 2.0)

    def _tool_timeout(self) -> None:
        self.tool_wait = None
        self.tool_timeouts += 1
        self._start_reply(2.0)

    def _new_id(self, prefix: str) -> str:
        self._next_id += 1
        return f"{prefix}{self.index}-{self._next_id}"

    def _start_reply(self, seconds: float) -> None:
        if self.closed or self.h.quiet:
            return
        reply = _Reply(self._new_id("r"), round(seconds * 1000 / CHUNK_MS), self.h.ticker.now_ms())
        self.reply = reply
        self.replies += 1
        self._send(b'{"type":"reply.started","reply_id":"%s"}' % reply.reply_id.encode())
        self.h.ticker.at(reply.start_ms, lambda: self._play(reply))

    def _play(self, reply: _Reply) -> None:
        if reply is not self.reply or self.closed or self.h.quiet:
            return  # interrupted, hung up, or the run is draining
        self.sent_seq += 1
        self._send_chunk(reply, stamp.KIND_QUIET, self.sent_seq)
        reply.sent += 1
        if reply.sent >= reply.chunks:
            self.reply = None
            rid = reply.reply_id.encode()
            self._send(
                b'{"type":"transcript.agent","text":"Here you are.","interrupted":false,'
                b'"reply_id":"%s"}' % rid
            )
            self._send(b'{"type":"reply.done","reply_id":"%s","status":"completed"}' % rid)
            return
        self.h.ticker.at(reply.start_ms + reply.sent * CHUNK_MS, lambda: self._play(reply))

    def _send_chunk(self, reply: _Reply, kind: int, seq: int) -> None:
        audio = stamp.header(kind, self.index, seq, time.monotonic_ns()) + _FILLER
        self._send(
            b'{"type":"reply.audio","reply_id":"%s","data":"%s"}'
            % (reply.reply_id.encode(), stamp.b64(audio))
        )


class BenchAgent:
    """The listening side: one `AgentSession` per upstream socket."""

    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.sessions: list[AgentSession] = []
        self._open = 0
        self._none_open = asyncio.Event()
        self._none_open.set()

    def listener(self, request: WSUpgradeRequest) -> AgentSession:
        session = AgentSession(self.h, len(self.sessions) & 0xFFFF)
        self.sessions.append(session)
        self._open += 1
        self._none_open.clear()
        return session

    def session_closed(self) -> None:
        self._open -= 1
        if self._open <= 0:
            self._none_open.set()

    async def all_closed(self) -> None:
        await self._none_open.wait()
