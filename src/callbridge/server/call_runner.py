"""Runs one call: the thin adapter between two sockets and the call's `CallBridge`.

It reads frames, feeds them to the bridge, and performs the actions the bridge returns.
One `asyncio.TaskGroup` per call owns every task of the call (the upstream reader,
tools, dialling); when the bridge says the call is finished, whatever still runs is
cancelled, so nothing of a call outlives it. Timers are the loop's timer handles, not
tasks (a call re-arms its idle tick every few seconds); the runner owns and cancels them
too, and a timer whose event makes the bridge raise crashes its call like a failed task.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from callbridge import fast_path as fast_path_module
from callbridge.agent import events as agent
from callbridge.agent.dial import AgentDialer
from callbridge.agent.socket import AgentConnectError, AgentSocket
from callbridge.bridge import pacing
from callbridge.bridge.actions import (
    Action,
    CancelTimer,
    CloseAgent,
    Finished,
    HangUp,
    Log,
    OpenAgent,
    Record,
    RedirectCall,
    RunTool,
    SendToAgent,
    SendToTwilio,
    StartTimer,
)
from callbridge.bridge.call_bridge import CallBridge
from callbridge.bridge.inputs import (
    AgentClosed,
    AgentOpened,
    AgentOpenFailed,
    HangUpRequested,
    SayRequested,
    StreamOpened,
    TimerFired,
    ToolFinished,
    TwilioClosed,
    TwilioStreamEnded,
)
from callbridge.bridge.playout_ledger import FAST_PATH_MARKS
from callbridge.bridge.verb_events import DigitsRequested, RedirectFinished, TransferRequested
from callbridge.call import Call
from callbridge.fast_path import Relayed
from callbridge.logs import EventLogger
from callbridge.records.entries import RecordEntry
from callbridge.server.next_streams import NextStreams
from callbridge.tools import run_tool
from callbridge.transport import CloseCode
from callbridge.twilio import media_stream as twilio
from callbridge.twilio.media_stream import TwilioProtocolError
from callbridge.twilio.socket import TwilioSocket

# If the bridge has not finished this long after the Twilio socket closed, something is
# wrong: close whatever is left rather than keep a socket (and a bill) open.
_FINISH_GRACE_SECONDS = 10.0
# Frames held while a stream's admission is awaited (a round trip to the shared state).
_MAX_HELD_FRAMES = 200
_admit_media = pacing.admit_media
_MEDIA = twilio.Media
_REPLY_AUDIO = agent.ReplyAudio
_decode_twilio = twilio.decode_strict
_TWILIO_DECODE_ERRORS = twilio.DECODE_ERRORS
_INVALID_TEXT = twilio.InvalidText
_INPUT_AUDIO_PARTS = agent.input_audio_parts()
# `call.ended`'s counts (see `CallBridge.stats`): always these; those below only if not 0.
_ENDED_COUNTS = ("frames_from_twilio", "frames_to_agent", "frames_to_twilio")
_ENDED_COUNTS_IF_ANY = (
    "dropped",
    "rate_limited_frames",
    "rejected_frames",
    "invalid_agent_events",
    "resumes",
    "fresh_sessions",
)
_take_relayed = fast_path_module.take_relayed
_set_routes = fast_path_module.set_routes
_end_routes = fast_path_module.end_routes


class VerbRefused(Exception):
    """A verb asked of a call that cannot take it now (ending, not live yet)."""


class CallRunner:
    def __init__(
        self,
        *,
        call_id: str,
        twilio_socket: TwilioSocket,
        bridge: CallBridge,
        dial_agent: AgentDialer,
        log: EventLogger,
        admit: Callable[[twilio.Start], str | Awaitable[str | None] | None] | None = None,
        max_messages_per_second: int = 200,
        record: Callable[[RecordEntry], None] | None = None,
        fast_path: bool = True,
    ) -> None:
        self.call_id = call_id
        self.bridge = bridge
        self._twilio = twilio_socket
        self._dial_agent = dial_agent
        self.log = log
        # The logger's level when the call starts: a line below it is not even handed to
        # the logger (the level is set once, from LOG_LEVEL, at start-up).
        self._log_level = log.level
        self._admit = admit
        self._record = record
        self._admitted = admit is None
        self._held: list[bytes] | None = None  # frames after `start`, while admitting it
        self._messages = pacing.MessageBudget(max_messages_per_second)
        # Caller audio at real-time pace (`bridge.pacing`): its due time is kept here, or
        # on the Twilio socket when its fast path relays audio (so both keep one pace).
        self._pace: pacing.Paced = pacing.MediaPace()
        self.rate_limited_frames = 0
        self.fast_path_frames = 0  # audio frames the sockets relayed under the bridge's routes
        self.fast_path_marks = 0  # marks they sent after those frames
        self.fast_path_echoes = 0  # and Twilio's echoes of marks they held for the bridge
        self._agent: AgentSocket | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop  # set by run(): actions are performed inside it
        self._finished = asyncio.Event()
        # The pace's clock: one function for every call, not a bound method of each.
        self._now: Callable[[], float] = time.monotonic
        # Both sockets relay the audio the bridge routes to them (see `callbridge.fast_path`)
        # while these are set: asked for, compiled, and both sockets on picows.
        self._use_fast_path = fast_path and fast_path_module.COMPILED
        self._fast_twilio: fast_path_module.TwilioAudioSocket | None = None
        self._fast_agent: fast_path_module.AgentAudioSocket | None = None
        self._started_at = self._now()  # when run() began: the call's duration in the log
        self.done = asyncio.Event()  # set once run() has returned
        self._streams = NextStreams()  # streams that re-attach to this call
        self._perform_redirect: Callable[[CallRunner, RedirectCall], Awaitable[str | None]]
        self._perform_redirect = _no_redirects
        self.finished_reason: str | None = None
        # What the call's tools are given (`server.runner_control`).
        self.call: Call | None = None

    async def run(self) -> None:
        """Serve the call until both sockets are closed. Never raises (bar cancellation)."""
        self._started_at = self._now()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._loop = asyncio.get_running_loop()
                self._configure_fast_twilio()
                self._feed(StreamOpened())
                await self._read_twilio()
                while (sock := await self._next_stream()) is not None:
                    self._switch_stream(sock)
                    await self._read_twilio()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_FINISH_GRACE_SECONDS):
                        await self._finished.wait()
                if not self._finished.is_set():
                    self.log.error("call.finish_forced", state=self.bridge.state.value)
                    await self._close_agent_socket()
                for task in list(self._tasks):
                    task.cancel()
                self._cancel_timers()  # now, not in `finally`: none may fire while tasks end
        except Exception as exc:
            # A bug in one call must not take the server (or any other call) down.
            self.log.exception("call.crashed", exc)
            await self._close_agent_socket()
            with contextlib.suppress(Exception):
                await self._twilio.close(CloseCode.INTERNAL_ERROR)
        finally:
            unserved = self._streams.close()
            if unserved is not None:
                with contextlib.suppress(Exception):
                    await unserved.close(CloseCode.OK)
            self._cancel_timers()  # after a crash too
            if self._fast_agent is not None:
                self._take_relayed()  # for the counts logged below
            self._end_fast_path()
            self.done.set()
            self._log_ended()

    def _log_ended(self) -> None:
        """The call's last line, at INFO: how it ended, how long it took, the audio
        relayed; counts of what went wrong only when something did. How the audio was
        relayed (the fast path's share) is a DEBUG line just before it."""
        self.log.debug(
            "call.fast_path",
            fast_path_frames=self.fast_path_frames,
            fast_path_marks=self.fast_path_marks,
            fast_path_echoes=self.fast_path_echoes,
        )
        bridge = self.bridge
        stats = {"rate_limited_frames": self.rate_limited_frames, **bridge.stats}
        fields: dict[str, Any] = {"reason": str(self.finished_reason or bridge.end_reason)}
        if bridge.end_detail:
            fields["detail"] = bridge.end_detail
        fields["duration_seconds"] = round(self._now() - self._started_at, 1)
        if bridge.session_id:
            fields["session_id"] = bridge.session_id
        for name in _ENDED_COUNTS:
            if name in stats:
                fields[name] = stats[name]
        for name in _ENDED_COUNTS_IF_ANY:
            if stats.get(name):
                fields[name] = stats[name]
        self.log.info("call.ended", **fields)

    def end(self, event: object) -> None:
        """Feed an event from outside the call (server shutdown, say)."""
        self._feed(event)

    # --- a call outlives its streams ----------------------------------------------------

    @property
    def accepts_stream(self) -> bool:
        """Whether a new stream for this call joins it (see `bridge/reattach.py`)."""
        finished = self._finished.is_set() or self.done.is_set()
        return self.bridge.awaiting_stream and not finished

    def attach(self, sock: TwilioSocket) -> asyncio.Future[None] | None:
        """Hand the call its next stream; None if it takes none now. The future is done
        once the call is through with the socket (an aiohttp handler awaits it)."""
        if not self.accepts_stream:
            return None
        return self._streams.offer(sock)

    def stream_ended(self) -> None:
        """Twilio ran the TwiML after this call's `<Connect>`: its stream is over (a blip,
        if nothing of ours ended it). See `accepts_stream` for whether the call waits."""
        if self._tg is not None and not (self._finished.is_set() or self.done.is_set()):
            self._feed(TwilioStreamEnded())

    def request_verb(self, verb: str, argument: str) -> str | None:
        """Transfer ("transfer", a target's name) or send keypad tones ("digits"), from
        outside the agent (the API, the command line). None if under way, else why not."""
        refusal = self.bridge.verb_refusal(verb, argument)
        if refusal is None:
            is_transfer = verb == "transfer"
            self._feed(TransferRequested(argument) if is_transfer else DigitsRequested(argument))
        return refusal

    def set_redirect(
        self, perform: Callable[[CallRunner, RedirectCall], Awaitable[str | None]]
    ) -> None:
        """How this call's TwiML is replaced (the REST update): returns an error or None."""
        self._perform_redirect = perform

    async def _next_stream(self) -> TwilioSocket | None:
        """The stream that re-attaches, once it comes; None when the call is over."""
        self._streams.served()  # the last socket's reading is done
        if not self.bridge.awaiting_stream:
            return None
        return await self._streams.next(self._finished)

    def _switch_stream(self, sock: TwilioSocket) -> None:
        """The call's new Twilio socket: its own pace, budget and admission, and the audio
        fast path's routes between it and the agent's socket."""
        if self._fast_agent is not None:
            self._take_relayed()
        self._end_fast_path()
        self._twilio = sock
        self._fast_twilio = None
        self._pace = pacing.MediaPace()
        self._messages = pacing.MessageBudget(self._messages.limit)
        self._admitted = self._admit is None
        self._configure_fast_twilio()
        if self._agent is not None and not self._agent.closed:
            self._configure_fast_agent(self._agent)
        self.log.info("stream.reattaching")

    async def _redirect(self, action: RedirectCall) -> None:
        try:
            error = await self._perform_redirect(self, action)
        except Exception as exc:  # the adapter's bug: the verb fails, the call goes on
            self.log.exception("call.redirect_crashed", exc)
            error = "internal error"
        self._feed(RedirectFinished(action.verb, error))

    # --- verbs: what the API, the command line and a tool's call object do to a call ----

    def hang_up(self, goodbye: str | None = None, *, by: str = "operator") -> None:
        """End the call now, or once the agent has said `goodbye` and it has played; `by`
        is "operator", or "agent" for a tool. Raises VerbRefused if the call is ending."""
        self._check_running()
        if self.bridge.end_reason is not None:
            raise VerbRefused("the call is ending")
        self._feed(HangUpRequested(by, goodbye))

    def say(self, text: str) -> None:
        """Make the agent say `text` now. Raises VerbRefused if it cannot."""
        self._check_running()
        refusal = self.bridge.live_refusal()
        if refusal is not None:
            raise VerbRefused(refusal)
        self._feed(SayRequested(text))

    def _check_running(self) -> None:
        if self._tg is None:
            raise VerbRefused("the call is not live yet")
        if self._finished.is_set() or self.done.is_set():
            raise VerbRefused("the call is ending")

    # --- reading ----------------------------------------------------------------------

    async def _read_twilio(self) -> None:
        twilio_socket = self._twilio
        code = CloseCode.POLICY_VIOLATION  # we stopped reading: a refused stream
        ended_here = True
        try:
            await twilio_socket.serve(self._on_twilio_text, self._feed)
            ended_here = twilio_socket.ended_here
        except asyncio.CancelledError:
            code = CloseCode.INTERNAL_ERROR  # another task of the call failed
            raise
        finally:
            if not twilio_socket.closed:
                await twilio_socket.close(code)
            self._feed(TwilioClosed(ended_here))

    def _on_twilio_text(self, data: bytes | str | memoryview) -> bool:
        """One text frame from Twilio; False ends the stream."""
        if self._held is not None:
            return self._hold(data)
        now = self._now()
        try:
            message: object = _decode_twilio(data)
        except _TWILIO_DECODE_ERRORS as exc:
            message = twilio.undecodable(data, exc)
            if type(message) is _INVALID_TEXT:
                return self._invalid_text(message.reason)
        if type(message) is _MEDIA:
            # A frame refused for its pace counts towards the flood limit below (caller
            # audio at Twilio's pace never does).
            if not _admit_media(self._pace, now):
                return self._media_refused(now)
            # No audio route changes here (media_to_agent only counts), so none is taken.
            out = self.bridge.media_to_agent(message)
            if isinstance(out, bytes):
                sock = self._agent
                if sock is not None:
                    sock.send(out)
            else:
                self._perform_all(out)
            return True
        if not self._within_message_limit(now):
            return False
        if not self._admitted and type(message) is twilio.Start:
            verdict = self._admit(message) if self._admit is not None else None
            if verdict is not None and not isinstance(verdict, str):
                self._held = []  # the answer comes from elsewhere: wait for it
                self._spawn(self._await_admission(message, verdict))
                return True
            if verdict is not None:
                return False  # `admit` logged why
            self._admitted = True
        self._feed(message)
        return True

    def _hold(self, data: bytes | str | memoryview) -> bool:
        held = self._held
        assert held is not None
        if len(held) >= _MAX_HELD_FRAMES:
            return False
        held.append(data.encode() if isinstance(data, str) else bytes(data))
        return True

    async def _await_admission(self, start: twilio.Start, verdict: Awaitable[str | None]) -> None:
        refusal = await verdict  # `admit` logs a refusal
        held, self._held = self._held or [], None
        if refusal is not None:
            await self._close_twilio(CloseCode.POLICY_VIOLATION)
            return
        self._admitted = True
        self._feed(start)
        for data in held:
            if not self._on_twilio_text(data):
                await self._close_twilio(CloseCode.POLICY_VIOLATION)
                return

    def _invalid_text(self, reason: str) -> bool:
        """A text frame that is not UTF-8: RFC 6455 fails the connection, with close code
        1007, before anything else is read. The bridge then ends the call in order (its
        log line and record say why; session.end upstream). False: the stream ends."""
        self._twilio.fail(CloseCode.INVALID_TEXT)
        self._feed(TwilioProtocolError(reason))
        return False

    def _within_message_limit(self, now: float) -> bool:
        """The flood budget (`bridge.pacing`); False (and the bridge told) past it."""
        if self._messages.spend(now):
            return True
        limit = self._messages.limit
        self._feed(TwilioProtocolError(f"more than {limit} messages per second"))
        return False

    def _media_refused(self, now: float) -> bool:
        self.rate_limited_frames += 1
        if self.rate_limited_frames == 1:
            self.log.warning("audio.dropped", reason="faster-than-real-time", direction="to-agent")
        return self._within_message_limit(now)

    def _on_agent_event(self, event: object) -> None:
        if type(event) is _REPLY_AUDIO:
            if self._fast_agent is not None:
                self._take_relayed()
            out = self.bridge.audio_to_twilio(event)
            if isinstance(out, bytes):
                self._twilio.send(out)
            else:
                self._perform_all(out)
            if self._fast_agent is not None:
                self._route_audio()
            return
        self._feed(event)

    async def _read_agent(self, sock: AgentSocket) -> None:
        code: int | None = None
        reason = ""
        try:
            code, reason = await sock.serve(self._on_agent_event)
        finally:
            self._feed(AgentClosed(code, reason))

    # --- performing -------------------------------------------------------------------

    def _feed(self, event: object) -> None:
        # Synchronous on purpose: both sockets write without awaiting, so an agent frame
        # is relayed inside the upstream socket's callback with no task switch. Audio
        # frames do not come here: the bridge's fast path (above) takes them.
        agent_socket = self._fast_agent
        if agent_socket is None:
            self._perform_all(self.bridge.handle(event))
            return
        # `_take_relayed` and `_route_audio`, inline: this runs for every event.
        twilio_socket = self._fast_twilio
        assert twilio_socket is not None  # set whenever the agent's is
        relayed = _take_relayed(twilio_socket, agent_socket)
        if relayed is not None:
            self._count_relayed(relayed)
        self._perform_all(self.bridge.handle(event))
        _set_routes(twilio_socket, agent_socket, self.bridge.audio_route())

    def _perform_all(self, actions: list[Action]) -> None:
        for action in actions:
            # The common actions first, without pattern matching: the audio sends, and log
            # lines (about one an event), most of them below the logger's level.
            kind = type(action)
            if kind is SendToAgent:
                sock = self._agent
                if sock is not None:
                    sock.send(action.frame)  # type: ignore[union-attr]
            elif kind is SendToTwilio:
                self._twilio.send(action.frame)  # type: ignore[union-attr]
            elif kind is Log:
                if action.level >= self._log_level:  # type: ignore[union-attr]
                    self.log.log(action.level, action.event, **action.fields)  # type: ignore[union-attr]
            else:
                self._perform(action)

    def _perform(self, action: Action) -> None:
        match action:  # the audio sends and log lines are done in _perform_all
            case Record(entry):
                if self._record is not None:
                    self._record(entry)
            case OpenAgent(delay):
                self._spawn(self._open_agent(delay))
            case CloseAgent():
                self._spawn(self._close_agent_socket())
            case HangUp(code):
                self._spawn(self._close_twilio(code))
            case RunTool():
                self._spawn(self._run_tool(action))
            case RedirectCall():
                self._spawn(self._redirect(action))
            case StartTimer(name, seconds):
                self._cancel_timer(name)
                self._timers[name] = self._loop.call_later(seconds, self._timer_fired, name)
            case CancelTimer(name):
                self._cancel_timer(name)
            case Finished(reason):
                self.finished_reason = reason
                self._finished.set()

    # --- the audio fast path ----------------------------------------------------------
    # The bridge is told what the sockets relayed before it sees any event, and the
    # sockets are given its routes after each one: the two never disagree.

    def _configure_fast_twilio(self) -> None:
        sock = self._twilio
        if self._use_fast_path and isinstance(sock, fast_path_module.TwilioAudioSocket):
            sock.configure_fast_path(
                twilio.decode_relay,
                twilio.RelayMedia,
                _INPUT_AUDIO_PARTS,
                self._now,
                pacing.FRAME_SECONDS,
                pacing.SLACK_SECONDS,
                twilio.Mark,
                FAST_PATH_MARKS.prefix,
                self.bridge.clock,
            )
            sock.media_due = self._pace.media_due
            self._fast_twilio = self._pace = sock

    def _configure_fast_agent(self, sock: AgentSocket) -> None:
        if self._fast_agent is not None:  # a new connection: the old one's route ends
            self._take_relayed()
            self._end_fast_path()
        if self._fast_twilio is not None and isinstance(sock, fast_path_module.AgentAudioSocket):
            configure_agent_fast_path(sock)
            self._fast_agent = sock

    def _take_relayed(self) -> None:
        assert self._fast_twilio is not None and self._fast_agent is not None
        relayed = _take_relayed(self._fast_twilio, self._fast_agent)
        if relayed is not None:
            self._count_relayed(relayed)

    def _count_relayed(self, relayed: Relayed) -> None:
        settled = self.bridge.relayed(*relayed)
        self.fast_path_frames += relayed[0] + relayed[1]
        marks, echoes = relayed[3], relayed[4]
        if marks is not None:
            self.fast_path_marks += len(marks)
        if echoes is not None:
            self.fast_path_echoes += len(echoes)
        if settled:
            self._perform_all(settled)  # records only: no route changes

    def _route_audio(self) -> None:
        assert self._fast_twilio is not None and self._fast_agent is not None
        _set_routes(self._fast_twilio, self._fast_agent, self.bridge.audio_route())

    def _end_fast_path(self) -> None:
        """No more routes (and no reference from one socket to the other)."""
        if self._fast_twilio is not None and self._fast_agent is not None:
            _end_routes(self._fast_twilio, self._fast_agent)
        self._fast_agent = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._tg is not None
        task = self._tg.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _open_agent(self, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            sock = await self._dial_agent()
        except AgentConnectError as exc:
            self._feed(AgentOpenFailed(str(exc)))
            return
        self._agent = sock
        self._configure_fast_agent(sock)
        self._spawn(self._read_agent(sock))
        self._feed(AgentOpened())

    async def _close_agent_socket(self) -> None:
        sock = self._agent
        if sock is not None and not sock.closed:
            with contextlib.suppress(Exception):
                await sock.close()

    async def _close_twilio(self, code: int) -> None:
        if not self._twilio.closed:
            with contextlib.suppress(Exception):
                await self._twilio.close(code)

    async def _run_tool(self, action: RunTool) -> None:
        outcome = await run_tool(action.tool, action.arguments, self.call, action.keypad)
        if outcome.failure is not None and action.tool.has_sensitive_arguments:
            # Its message or traceback may quote what the caller typed: the type alone.
            self.log.error(
                "tool.raised",
                error=type(outcome.failure).__name__,
                tool_call_id=action.call_id,
                name=action.tool.name,
            )
        elif outcome.failure is not None:
            self.log.exception(
                "tool.raised", outcome.failure, tool_call_id=action.call_id, name=action.tool.name
            )
        self._feed(ToolFinished(action.call_id, outcome.result, outcome.is_error))

    def _timer_fired(self, name: str) -> None:
        self._timers.pop(name, None)
        try:
            # Every timer says when caller audio last came (by the pace): the idle check
            # needs no tick of its own for that.
            self._feed(TimerFired(name, pacing.last_media_at(self._pace)))
        except Exception as exc:
            # A bug in the bridge: end this call as a failed task would, not the loop's
            # default handler (which would log it and let the call limp on).
            reraise = _reraise(exc)
            try:
                self._spawn(reraise)
            except RuntimeError:  # the call is already ending
                reraise.close()
                self.log.exception("call.crashed", exc)

    def _cancel_timer(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _cancel_timers(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()


def configure_agent_fast_path(sock: fast_path_module.AgentAudioSocket) -> None:
    """What the agent socket's fast path reads and writes: reply audio as Twilio media, with
    the playout ledger's marks."""
    sock.configure_fast_path(
        agent.decode_relay,
        agent.RelayReplyAudio,
        _twilio_frame_parts,
        FAST_PATH_MARKS.every_bytes,
        FAST_PATH_MARKS.audible_share,
    )


def _twilio_frame_parts(stream_sid: str) -> tuple[bytes, bytes, bytes, bytes]:
    return twilio.relay_parts(stream_sid, FAST_PATH_MARKS.prefix)


async def _reraise(exc: Exception) -> None:
    raise exc


async def _no_redirects(_: CallRunner, __: RedirectCall) -> str | None:
    return "call control is not configured (TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN)"
