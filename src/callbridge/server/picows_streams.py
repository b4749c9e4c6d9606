"""Media Streams served by picows: the main port hands each stream's socket here.

`shared_port.py` peeks at each new connection on the main port; a Media Streams upgrade
(`GET /media-stream/…`, `GET /outbound-stream/…`) comes here untouched, everything else
goes to aiohttp. Here the upgrade gets the same signature and duplicate checks as the
aiohttp routes, then the same call runner, with frames handled in picows's C callbacks and
no task switch per frame. Every call accepted here runs in this object's TaskGroup;
stopping it waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import unquote

import aiofastnet
from aiohttp import web
from picows import (
    WSCloseCode,
    WSListener,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

from callbridge.bot import Direction
from callbridge.logs import EventLogger
from callbridge.server.call_runner import CallRunner
from callbridge.server.setup_handoff import learn_setup, needs_setup
from callbridge.server.state import AppState
from callbridge.server.streams import (
    StreamRefused,
    admit_stream,
    reattach_stream,
    run_call,
    start_call,
)
from callbridge.transport.picows import server_protocol_factory
from callbridge.twilio.picows import PicowsTwilioSocket

_ROUTES: dict[str, Direction] = {"media-stream": "inbound", "outbound-stream": "outbound"}


_READ_BUFFER_BYTES = 4096  # Twilio's frames are a few hundred bytes


def _peer_host(conn: socket.socket) -> str | None:
    """The client's address, as aiohttp's `request.remote` gives it (for log lines)."""
    try:
        peer = conn.getpeername()
    except OSError:
        return None
    return str(peer[0]) if isinstance(peer, tuple) else None


class PicowsStreams:
    def __init__(self, state: AppState) -> None:
        self._state = state
        self._calls: asyncio.TaskGroup | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._log = EventLogger("server")
        self._serving = False

    @property
    def serving(self) -> bool:
        """Started, usable, not stopping: the one flag, kept where aiohttp's routes see it."""
        return self._state.picows_streams

    async def start(self) -> None:
        try:
            factory = server_protocol_factory(
                lambda request: self._upgrade(request, None),
                max_frame_size=self._state.settings.callbridge_max_message_bytes,
                read_buffer_init_size=_READ_BUFFER_BYTES,
            )
            factory()  # a picows release that changed its protocol fails here, not per call
        except Exception as exc:  # whatever it is, aiohttp can serve the streams instead
            self._log.error(
                "server.streams_fallback",
                reason=f"picows's server protocol is not usable: {type(exc).__name__}: {exc}",
                effect="Media Streams are served by aiohttp (more CPU per frame)",
            )
            return
        ready = asyncio.Event()
        self._supervisor = asyncio.create_task(self._supervise(ready))
        await ready.wait()
        self._serving = True
        self._state.picows_streams = True

    async def accept(self, conn: socket.socket) -> None:
        """Serve a stream's socket; its bytes are still unread (the main port peeked)."""
        assert self._serving, "accept() before start()"
        client = _peer_host(conn)
        new_protocol = server_protocol_factory(
            lambda request: self._upgrade(request, client),
            max_frame_size=self._state.settings.callbridge_max_message_bytes,
            read_buffer_init_size=_READ_BUFFER_BYTES,
        )
        loop = asyncio.get_running_loop()
        await aiofastnet.connect_accepted_socket(loop, new_protocol, conn)

    async def stop(self) -> None:
        """Stop accepting; wait for the calls still running (the caller has ended them)."""
        self._serving = False
        self._state.picows_streams = False
        self._stopping.set()
        if self._supervisor is not None:
            await self._supervisor

    async def _supervise(self, ready: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as calls:
            self._calls = calls
            ready.set()
            await self._stopping.wait()
            self._calls = None  # no new calls; the group waits for the running ones

    def _upgrade(
        self, request: WSUpgradeRequest, client: str | None
    ) -> WSListener | WSUpgradeResponseWithListener:
        raw_path, _, raw_query = request.path.decode("latin-1").partition("?")
        path = unquote(raw_path)  # as aiohttp's routes see it
        route, _, call_id = path.strip("/").partition("/")
        # A call's later streams have a segment of their own (`call_control.py`).
        call_id, _, stream = call_id.partition("/")
        direction = _ROUTES.get(route)
        if (
            request.method != b"GET"
            or direction is None
            or not call_id
            or not (stream == "" or stream.isalnum())
        ):
            return _refusal(404, "not found")
        state = self._state
        log = EventLogger("call", call_id=call_id)
        headers = request.headers
        as_received = f"http://{headers.get('Host', '')}{request.path.decode('latin-1')}"
        try:
            admit_stream(
                state,
                call_id,
                log,
                lambda: state.auth.check_stream_request(path, raw_query, headers, as_received),
                client,
            )
        except StreamRefused as exc:
            return _refusal(exc.status, str(exc))
        if self._calls is None or state.http is None:
            return _refusal(503, "not serving calls")
        settings = state.settings
        return PicowsTwilioSocket(
            lambda sock: self._start(call_id, direction, sock, log, client),
            max_bytes=settings.callbridge_max_message_bytes,
            max_messages_per_second=settings.callbridge_max_messages_per_second,
        )

    def _start(
        self,
        call_id: str,
        direction: Direction,
        sock: PicowsTwilioSocket,
        log: EventLogger,
        client: str | None,
    ) -> None:
        calls = self._calls
        if calls is not None and reattach_stream(self._state, call_id, sock) is not None:
            return  # the call's runner serves it
        if calls is not None and needs_setup(self._state, call_id):
            # Its webhook reached another instance: learn its set-up first (the socket
            # keeps the frames that arrive meanwhile).
            calls.create_task(self._start_learnt(call_id, direction, sock, log, client))
            return
        self._start_now(call_id, direction, sock, log, client)

    async def _start_learnt(
        self,
        call_id: str,
        direction: Direction,
        sock: PicowsTwilioSocket,
        log: EventLogger,
        client: str | None,
    ) -> None:
        await learn_setup(self._state, call_id, log)
        self._start_now(call_id, direction, sock, log, client)

    def _start_now(
        self,
        call_id: str,
        direction: Direction,
        sock: PicowsTwilioSocket,
        log: EventLogger,
        client: str | None,
    ) -> None:
        calls = self._calls
        try:
            if calls is None:
                raise StreamRefused(503, "shutting down")
            runner = start_call(self._state, call_id, direction, sock, log, client)
        except StreamRefused:
            sock.abort(WSCloseCode.POLICY_VIOLATION)
            return
        calls.create_task(self._run(call_id, runner))

    async def _run(self, call_id: str, runner: CallRunner) -> None:
        # CallRunner.run reports its own failures; nothing here may cancel the other calls.
        with contextlib.suppress(Exception):
            await run_call(self._state, call_id, runner)


PICOWS_STREAMS = web.AppKey("picows_streams", PicowsStreams)


def _refusal(status: int, text: str) -> WSUpgradeResponseWithListener:
    response = WSUpgradeResponse.create_error_response(status, f"{text}\n".encode())
    return WSUpgradeResponseWithListener(response, None)
