"""An offline fake of AssemblyAI's Voice Agent API server, for tests and load benchmarks.

``FakeVoiceAgent`` is an aiohttp WebSocket server speaking the Voice Agent protocol
(JSON text frames on ``/v1/ws``) as described in the reference notes and the bundled
AsyncAPI document. What it does:

* authentication like the live service (``Bearer`` or raw key header, ``?token=``; a bad
  key still gets the upgrade, then ``session.error unauthorized`` and close 1008);
* session set-up: nothing is sent before the first client message; ``session.updated``
  then ``session.ready``; config echo with the live defaults; the live error codes,
  ``param``s and close codes for bad first updates; ``session.resume`` within a window;
* speech: replies are streamed as deterministic synthetic audio
  (:func:`callbridge.testing.audio.synthesize_speech`) at real-time pace (times ``pace``),
  starting with silence, with a burst of word deltas, ``transcript.agent`` and
  ``reply.done``; greetings are spoken right after ``session.ready``;
* user turns are detected from the energy of the caller's audio, measured in audio time
  (bytes), so tests are deterministic; what the "user said" and how the agent answers
  come from a script of :class:`ScriptedTurn`\\ s: first ``FakeVoiceAgent.turns`` (shared
  by all sessions), then the ``script`` each new session starts with, then a default turn;
* barge-in, interactive tool calls (``arguments`` or legacy ``args``, results before or
  after the pre-amble's ``reply.done``, timeout apology, none once the caller interrupted
  the pre-amble, whose results the client discards);
* mid-session errors (``immutable_field``, ``agent_id_not_first``, ``invalid_format``,
  ``invalid_audio``, ``audio_rate_violation``) that keep the socket open;
* fault injection: refused upgrades, capacity errors, delayed accepts, server-side close,
  TCP drops, server-initiated end.

Every client message is checked against the AsyncAPI schema and the protocol rules;
anything a well-behaved client must never do is appended to ``FakeVoiceAgent.violations``.

What it does not do: no speech recognition, language model or real voices (transcripts
and replies are scripted; the "voice" is tones); ``turn_detection`` settings other than
``interrupt_response`` are echoed but not used (the constructor's timings apply); ``hold``
tools behave like ``interactive`` ones; no REST API (tokens, agents, voices) — stored
agents are plain data in ``FakeVoiceAgent.agents``; no session duration cap; audio sent
faster than real time is reported but not dropped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import copy
import logging
import re
import secrets
import sys
import time
import uuid
from array import array
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec
from aiohttp import WSMessage, WSMsgType, web

from callbridge.testing import audio
from callbridge.testing.agent_schema import AgentSchema, default_schema, format_path

__all__ = [
    "DEFAULT_VOICES",
    "REPLY_CREATE_TEXT",
    "TOOL_TIMEOUT_APOLOGY",
    "ConnectFailure",
    "FakeSession",
    "FakeVoiceAgent",
    "Observer",
    "ScriptedTurn",
]

logger = logging.getLogger(__name__)

DEFAULT_VOICES: Final[tuple[str, ...]] = (
    "alba",
    "anna",
    "charles",
    "estelle",
    "eve",
    "george",
    "giovanni",
    "iris",
    "jane",
    "jean",
    "juergen",
    "lola",
    "mary",
    "michael",
    "paul",
    "rafael",
    "reid",
    "vera",
)
DEFAULT_VOICE: Final = "alba"
TOOL_TIMEOUT_APOLOGY: Final = "Sorry, that is taking too long."
REPLY_CREATE_TEXT: Final = "How can I help?"  # spoken for a reply.create without instructions
DEFAULT_TOOL_TIMEOUT: Final = 120.0

_EXPIRES_IN: Final = 3595  # live: session.ready.expires_at ~ connect + 3595 s
_FULLY_VALIDATED_AUDIO: Final = 20  # input.audio messages per session checked against the schema
_RATE_TOLERANCE: Final = 2.0  # seconds (wall clock, pace-scaled) the caller may run ahead
_PCM_CHUNK_BYTES: Final = 480  # live: 10 ms of 24 kHz PCM16 per reply.audio
_CLOSE_TIMEOUT: Final = 2.0  # how long a close waits for the peer's close frame
_CACHE_LIMIT: Final = 512
_CLOSE_REQUESTED: Final = "fake voice agent: close requested"
_WORD = re.compile(r"\S+\s*")

_T = TypeVar("_T")
Event = dict[str, Any]
# Called with (session, "sent" or "received", event) for every event the fake sends and
# every message but input.audio it receives: a live transcript for `callbridge fake-agent`.
Observer = Callable[["FakeSession", str, Event], None]

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()


@dataclass
class ScriptedTurn:
    """What the fake does for one detected user turn.

    With ``tool_name`` set the reply is a silent tool pre-amble carrying ``tool.call``
    (``reply`` is not spoken); after the ``tool.result`` the agent speaks ``after_tool``.
    A ``str`` ``tool_arguments`` is sent as-is: fine under the legacy ``args`` field, but
    off-schema under ``arguments`` (an object), which ``validate_own_events`` reports.
    An empty ``reply`` makes the agent say nothing for that turn.
    """

    user_text: str = "hello"
    reply: str = "I heard you."
    tool_name: str | None = None
    tool_arguments: dict[str, Any] | str | None = None
    legacy_args: bool = False
    after_tool: str = "The result is {result}."


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


@dataclass(frozen=True, slots=True)
class _Format:
    encoding: str
    bytes_per_second: int
    bytes_per_8k_sample: int  # output bytes one 8 kHz mu-law sample turns into


_FORMATS: Final[dict[str, _Format]] = {
    "audio/pcmu": _Format("audio/pcmu", 8000, 1),
    "audio/pcma": _Format("audio/pcma", 8000, 1),
    "audio/pcm": _Format("audio/pcm", 48000, 6),
}


@dataclass(slots=True, eq=False)
class _ToolCall:
    call_id: str
    name: str
    arguments: dict[str, Any] | str | None
    legacy_args: bool
    after_tool: str
    answered: bool = False
    timed_out: bool = False
    timer: asyncio.Task[None] | None = None


@dataclass(slots=True, eq=False)
class _Reply:
    reply_id: str
    item_id: str
    text: str
    tool: _ToolCall | None = None
    sent_bytes: int = 0  # audio bytes (output encoding) already written to the socket


@dataclass(eq=False)
class _Connection:
    number: int
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    reader: asyncio.Task[Any] | None  # the handler task, the only one that reads or closes
    session: FakeSession | None = None
    pending: list[Event] = field(default_factory=list)  # received before a session exists
    audio_before_setup: int = 0
    idle: bool = False  # the reader is parked in ws.receive()
    close_request: tuple[int, bytes] | None = None

    def request_close(self, code: int, message: bytes = b"") -> None:
        """Have the reader close the socket.

        aiohttp's close() from another task drops TCP right after the close frame, so a
        client reading late sees 1006; closing from the reader waits for the peer's close
        frame like the live server does.
        """
        if self.close_request is None:
            self.close_request = (code, message)
        if self.idle and self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel(_CLOSE_REQUESTED)

    async def receive(self) -> WSMessage | None:
        """The next frame, or None once the socket is done (closed here if requested)."""
        while True:
            if self.close_request is not None:
                code, message = self.close_request
                with contextlib.suppress(ConnectionError):
                    await self.ws.close(code=code, message=message)
                return None
            self.idle = True
            try:
                return await self.ws.receive()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self.close_request is None or task is None or task.uncancel() > 0:
                    raise
            finally:
                self.idle = False


class _Changes:
    """Wakes waiters when a list they watch grows; free when nobody waits."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def until(self, check: Callable[[], _T | None], timeout: float, what: str) -> _T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = check()
            if found is not None:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            if self._event is None:
                self._event = asyncio.Event()
            # On timeout the loop checks one last time, then raises.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)


