"""One Voice Agent session of the fake: its socket, the client's messages, its turns."""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import copy
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final

from callbridge.testing.agent_schema import format_path
from callbridge.testing.fake_agent.config import (
    LLM_MESSAGE,
    apply_mutable,
    bad_pcm_rate,
    immutable_changes,
    tool_problem,
)
from callbridge.testing.fake_agent.connection import Connection
from callbridge.testing.fake_agent.formats import FORMATS, PCM, AudioFormat
from callbridge.testing.fake_agent.messages import ENCODER, Event, error_event, new_id
from callbridge.testing.fake_agent.playback import Reply, ReplyPlayer, ToolCall
from callbridge.testing.fake_agent.script import (
    END_CALL_GOODBYE,
    REPLY_CREATE_TEXT,
    ScriptedTurn,
    after_tool_text,
    first_word,
    next_turn,
    take_turn,
)
from callbridge.testing.fake_agent.turns import Heard, TurnDetector
from callbridge.testing.fake_agent.waits import Changes, matcher, scanner

if TYPE_CHECKING:
    from callbridge.testing.fake_agent.server import FakeVoiceAgent

__all__ = ["FakeSession", "Observer"]

# Called with (session, "sent" or "received", event) for every event the fake sends and
# every message but input.audio it receives: a live transcript for `callbridge fake-agent`.
Observer = Callable[["FakeSession", str, Event], None]

_EXPIRES_IN: Final = 3595  # seconds from connecting to session.ready's expires_at, as live
_FULLY_VALIDATED_AUDIO: Final = 20  # input.audio messages per session checked against the schema
_RATE_TOLERANCE: Final = 2.0  # seconds (wall clock, pace-scaled) the caller may run ahead


