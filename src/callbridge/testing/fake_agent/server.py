"""The fake's server: aiohttp on loopback, authentication, fault injection, set-up.

`FakeVoiceAgent` accepts WebSockets on ``/v1/ws``, checks the credentials like the live
service, answers the first message of each socket (a new session, or the resume of one)
and then hands the socket to its `FakeSession`. It also holds what every session shares:
the settings, the script queued for all sessions, the synthetic voice and the record of
protocol violations.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import logging
import re
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from aiohttp import WSMsgType, web

from callbridge.testing import audio
from callbridge.testing.agent_schema import AgentSchema, default_schema, format_path
from callbridge.testing.fake_agent.config import (
    DEFAULT_VOICE,
    DEFAULT_VOICES,
    LLM_MESSAGE,
    bad_pcm_rate,
    resolve_config,
    tool_problem,
)
from callbridge.testing.fake_agent.connection import CLOSE_TIMEOUT, Connection
from callbridge.testing.fake_agent.formats import PCM_CHUNK_BYTES, from_ulaw
from callbridge.testing.fake_agent.messages import DECODER, ENCODER, Event, error_event
from callbridge.testing.fake_agent.script import ScriptedTurn
from callbridge.testing.fake_agent.session import FakeSession, Observer
from callbridge.testing.fake_agent.waits import Changes

__all__ = ["ConnectFailure", "FakeVoiceAgent"]

logger = logging.getLogger("callbridge.testing.fake_agent")

_CACHE_LIMIT: Final = 512
_WORD = re.compile(r"\S+\s*")


@dataclass
class ConnectFailure:
    """Injected for the next new connection.

    ``http_status`` refuses the upgrade outright. Otherwise the upgrade is accepted after
    ``accept_delay`` and, once the client's first message arrives, ``session.error{code}``
    is sent and the socket closed with ``close_code``. An empty ``code`` only delays the
    accept; the connection then proceeds normally.
    """

    code: str = "at_capacity"
    close_code: int = 1008
    message: str = "Service at capacity"
    http_status: int | None = None
    accept_delay: float = 0.0


class FakeVoiceAgent:
    """The fake Voice Agent API server. Use as ``async with FakeVoiceAgent() as fake:``."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        voices: Iterable[str] = DEFAULT_VOICES,
        ms_per_char: float = 40.0,
        chunk_bytes: int = 300,
        leading_silence_ms: float = 100.0,
        speech_threshold: float = 500.0,
        speech_start_ms: float = 60.0,
        end_of_turn_silence_ms: float = 300.0,
        barge_in_ms: float = 100.0,
        resume_window: float = 30.0,
        tool_timeout: float | None = None,
        pace: float = 1.0,
        validate_own_events: bool = False,
        ready_delay: float = 0.02,
        tool_hold_ms: float = 300.0,
        agents: Mapping[str, Mapping[str, Any]] | None = None,
        script: Iterable[ScriptedTurn] = (),
        observer: Observer | None = None,
    ) -> None:
        if pace <= 0:
            raise ValueError("pace must be positive")
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        self.api_key = api_key
        self.voices: tuple[str, ...] = tuple(voices)
        self.ms_per_char = ms_per_char
        self.chunk_bytes = chunk_bytes
        self.leading_silence_ms = leading_silence_ms
        self.speech_threshold = speech_threshold
        self.speech_start_ms = speech_start_ms
        self.end_of_turn_silence_ms = end_of_turn_silence_ms
        self.barge_in_ms = barge_in_ms
        self.resume_window = resume_window
        self.tool_timeout = tool_timeout
        self.pace = pace
        self.validate_own_events = validate_own_events
        self.ready_delay = ready_delay
        self.tool_hold_ms = tool_hold_ms
        # Stored agents by agent_id: session fields (system_prompt, greeting, tools, ...).
        self.agents: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (agents or {}).items()}

        self.sessions: list[FakeSession] = []
        self.connections = 0
        self.violations: list[str] = []
        self.errors: list[str] = []  # failures inside the fake itself; should stay empty
        self.turns: collections.deque[ScriptedTurn] = collections.deque()
        # The turns every new session plays through (after any queued in `turns`).
        self.script: tuple[ScriptedTurn, ...] = tuple(script)
        self.observer = observer
        self.connect_failures: collections.deque[ConnectFailure] = collections.deque()
        self.schema: AgentSchema = default_schema()

        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._by_id: dict[str, FakeSession] = {}
        self._resume_tokens: dict[str, FakeSession] = {}
        self._live: set[Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._changes = Changes()
        self._leading_samples = len(audio.silence(leading_silence_ms))
        self._samples_per_char = len(audio.silence(ms_per_char))
        self._speech_cache: dict[str, bytes] = {}
        self._chunk_cache: dict[tuple[str, str], list[tuple[str, int]]] = {}
        self._delta_cache: dict[str, list[tuple[str, int, int]]] = {}

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError("FakeVoiceAgent is already running")
        app = web.Application()
        app.router.add_get("/v1/ws", self._handle)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=CLOSE_TIMEOUT
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_port = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self._url = f"ws://{shown}:{bound_port}/v1/ws"

    async def stop(self) -> None:
        runner = self._runner
        if runner is None:
            return
        self._runner = None
        for session in self.sessions:
            session._finish("stopped")
        for conn in self._live:
            conn.request_close(1001, b"server shutting down")
        handlers = [t for t in self._handlers if not t.done()]
        live_readers = {conn.reader for conn in self._live}
        for task in handlers:
            if task not in live_readers:  # still in accept_delay: nothing to close
                task.cancel()
        if handlers:
            # Readers wait for each client's close frame, bounded by the close timeout.
            _, pending = await asyncio.wait(handlers, timeout=CLOSE_TIMEOUT + 0.5)
            for conn in self._live:
                if conn.transport is not None:
                    conn.transport.abort()
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await runner.cleanup()
        leftovers = [t for s in self.sessions for t in s._tasks if not t.done()]
        if leftovers:
            await asyncio.wait(leftovers)

    async def __aenter__(self) -> FakeVoiceAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("FakeVoiceAgent is not started")
        return self._url

    async def wait_for_session(self, index: int = 0, timeout: float = 5.0) -> FakeSession:
        def check() -> FakeSession | None:
            return self.sessions[index] if len(self.sessions) > index else None

        return await self._changes.until(check, timeout, f"session #{index}")

    # --- audio the fake speaks ----------------------------------------------------------

    def speech_for(self, text: str) -> bytes:
        """The mu-law bytes of a reply speaking ``text``, without the leading silence."""
        speech = self._speech_cache.get(text)
        if speech is None:
            speech = audio.synthesize_speech(text, self.ms_per_char)
            self._cache(self._speech_cache, text, speech)
        return speech

    def reply_audio_for(self, text: str) -> bytes:
        """Every mu-law byte a full reply speaking ``text`` streams (silence included)."""
        return audio.silence(self.leading_silence_ms) + self.speech_for(text)

    def _chunks(self, text: str, encoding: str) -> list[tuple[str, int]]:
        key = (text, encoding)
        chunks = self._chunk_cache.get(key)
        if chunks is None:
            chunks = self._split(from_ulaw(self.reply_audio_for(text), encoding), encoding)
            self._cache(self._chunk_cache, key, chunks)
        return chunks

    def _hold_chunks(self, encoding: str) -> list[tuple[str, int]]:
        key = ("\0hold", encoding)
        chunks = self._chunk_cache.get(key)
        if chunks is None:
            chunks = self._split(from_ulaw(audio.silence(self.tool_hold_ms), encoding), encoding)
            self._cache(self._chunk_cache, key, chunks)
        return chunks

    def _split(self, data: bytes, encoding: str) -> list[tuple[str, int]]:
        size = PCM_CHUNK_BYTES if encoding == "audio/pcm" else self.chunk_bytes
        return [
            (base64.b64encode(data[i : i + size]).decode("ascii"), len(data[i : i + size]))
            for i in range(0, len(data), size)
        ]

    def _deltas(self, text: str) -> list[tuple[str, int, int]]:
        """One delta per word, with its offsets (ms) into the reply's audio."""
        deltas = self._delta_cache.get(text)
        if deltas is None:
            lead, per_char = self.leading_silence_ms, self.ms_per_char
            deltas = [
                (
                    m.group(),
                    round(lead + m.start() * per_char),
                    round(lead + (m.start() + len(m.group().rstrip())) * per_char),
                )
                for m in _WORD.finditer(text)
            ]
            self._cache(self._delta_cache, text, deltas)
        return deltas

    @staticmethod
    def _cache(cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = value

    # --- internals ----------------------------------------------------------------------

    async def _guarded(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run a session task; a bug in it is recorded, never fatal to the server."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._internal_error(what, exc)
        finally:
            coro.close()  # silences "never awaited" when cancelled before it started

    def _internal_error(self, where: str, exc: BaseException) -> None:
        logger.error("fake voice agent: %s failed", where, exc_info=exc)
        self.errors.append(f"{where}: {exc!r}")

    def _check_own(self, event: Event) -> None:
        if self.validate_own_events:
            for problem in self.schema.validate_server(event):
                self.violations.append(f"fake sent: {event.get('type')}: {problem}")

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization")
        candidates = []
        if header is not None:
            key = header.strip()
            if key[:7].lower() == "bearer ":
                key = key[7:].strip()
            candidates.append(key)
        token = request.query.get("token")
        if token is not None:
            candidates.append(token)
        # The unofficial SDK resumes with the session's resume_token as its credential.
        return any(c == self.api_key or c in self._resume_tokens for c in candidates)

    async def _raw_send(self, conn: Connection, event: Event) -> None:
        """Send on a socket that has no session (yet): errors before set-up."""
        stamped = {**event, "timestamp": time.time()}
        self._check_own(stamped)
        with contextlib.suppress(ConnectionError):
            await conn.ws.send_str(ENCODER.encode(stamped).decode())

    async def _reject(
        self, conn: Connection, code: str, message: str, param: str | None, close_code: int
    ) -> None:
        await self._raw_send(conn, error_event(code, message, param, None))
        await conn.ws.close(code=close_code)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        # aiohttp may reuse this task for later requests on a kept-alive connection, so
        # it counts as a handler only while this call runs.
        task = asyncio.current_task()
        if task is None:  # not under aiohttp's request task; nothing to track
            return await self._handle_ws(request, None)
        self._handlers.add(task)
        try:
            return await self._handle_ws(request, task)
        finally:
            self._handlers.discard(task)

    async def _handle_ws(
        self, request: web.Request, task: asyncio.Task[Any] | None
    ) -> web.StreamResponse:
        self.connections += 1
        number = self.connections
        failure = self.connect_failures.popleft() if self.connect_failures else None
        if failure is not None and failure.accept_delay > 0:
            await asyncio.sleep(failure.accept_delay)
        if failure is not None and failure.http_status is not None:
            return web.Response(status=failure.http_status, text=failure.message)
        ws = web.WebSocketResponse(heartbeat=None, compress=False, timeout=CLOSE_TIMEOUT)
        await ws.prepare(request)
        conn = Connection(number, ws, request.transport, task)
        self._live.add(conn)
        try:
            if failure is not None and failure.code:
                await self._refuse(conn, failure)
            elif not self._authorized(request):
                await self._reject(conn, "unauthorized", "Authentication failed", None, 1008)
            else:
                await self._serve(conn)
        except Exception as exc:
            self._internal_error(f"connection #{number}", exc)
        finally:
            self._live.discard(conn)
            if conn.session is not None:
                conn.session._detach(conn)
            if not ws.closed:
                with contextlib.suppress(ConnectionError):
                    await ws.close(code=1011)
        return ws

    async def _refuse(self, conn: Connection, failure: ConnectFailure) -> None:
        msg = await conn.receive()
        if msg is not None and msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            await self._reject(conn, failure.code, failure.message, None, failure.close_code)

    async def _serve(self, conn: Connection) -> None:
        while True:
            msg = await conn.receive()
            if msg is None:
                return
            session = conn.session
            if session is not None and session._conn is not conn:
                # Detached (close(), abort(), a resume elsewhere): drop the frame; a
                # requested close happens on the next receive.
                if conn.close_request is None:
                    return
                continue
            if msg.type is WSMsgType.BINARY:
                await self._protocol_error(conn, "binary frame (only JSON text frames)")
                continue
            if msg.type is not WSMsgType.TEXT:
                return
            try:
                parsed = DECODER.decode(msg.data)
            except msgspec.DecodeError:
                await self._protocol_error(conn, "malformed JSON", "Invalid JSON format.")
                continue
            if not isinstance(parsed, dict):
                await self._protocol_error(conn, "JSON message is not an object")
                continue
            if session is None:
                await self._setup(conn, parsed)
            else:
                await session._on_message(parsed)

    async def _protocol_error(
        self, conn: Connection, what: str, message: str = "Invalid message format."
    ) -> None:
        session = conn.session
        if session is not None:
            session._violation(what)
            await session._error("invalid_format", message)
        else:
            self.violations.append(f"connection #{conn.number}: {what}")
            await self._raw_send(conn, error_event("invalid_format", message, None, None))

    async def _setup(self, conn: Connection, msg: Event) -> None:
        conn.pending.append(msg)
        type_ = msg.get("type")
        if type_ == "session.update":
            await self._first_update(conn, msg)
        elif type_ == "session.resume":
            await self._resume(conn, msg)
        elif type_ == "input.audio":
            conn.audio_before_setup += 1
            self.violations.append(f"connection #{conn.number}: input.audio before session.ready")
        else:
            await self._protocol_error(
                conn,
                f"{type_!r} as the first message (must be session.update or session.resume)",
                "The first message must be session.update or session.resume",
            )

    async def _first_update(self, conn: Connection, msg: Event) -> None:
        fields = msg.get("session")

        async def reject(code: str, message: str, param: str | None, close: int = 1008) -> None:
            self.violations.append(f"connection #{conn.number}: session.update: {message}")
            await self._reject(conn, code, message, param, close)

        if bad_pcm_rate(fields):
            await reject("internal_error", "Internal service error", None, 1011)
            return
        errors = self.schema.errors("client", msg)
        if errors or not isinstance(fields, dict):
            path = list(errors[0].absolute_path)[1:] if errors else []
            detail = "; ".join(f"{format_path(e.absolute_path)}: {e.message}" for e in errors)
            self.violations.append(f"connection #{conn.number}: session.update: {detail}")
            await self._reject(
                conn,
                "invalid_format",
                "Invalid message format for type 'session.update'",
                format_path(path) or None,
                1008,
            )
            return
        if "llm" in fields:
            await reject("invalid_value", LLM_MESSAGE, "llm")
            return
        if "agent_id" in fields:
            if len(fields) > 1:
                await reject(
                    "invalid_value",
                    "agent_id is mutually exclusive with other session fields",
                    "agent_id",
                )
                return
            stored = self.agents.get(fields["agent_id"])
            if stored is None:
                await reject("agent_not_found", "Agent not found", "agent_id")
                return
            fields = {**copy.deepcopy(stored), "agent_id": fields["agent_id"]}
        else:
            voice = (fields.get("output") or {}).get("voice")
            if voice is not None and voice not in self.voices:
                valid = ", ".join(self.voices)
                await reject(
                    "invalid_value",
                    f"Invalid voice '{voice}'. Must be one of: {valid}",
                    "output.voice",
                )
                return
            problem = tool_problem(fields.get("tools"))
            if problem is not None:
                await reject("invalid_value", f"'{problem}' must be an object", problem)
                return
        default_voice = DEFAULT_VOICE if DEFAULT_VOICE in self.voices else self.voices[0]
        session = FakeSession(self, resolve_config(fields, default_voice))
        session.received.extend(conn.pending)
        session.audio_before_ready = conn.audio_before_setup
        conn.pending = []
        self.sessions.append(session)
        self._by_id[session.session_id] = session
        self._resume_tokens[session.resume_token] = session
        session._attach(conn)
        self._changes.notify()
        await session._emit({"type": "session.updated", "config": copy.deepcopy(session.config)})
        session._spawn(session._become_ready(self.ready_delay), "session.ready")

    async def _resume(self, conn: Connection, msg: Event) -> None:
        errors = self.schema.validate_client(msg)
        if errors:
            self.violations.append(f"connection #{conn.number}: session.resume: {errors}")
            await self._reject(
                conn,
                "invalid_format",
                "Invalid message format for type 'session.resume'",
                None,
                1008,
            )
            return
        session = self._by_id.get(msg["session_id"])
        if session is None or session.ended.is_set():
            await self._reject(
                conn, "session_not_found", "Session not found or expired", "session_id", 1008
            )
            return
        old = session._conn
        if old is not None:  # the client gave up on a socket we still think is alive
            session._detach(old)
            old.request_close(1000, b"session resumed elsewhere")
        session.received.extend(conn.pending)
        session.audio_before_ready += conn.audio_before_setup
        conn.pending = []
        session._attach(conn)
        await session._resumed()