def _hex() -> str:
    return uuid.uuid4().hex


def _first_word(text: str) -> str:
    words = text.split(maxsplit=1)
    return words[0] if words else ""


def _format_after(template: str, result: str) -> str:
    try:
        return template.format(result=result)
    except (KeyError, IndexError, ValueError):  # stray braces in a user template
        return template.replace("{result}", result)


# --- audio format helpers (the fake thinks in 8 kHz mu-law; other encodings convert) ---


def _alaw_encode(sample: int) -> int:
    value = sample >> 3
    if value >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        value = -value - 1
    for segment, end in enumerate((0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)):
        if value <= end:
            shift = 1 if segment < 2 else segment
            return ((segment << 4) | ((value >> shift) & 0x0F)) ^ mask
    return 0x7F ^ mask


def _alaw_decode(byte: int) -> int:
    byte ^= 0x55
    value = (byte & 0x0F) << 4
    segment = (byte & 0x70) >> 4
    if segment == 0:
        value += 8
    else:
        value = (value + 0x108) << (segment - 1)
    return value if byte & 0x80 else -value


_ULAW_TO_ALAW: Final = bytes(_alaw_encode(s) for s in audio.ulaw_decode(bytes(range(256))))
_ALAW_ABS: Final[tuple[int, ...]] = tuple(abs(_alaw_decode(b)) for b in range(256))