class FakeSession:
    """One Voice Agent session; survives socket drops until the resume window ends."""

    def __init__(self, agent: FakeVoiceAgent, config: dict[str, Any]) -> None:
        self.session_id = new_id("sess_")
        self.config = config
        self.received: list[Event] = []
        self.sent: list[Event] = []
        self.input_audio = bytearray()
        self.audio_before_ready = 0
        self.tool_results: dict[str, dict[str, Any]] = {}
        self.tool_calls: list[Event] = []
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self.resume_token = secrets.token_urlsafe(32)
        self.expires_at = int(time.time()) + _EXPIRES_IN

        self._agent = agent
        self._conn: Connection | None = None
        self._changes = Changes()
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()
        self._started = time.monotonic()
        self._ready = False
        self._ready_at = 0.0
        self._audio_seconds = 0.0
        self._last_rate_error = -1e9
        self._audio_messages = 0
        self._player = ReplyPlayer(self)
        self._resume_timer: asyncio.Task[None] | None = None
        self._in_fmt = PCM
        self._turns = TurnDetector()
        self._turn_item = ""
        self._script = collections.deque(agent.script)
        self._refresh_input_format()

    def __repr__(self) -> str:
        return f"<FakeSession {self.session_id} connected={self.connected} ended={self.end_reason}>"

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # --- public API for tests -----------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        """Send any server event (``timestamp`` is added); dropped while disconnected."""
        await self._emit(event)

    async def send_error(
        self,
        code: str,
        message: str = "Simulated error",
        *,
        param: str | None = None,
        close_code: int | None = None,
    ) -> None:
        """Send ``session.error``; with ``close_code`` the error is fatal (not resumable)."""
        await self._emit(error_event(code, message, param, self.session_id))
        if close_code is not None:
            self._fatal_close(f"error:{code}", close_code)

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        """Close the socket without ``session.ended``; the session stays resumable."""
        conn = self._conn
        if conn is None:
            return
        self._detach(conn)
        conn.request_close(code, message)

    async def abort(self) -> None:
        """Drop the TCP connection without a close frame; the session stays resumable."""
        conn = self._conn
        if conn is None:
            return
        self._detach(conn)
        if conn.transport is not None:
            conn.transport.abort()

    async def say(self, text: str) -> str:
        """Start a reply speaking ``text`` (queued behind one already playing)."""
        reply = Reply.new(text)
        self._player.enqueue(reply)
        return reply.reply_id

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | str,
        *,
        legacy_args: bool = False,
        after_tool: str = ScriptedTurn.after_tool,
    ) -> str:
        """Start a tool pre-amble reply emitting ``tool.call``; returns its ``call_id``."""
        call = ToolCall.new(name, arguments, legacy_args, after_tool)
        self._player.enqueue(Reply.new("", tool=call))
        return call.call_id

    async def barge_in(self) -> None:
        """Act as if turn detection decided the caller interrupted, now."""
        await self._barge_in()

    async def end(self) -> None:
        """Server-initiated end: ``session.ended`` then close 1000."""
        conn = self._conn
        await self._emit(self._ended_event())
        self._finish("server_end")
        if conn is not None:
            conn.request_close(1000)

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool] | str, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first received client message matching (a ``type`` or a predicate)."""
        match = matcher(predicate)
        return await self._changes.until(scanner(self.received, match), timeout, str(predicate))

    async def wait_sent(
        self, type_: str | Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first event the fake sent matching (a ``type`` or a predicate)."""
        match = matcher(type_)
        return await self._changes.until(scanner(self.sent, match), timeout, f"sent {type_}")

    async def wait_input_audio(self, nbytes: int, timeout: float = 5.0) -> None:
        """Until at least ``nbytes`` of caller audio were accepted."""

        def check() -> bool | None:
            return True if len(self.input_audio) >= nbytes else None

        await self._changes.until(check, timeout, f"{nbytes} bytes of input audio")

    # --- plumbing ---------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._agent._guarded(coro, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A task cancelled before it ever ran never awaited its coroutine: close it quietly.
        task.add_done_callback(lambda _: coro.close())
        return task

    def _violation(self, text: str) -> None:
        self._agent.violations.append(f"{self.session_id}: {text}")

    async def _emit(self, event: Event) -> Event | None:
        """Send one event; dropped (and not recorded) while no socket is attached."""
        async with self._send_lock:
            return await self._write(event)

    async def _emit_many(self, events: list[Event]) -> None:
        """Send events back to back, with nothing interleaved."""
        async with self._send_lock:
            for event in events:
                await self._write(event)

    async def _write(self, event: Event) -> Event | None:
        conn = self._conn
        if conn is None or conn.ws.closed:
            return None
        stamped = {**event, "timestamp": time.time()}
        self.sent.append(stamped)
        self._changes.notify()
        self._agent._check_own(stamped)
        observer = self._agent.observer
        if observer is not None:
            observer(self, "sent", stamped)
        # On a dead socket the reader sees the disconnect and detaches the session.
        with contextlib.suppress(ConnectionError):
            await conn.ws.send_str(ENCODER.encode(stamped).decode())
        return stamped

    def _attach(self, conn: Connection) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        self._conn = conn
        conn.session = self

    def _detach(self, conn: Connection) -> None:
        """The socket is gone but the session is not over: start the resume window."""
        if self._conn is not conn or self.ended.is_set():
            return
        self._conn = None
        self._player.stop()
        self._turns.reset()
        self._resume_timer = self._spawn(self._expire_later(), "resume window")
        self._changes.notify()

    async def _expire_later(self) -> None:
        await asyncio.sleep(self._agent.resume_window)
        if self._conn is None:
            self._finish("expired")

    def _finish(self, reason: str) -> None:
        """The session is over for good: stop everything it owns."""
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.ended.set()
        self._conn = None
        self._player.stop()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self._agent._resume_tokens.pop(self.resume_token, None)
        self._changes.notify()

    def _fatal_close(self, reason: str, close_code: int) -> None:
        conn = self._conn
        self._finish(reason)
        if conn is not None:
            conn.request_close(close_code)

    def _ended_event(self) -> Event:
        return {
            "type": "session.ended",
            "session_duration_seconds": round(time.monotonic() - self._started, 3),
            "audio_duration_seconds": None,
        }

    def _ready_event(self) -> Event:
        return {
            "type": "session.ready",
            "session_id": self.session_id,
            "config": copy.deepcopy(self.config),
            "expires_at": self.expires_at,
            "resume_token": self.resume_token,
        }

    async def _become_ready(self, delay: float) -> None:
        # The live service sends session.ready shortly after session.updated; audio sent
        # in that gap arrives before ready and is a client bug this delay can expose.
        if delay > 0:
            await asyncio.sleep(delay)
        self._ready = True
        self._ready_at = time.monotonic()
        await self._emit(self._ready_event())
        greeting = self.config.get("greeting")
        if greeting:
            self._player.enqueue(Reply.new(greeting))

    async def _resumed(self) -> None:
        self._ready = True
        await self._emit(self._ready_event())

    def _refresh_input_format(self) -> None:
        fmt = FORMATS.get(self.config["input"]["format"]["encoding"], PCM)
        self._in_fmt = fmt
        agent = self._agent
        self._turns.configure(
            fmt, agent.speech_start_ms, agent.end_of_turn_silence_ms, agent.barge_in_ms
        )

    @property
    def _out_fmt(self) -> AudioFormat:
        return FORMATS.get(self.config["output"]["format"]["encoding"], PCM)

    # --- client messages ----------------------------------------------------------------

    async def _on_message(self, msg: Event) -> None:
        self.received.append(msg)
        self._changes.notify()
        type_ = msg.get("type")
        if type_ == "input.audio":
            await self._on_input_audio(msg)
            return
        observer = self._agent.observer
        if observer is not None:
            observer(self, "received", msg)
        errors = self._agent.schema.errors("client", msg)
        if errors:
            known = isinstance(type_, str) and type_ in self._agent.schema.client_types
            text = (
                f"Invalid message format for type '{type_}'"
                if known
                else f"Unknown message type: {type_}"
            )
            detail = "; ".join(f"{format_path(e.absolute_path)}: {e.message}" for e in errors)
            self._violation(f"{type_}: {detail}")
            await self._error("invalid_format", text)
            return
        if type_ == "session.update":
            await self._on_update(msg["session"])
        elif type_ == "tool.result":
            self._on_tool_result(msg)
        elif type_ == "reply.create":
            self._player.enqueue(Reply.new(msg.get("instructions") or REPLY_CREATE_TEXT))
        elif type_ == "session.end":
            await self._on_end()
        elif type_ == "session.resume":
            self._violation("session.resume is only valid as the first message of a socket")
            await self._error(
                "invalid_format", "session.resume must be the first message on a new connection"
            )
        elif type_ == "reply.cancel":
            self._violation("reply.cancel is undocumented; the live API has no client cancel")
        # conversation.message: accepted, no effect (live: never reached the model)

    async def _error(
        self, code: str, message: str, param: str | None = None, *, config_level: bool = False
    ) -> None:
        await self._emit(
            error_event(code, message, param, self.session_id if config_level else None)
        )

    async def _on_input_audio(self, msg: Event) -> None:
        if not self._ready:
            self.audio_before_ready += 1
            self._violation("input.audio before session.ready (dropped)")
            return
        self._audio_messages += 1
        if self._audio_messages <= _FULLY_VALIDATED_AUDIO:
            errors = self._agent.schema.validate_client(msg)
        elif len(msg) != 2 or not isinstance(msg.get("audio"), str):
            errors = ["input.audio must be exactly {type, audio} with a string audio"]
        else:
            errors = []
        if errors:
            self._violation("input.audio: " + "; ".join(errors))
            await self._error("invalid_format", "Invalid message format for type 'input.audio'")
            return
        try:
            data = base64.b64decode(msg["audio"], validate=True)
        except (binascii.Error, ValueError):
            self._violation("input.audio: audio is not valid base64")
            await self._error("invalid_audio", "Invalid audio data")
            return
        self.input_audio += data
        self._changes.notify()
        await self._check_rate(len(data))
        await self._detect(data)

    async def _check_rate(self, nbytes: int) -> None:
        agent = self._agent
        self._audio_seconds += nbytes / self._in_fmt.bytes_per_second
        now = time.monotonic()
        ahead = self._audio_seconds / agent.pace - (now - self._ready_at)
        if ahead > _RATE_TOLERANCE and now - self._last_rate_error >= 1.0:
            self._last_rate_error = now
            self._violation(
                f"audio faster than real time: {ahead * agent.pace:.2f} s of audio ahead"
            )
            await self._error("audio_rate_violation", "Audio sent faster than real time")

    async def _on_update(self, fields: Event) -> None:
        if bad_pcm_rate(fields):
            self._violation("session.update: audio/pcm supports only sample_rate 24000")
            await self._error("internal_error", "Internal service error")
            self._fatal_close("error:internal_error", 1011)
            return
        if "agent_id" in fields:
            self._violation("session.update: agent_id after the first session.update")
            await self._error(
                "agent_id_not_first",
                "agent_id can only be set on the first session.update",
                "agent_id",
                config_level=True,
            )
            return
        if "llm" in fields:
            self._violation("session.update: inline llm")
            await self._error("invalid_value", LLM_MESSAGE, "llm", config_level=True)
            return
        problem = tool_problem(fields.get("tools"))
        if problem is not None:
            self._violation(f"session.update: {problem} must be an object")
            await self._error(
                "invalid_value", f"'{problem}' must be an object", problem, config_level=True
            )
            return
        for param in immutable_changes(self.config, fields):
            self._violation(f"session.update: changes immutable field {param}")
            await self._error(
                "immutable_field",
                f"'{param}' cannot be changed after the first session.update",
                param,
                config_level=True,
            )
        apply_mutable(self.config, fields)
        self._refresh_input_format()
        await self._emit({"type": "session.updated", "config": copy.deepcopy(self.config)})

    def _on_tool_result(self, msg: Event) -> None:
        call_id = msg["call_id"]
        call = self._player.calls.get(call_id)
        if call is None:
            self._violation(f"tool.result for unknown call_id {call_id!r}")
            return
        if call.answered:
            self._violation(f"tool.result for call_id {call_id!r} answered twice")
            return
        call.answered = True
        self.tool_results[call_id] = msg
        self._changes.notify()
        if call.timer is not None and call.timer is not asyncio.current_task():
            call.timer.cancel()
        if not call.timed_out:  # a late answer: the agent already apologised
            if call.name == "end_call" and call.after_tool == ScriptedTurn.after_tool:
                self._player.enqueue(Reply.new(END_CALL_GOODBYE))
                return
            self._player.enqueue(Reply.new(after_tool_text(call.after_tool, msg["result"])))

    async def _on_end(self) -> None:
        conn = self._conn
        await self._emit(self._ended_event())
        self._finish("session.end")
        if conn is not None:
            conn.request_close(1000)

    # --- the caller's turns -------------------------------------------------------------

    def _interruptible(self) -> bool:
        detection = self.config["input"].get("turn_detection")
        return not (isinstance(detection, Mapping) and detection.get("interrupt_response") is False)

    async def _detect(self, data: bytes) -> None:
        heard = self._turns.feed(
            data, self._agent.speech_threshold, replying=self._player.current is not None
        )
        if heard is None:
            return
        if heard is Heard.TURN_STARTED:
            await self._start_turn()
        elif heard is Heard.TURN_ENDED:
            await self._end_turn()
        elif self._interruptible():
            await self._barge_in()

    def _user_delta(self) -> Event:
        turn = next_turn(self._agent.turns, self._script)
        return {
            "type": "transcript.user.delta",
            "item_id": self._turn_item,
            "text": first_word(turn.user_text),
        }

    async def _start_turn(self) -> None:
        self._turn_item = new_id("msg_")
        await self._emit_many([{"type": "input.speech.started"}, self._user_delta()])

    async def _end_turn(self) -> None:
        turn = take_turn(self._agent.turns, self._script)
        await self._emit_many(
            [
                {"type": "input.speech.stopped"},
                {"type": "transcript.user", "item_id": self._turn_item, "text": turn.user_text},
            ]
        )
        if turn.tool_name is not None:
            call = ToolCall.new(
                turn.tool_name, turn.tool_arguments, turn.legacy_args, turn.after_tool
            )
            self._player.enqueue(Reply.new("", tool=call))
        elif turn.reply:
            self._player.enqueue(Reply.new(turn.reply))

    async def _barge_in(self) -> None:
        reply = self._player.current
        self._player.stop()
        call = reply.tool if reply is not None else None
        if call is not None and call.timer is not None and not call.answered:
            # The client discards the results of an interrupted reply's tool calls, so
            # none will come: the agent has moved on and must not apologise for it later.
            call.timer.cancel()
        self._turns.begin()
        self._turn_item = new_id("msg_")
        events: list[Event] = [{"type": "input.speech.started"}]
        if reply is not None:
            events += [
                {
                    "type": "transcript.agent",
                    "reply_id": reply.reply_id,
                    "item_id": reply.item_id,
                    "text": self._player.spoken_text(reply),
                    "interrupted": True,
                },
                {"type": "reply.done", "reply_id": reply.reply_id, "status": "interrupted"},
            ]
        events.append(self._user_delta())
        await self._emit_many(events)