def _pcm16(data: bytes) -> array[int]:
    samples = array("h")
    samples.frombytes(data[: len(data) - len(data) % 2])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


_ENERGY_CACHE: dict[bytes, float] = {}


def _energy(data: bytes, encoding: str) -> float:
    """Mean absolute amplitude (16-bit scale) of one input chunk."""
    if encoding == "audio/pcmu":
        # Memoised: ulaw_energy is a Python loop, and test audio (tones, silence,
        # synthetic speech) repeats the same 20 ms frames over hundreds of calls.
        energy = _ENERGY_CACHE.get(data)
        if energy is None:
            energy = audio.ulaw_energy(data)
            if len(_ENERGY_CACHE) >= 4096:
                _ENERGY_CACHE.clear()
            _ENERGY_CACHE[data] = energy
        return energy
    if encoding == "audio/pcma":
        return sum(_ALAW_ABS[b] for b in data) / len(data) if data else 0.0
    samples = _pcm16(data)
    return sum(map(abs, samples)) / len(samples) if samples else 0.0


def _from_ulaw(data: bytes, encoding: str) -> bytes:
    if encoding == "audio/pcmu":
        return data
    if encoding == "audio/pcma":
        return data.translate(_ULAW_TO_ALAW)
    # Sample-and-hold to 24 kHz: crude, but exact and predictable for tests.
    wide = array("h", (s for s in audio.ulaw_decode(data) for _ in range(3)))
    if sys.byteorder == "big":
        wide.byteswap()
    return wide.tobytes()


# --- config resolution -----------------------------------------------------------------


def _resolve_format(fmt: Any) -> dict[str, Any]:
    encoding = fmt.get("encoding", "audio/pcm") if isinstance(fmt, Mapping) else "audio/pcm"
    return {"encoding": encoding, "sample_rate": 24000 if encoding == "audio/pcm" else 8000}


def _resolve_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    resolved: dict[str, Any] = {
        "type": "function",
        "name": "",
        "description": "",
        "parameters": {},
        "execution_mode": "interactive",
        "timeout_seconds": 120,
        "http": None,
        "response_instructions": None,
    }
    resolved.update(copy.deepcopy(dict(tool)))
    return resolved


_INPUT_FIELDS: Final = (
    "turn_detection",
    "keyterms",
    "transcription_mode",
    "transcription_prompt",
    "language_codes",
    "voice_focus",
    "voice_focus_threshold",
    "continuous_partials",
)


def _resolve_config(fields: Mapping[str, Any], default_voice: str) -> dict[str, Any]:
    """The full config the live server echoes: every field present, unset ones null."""
    inp = fields.get("input") or {}
    out = fields.get("output") or {}
    config: dict[str, Any] = {}
    if "agent_id" in fields:
        config["id"] = fields["agent_id"]
    config["system_prompt"] = fields.get("system_prompt", "")
    config["greeting"] = fields.get("greeting")
    config["input"] = {
        "type": inp.get("type", "audio"),
        "format": _resolve_format(inp.get("format")),
        **{name: copy.deepcopy(inp.get(name)) for name in _INPUT_FIELDS},
    }
    config["output"] = {
        "type": out.get("type", "audio"),
        "voice": out.get("voice", default_voice),
        "format": _resolve_format(out.get("format")),
        "volume": out.get("volume"),
    }
    config["tools"] = [_resolve_tool(t) for t in fields.get("tools") or []]
    config["llm"] = copy.deepcopy(fields.get("llm") or [])
    config["pre_connect_requests"] = copy.deepcopy(fields.get("pre_connect_requests") or [])
    if "webhook" in fields:
        config["webhook"] = copy.deepcopy(fields["webhook"])
    return config


def _bad_pcm_rate(fields: Any) -> bool:
    """PCM at a rate other than 24 kHz: the live server fails internally (1011)."""
    if not isinstance(fields, Mapping):
        return False
    for side in ("input", "output"):
        section = fields.get(side)
        fmt = section.get("format") if isinstance(section, Mapping) else None
        if (
            isinstance(fmt, Mapping)
            and fmt.get("encoding") == "audio/pcm"
            and "sample_rate" in fmt
            and fmt["sample_rate"] != 24000
        ):
            return True
    return False


def _tool_problem(tools: Any) -> str | None:
    """The live server checks that tool parameter ``properties`` is an object."""
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        params = tool.get("parameters") if isinstance(tool, Mapping) else None
        if (
            isinstance(params, Mapping)
            and "properties" in params
            and not isinstance(params["properties"], Mapping)
        ):
            return f"tools[{i}].parameters.properties"
    return None


# --- sessions -----------------------------------------------------------------------------


class FakeSession:
    """One Voice Agent session; survives socket drops until the resume window ends."""

    def __init__(self, agent: FakeVoiceAgent, config: dict[str, Any]) -> None:
        self.session_id = "sess_" + _hex()
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
        self._conn: _Connection | None = None
        self._changes = _Changes()
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()
        self._started = time.monotonic()
        self._ready = False
        self._ready_at = 0.0
        self._audio_seconds = 0.0
        self._last_rate_error = -1e9
        self._audio_messages = 0
        # playback
        self._queue: collections.deque[_Reply] = collections.deque()
        self._current: _Reply | None = None
        self._player: asyncio.Task[None] | None = None
        self._calls: dict[str, _ToolCall] = {}
        self._resume_timer: asyncio.Task[None] | None = None
        # turn detection, all in bytes of input audio
        self._in_fmt = _FORMATS["audio/pcm"]
        self._speech_bytes = 0
        self._silence_bytes = 0
        self._in_turn = False
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
        await self._emit(
            {
                "type": "session.error",
                "code": code,
                "message": message,
                "param": param,
                "session_id": self.session_id,
            }
        )
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
        reply = self._new_reply(text)
        self._enqueue(reply)
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
        call = _ToolCall("call_" + _hex()[:24], name, arguments, legacy_args, after_tool)
        self._enqueue(self._new_reply("", tool=call))
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
        match = _matcher(predicate)
        return await self._changes.until(_scanner(self.received, match), timeout, str(predicate))

    async def wait_sent(
        self, type_: str | Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first event the fake sent matching (a ``type`` or a predicate)."""
        match = _matcher(type_)
        return await self._changes.until(_scanner(self.sent, match), timeout, f"sent {type_}")

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
            await conn.ws.send_str(_ENCODER.encode(stamped).decode())
        return stamped

    def _attach(self, conn: _Connection) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        self._conn = conn
        conn.session = self

    def _detach(self, conn: _Connection) -> None:
        """The socket is gone but the session is not over: start the resume window."""
        if self._conn is not conn or self.ended.is_set():
            return
        self._conn = None
        self._stop_playback()
        self._reset_turn()
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
        self._stop_playback()
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
        # Live: session.ready follows session.updated by a few ms; audio sent in that
        # gap arrives before ready and is a client bug this delay can expose.
        if delay > 0:
            await asyncio.sleep(delay)
        self._ready = True
        self._ready_at = time.monotonic()
        await self._emit(self._ready_event())
        greeting = self.config.get("greeting")
        if greeting:
            self._enqueue(self._new_reply(greeting))

    async def _resumed(self) -> None:
        self._ready = True
        await self._emit(self._ready_event())

    def _refresh_input_format(self) -> None:
        fmt = _FORMATS.get(self.config["input"]["format"]["encoding"], _FORMATS["audio/pcm"])
        self._in_fmt = fmt
        per_ms = fmt.bytes_per_second / 1000.0
        agent = self._agent
        self._speech_start_bytes = agent.speech_start_ms * per_ms
        self._end_silence_bytes = agent.end_of_turn_silence_ms * per_ms
        self._barge_in_bytes = agent.barge_in_ms * per_ms

    @property
    def _out_fmt(self) -> _Format:
        return _FORMATS.get(self.config["output"]["format"]["encoding"], _FORMATS["audio/pcm"])

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
            self._enqueue(self._new_reply(msg.get("instructions") or REPLY_CREATE_TEXT))
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
            {
                "type": "session.error",
                "code": code,
                "message": message,
                "param": param,
                "session_id": self.session_id if config_level else None,
            }
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
        if _bad_pcm_rate(fields):
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
            await self._error("invalid_value", _LLM_MESSAGE, "llm", config_level=True)
            return
        problem = _tool_problem(fields.get("tools"))
        if problem is not None:
            self._violation(f"session.update: {problem} must be an object")
            await self._error(
                "invalid_value", f"'{problem}' must be an object", problem, config_level=True
            )
            return
        for param in self._immutable_changes(fields):
            self._violation(f"session.update: changes immutable field {param}")
            await self._error(
                "immutable_field",
                f"'{param}' cannot be changed after the first session.update",
                param,
                config_level=True,
            )
        self._apply_mutable(fields)
        await self._emit({"type": "session.updated", "config": copy.deepcopy(self.config)})

    def _immutable_changes(self, fields: Mapping[str, Any]) -> list[str]:
        changed = []
        if "greeting" in fields and fields["greeting"] != self.config["greeting"]:
            changed.append("greeting")
        out = fields.get("output") or {}
        current = self.config["output"]
        if "voice" in out and out["voice"] != current["voice"]:
            changed.append("output.voice")
        if "format" in out and _resolve_format(out["format"]) != current["format"]:
            changed.append("output.format")
        if "type" in out and out["type"] != current["type"]:
            changed.append("output.type")
        return changed

    def _apply_mutable(self, fields: Mapping[str, Any]) -> None:
        config = self.config
        if "system_prompt" in fields:
            config["system_prompt"] = fields["system_prompt"]
        if "tools" in fields:
            config["tools"] = [_resolve_tool(t) for t in fields["tools"]]
        for name in ("webhook", "pre_connect_requests"):
            if name in fields:
                config[name] = copy.deepcopy(fields[name])
        out = fields.get("output") or {}
        if "volume" in out:
            config["output"]["volume"] = out["volume"]
        for name, value in (fields.get("input") or {}).items():
            config["input"][name] = (
                _resolve_format(value) if name == "format" else copy.deepcopy(value)
            )
        self._refresh_input_format()

    def _on_tool_result(self, msg: Event) -> None:
        call_id = msg["call_id"]
        call = self._calls.get(call_id)
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
            self._enqueue(self._new_reply(_format_after(call.after_tool, msg["result"])))

    async def _on_end(self) -> None:
        conn = self._conn
        await self._emit(self._ended_event())
        self._finish("session.end")
        if conn is not None:
            conn.request_close(1000)

    # --- turn detection -----------------------------------------------------------------

    def _reset_turn(self) -> None:
        self._speech_bytes = 0
        self._silence_bytes = 0
        self._in_turn = False

    def _interruptible(self) -> bool:
        detection = self.config["input"].get("turn_detection")
        return not (isinstance(detection, Mapping) and detection.get("interrupt_response") is False)

    async def _detect(self, data: bytes) -> None:
        n = len(data)
        if _energy(data, self._in_fmt.encoding) >= self._agent.speech_threshold:
            self._speech_bytes += n
            self._silence_bytes = 0
            if self._in_turn:
                return
            if self._current is not None:
                if self._interruptible() and self._speech_bytes >= self._barge_in_bytes:
                    await self._barge_in()
            elif self._speech_bytes >= self._speech_start_bytes:
                await self._start_turn()
        else:
            self._speech_bytes = 0
            if self._in_turn:
                self._silence_bytes += n
                if self._silence_bytes >= self._end_silence_bytes:
                    await self._end_turn()

    def _next_turn(self) -> ScriptedTurn:
        turns = self._agent.turns or self._script
        return turns[0] if turns else ScriptedTurn()

    def _user_delta(self) -> Event:
        return {
            "type": "transcript.user.delta",
            "item_id": self._turn_item,
            "text": _first_word(self._next_turn().user_text),
        }

    async def _start_turn(self) -> None:
        self._in_turn = True
        self._silence_bytes = 0
        self._turn_item = "msg_" + _hex()
        await self._emit_many([{"type": "input.speech.started"}, self._user_delta()])

    async def _end_turn(self) -> None:
        self._reset_turn()
        turns = self._agent.turns or self._script
        turn = turns.popleft() if turns else ScriptedTurn()
        await self._emit_many(
            [
                {"type": "input.speech.stopped"},
                {"type": "transcript.user", "item_id": self._turn_item, "text": turn.user_text},
            ]
        )
        if turn.tool_name is not None:
            call = _ToolCall(
                "call_" + _hex()[:24],
                turn.tool_name,
                turn.tool_arguments,
                turn.legacy_args,
                turn.after_tool,
            )
            self._enqueue(self._new_reply("", tool=call))
        elif turn.reply:
            self._enqueue(self._new_reply(turn.reply))

    async def _barge_in(self) -> None:
        reply = self._current
        self._stop_playback()
        call = reply.tool if reply is not None else None
        if call is not None and call.timer is not None and not call.answered:
            # The client discards the results of an interrupted reply's tool calls, so
            # none will come: the agent has moved on and must not apologise for it later.
            call.timer.cancel()
        self._in_turn = True
        self._silence_bytes = 0
        self._turn_item = "msg_" + _hex()
        events: list[Event] = [{"type": "input.speech.started"}]
        if reply is not None:
            events += [
                {
                    "type": "transcript.agent",
                    "reply_id": reply.reply_id,
                    "item_id": reply.item_id,
                    "text": self._spoken_text(reply),
                    "interrupted": True,
                },
                {"type": "reply.done", "reply_id": reply.reply_id, "status": "interrupted"},
            ]
        events.append(self._user_delta())
        await self._emit_many(events)

    def _spoken_text(self, reply: _Reply) -> str:
        """The characters whose audio was completely sent."""
        agent = self._agent
        samples = reply.sent_bytes // self._out_fmt.bytes_per_8k_sample - agent._leading_samples
        if agent._samples_per_char <= 0:
            return reply.text
        return reply.text[: max(0, samples) // agent._samples_per_char]

    # --- replies ------------------------------------------------------------------------

    def _new_reply(self, text: str, tool: _ToolCall | None = None) -> _Reply:
        return _Reply("resp_" + _hex(), "msg_" + _hex(), text, tool)

    def _enqueue(self, reply: _Reply) -> None:
        if self._conn is None or self.ended.is_set() or not (reply.text or reply.tool):
            return
        self._queue.append(reply)
        if self._player is None or self._player.done():
            self._player = self._spawn(self._play_queue(), "reply player")

    def _stop_playback(self) -> None:
        self._current = None
        self._queue.clear()
        if self._player is not None:
            self._player.cancel()
            self._player = None

    async def _play_queue(self) -> None:
        while self._queue and self._conn is not None:
            reply = self._queue.popleft()
            self._current = reply
            try:
                await self._play(reply)
            finally:
                if self._current is reply:
                    self._current = None

    async def _play(self, reply: _Reply) -> None:
        agent = self._agent
        encoding = self._out_fmt.encoding
        pacer = _Pacer(agent.pace, self._out_fmt.bytes_per_second)
        await self._emit(
            {"type": "reply.started", "reply_id": reply.reply_id, "item_id": reply.item_id}
        )
        if reply.text:
            await self._emit_many(
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
            await self._emit(
                {
                    "type": "transcript.agent",
                    "reply_id": reply.reply_id,
                    "item_id": reply.item_id,
                    "text": reply.text,
                    "interrupted": False,
                }
            )
        await self._emit({"type": "reply.done", "reply_id": reply.reply_id, "status": "completed"})

    async def _stream(self, reply: _Reply, chunks: list[tuple[str, int]], pacer: _Pacer) -> None:
        for data, size in chunks:
            await pacer.wait()
            reply.sent_bytes += size  # before the await: a barge-in may run during the send
            pacer.advance(size)
            await self._emit({"type": "reply.audio", "reply_id": reply.reply_id, "data": data})

    async def _send_tool_call(self, call: _ToolCall) -> None:
        event: Event = {"type": "tool.call", "call_id": call.call_id, "name": call.name}
        event["args" if call.legacy_args else "arguments"] = (
            {} if call.arguments is None else copy.deepcopy(call.arguments)
        )
        self._calls[call.call_id] = call
        stamped = await self._emit(event)
        if stamped is not None:
            self.tool_calls.append(stamped)
        timeout = self._agent.tool_timeout
        if timeout is None:
            timeout = self._tool_timeout_for(call.name)
        call.timer = self._spawn(self._tool_timer(call, timeout), "tool timeout")

    def _tool_timeout_for(self, name: str) -> float:
        for tool in self.config["tools"]:
            if tool.get("name") == name:
                value = tool.get("timeout_seconds")
                if isinstance(value, int | float):
                    return float(value)
        return DEFAULT_TOOL_TIMEOUT

    async def _tool_timer(self, call: _ToolCall, timeout: float) -> None:
        await asyncio.sleep(timeout)
        if not call.answered:
            call.timed_out = True
            self._enqueue(self._new_reply(TOOL_TIMEOUT_APOLOGY))


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


def _matcher(predicate: Callable[[dict[str, Any]], bool] | str) -> Callable[[Event], bool]:
    if isinstance(predicate, str):
        type_ = predicate
        return lambda event: event.get("type") == type_
    return predicate


def _scanner(items: list[Event], match: Callable[[Event], bool]) -> Callable[[], Event | None]:
    position = 0

    def check() -> Event | None:
        nonlocal position
        while position < len(items):
            item = items[position]
            position += 1
            if match(item):
                return item
        return None

    return check


_LLM_MESSAGE: Final = (
    "BYO LLM config is not allowed on session.update; define it on a stored agent "
    "and connect with its agent_id"
)


# --- the server ---------------------------------------------------------------------------


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
        self._live: set[_Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._changes = _Changes()
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
            app, handle_signals=False, access_log=None, shutdown_timeout=_CLOSE_TIMEOUT
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
            _, pending = await asyncio.wait(handlers, timeout=_CLOSE_TIMEOUT + 0.5)
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
            chunks = self._split(_from_ulaw(self.reply_audio_for(text), encoding), encoding)
            self._cache(self._chunk_cache, key, chunks)
        return chunks

    def _hold_chunks(self, encoding: str) -> list[tuple[str, int]]:
        key = ("\0hold", encoding)
        chunks = self._chunk_cache.get(key)
        if chunks is None:
            chunks = self._split(_from_ulaw(audio.silence(self.tool_hold_ms), encoding), encoding)
            self._cache(self._chunk_cache, key, chunks)
        return chunks

    def _split(self, data: bytes, encoding: str) -> list[tuple[str, int]]:
        size = _PCM_CHUNK_BYTES if encoding == "audio/pcm" else self.chunk_bytes
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

    async def _raw_send(self, conn: _Connection, event: Event) -> None:
        """Send on a socket that has no session (yet): errors before set-up."""
        stamped = {**event, "timestamp": time.time()}
        self._check_own(stamped)
        with contextlib.suppress(ConnectionError):
            await conn.ws.send_str(_ENCODER.encode(stamped).decode())

    async def _reject(
        self, conn: _Connection, code: str, message: str, param: str | None, close_code: int
    ) -> None:
        await self._raw_send(
            conn,
            {
                "type": "session.error",
                "code": code,
                "message": message,
                "param": param,
                "session_id": None,
            },
        )
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
        ws = web.WebSocketResponse(heartbeat=None, compress=False, timeout=_CLOSE_TIMEOUT)
        await ws.prepare(request)
        conn = _Connection(number, ws, request.transport, task)
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

    async def _refuse(self, conn: _Connection, failure: ConnectFailure) -> None:
        msg = await conn.receive()
        if msg is not None and msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            await self._reject(conn, failure.code, failure.message, None, failure.close_code)

    async def _serve(self, conn: _Connection) -> None:
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
                parsed = _DECODER.decode(msg.data)
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
        self, conn: _Connection, what: str, message: str = "Invalid message format."
    ) -> None:
        session = conn.session
        if session is not None:
            session._violation(what)
            await session._error("invalid_format", message)
        else:
            self.violations.append(f"connection #{conn.number}: {what}")
            await self._raw_send(
                conn,
                {
                    "type": "session.error",
                    "code": "invalid_format",
                    "message": message,
                    "param": None,
                    "session_id": None,
                },
            )

    async def _setup(self, conn: _Connection, msg: Event) -> None:
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

    async def _first_update(self, conn: _Connection, msg: Event) -> None:
        fields = msg.get("session")

        async def reject(code: str, message: str, param: str | None, close: int = 1008) -> None:
            self.violations.append(f"connection #{conn.number}: session.update: {message}")
            await self._reject(conn, code, message, param, close)

        if _bad_pcm_rate(fields):
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
            await reject("invalid_value", _LLM_MESSAGE, "llm")
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
            problem = _tool_problem(fields.get("tools"))
            if problem is not None:
                await reject("invalid_value", f"'{problem}' must be an object", problem)
                return
        default_voice = DEFAULT_VOICE if DEFAULT_VOICE in self.voices else self.voices[0]
        session = FakeSession(self, _resolve_config(fields, default_voice))
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

    async def _resume(self, conn: _Connection, msg: Event) -> None:
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
