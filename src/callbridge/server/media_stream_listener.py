"""Media Streams on a picows listener of their own (`CALLBRIDGE_MEDIA_STREAM_PORT`).

The main port stays aiohttp (webhooks, health, records API, and streams by default). With
this listener on, TwiML points Twilio's `<Stream>` here instead: the same paths, the same
signature and duplicate checks before the upgrade, the same call runner after it, and
frames handled in picows's C callbacks with no task switch per frame. The listener owns a
TaskGroup in which every call it accepts runs; stopping it waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib

from picows import (
    WSCloseCode,
    WSListener,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from callbridge.bot import Direction
from callbridge.logs import EventLogger
from callbridge.picows_sockets import PICOWS_LOG
from callbridge.server.call_runner import CallRunner
from callbridge.server.media_stream_endpoint import (
    StreamRefused,
    admit_stream,
    run_call,
    start_call,
)
from callbridge.server.state import AppState
from callbridge.server.twilio_socket import PicowsTwilioSocket

_ROUTES: dict[str, Direction] = {"media-stream": "inbound", "outbound-stream": "outbound"}


class MediaStreamListener:
    def __init__(self, state: AppState) -> None:
        self._state = state
        self._server: asyncio.Server | None = None
        self._calls: asyncio.TaskGroup | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._log = EventLogger("server")
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        ready = asyncio.Event()
        self._supervisor = asyncio.create_task(self._supervise(ready))
        await ready.wait()
        try:
            self._server = await ws_create_server(
                self._upgrade,
                host,
                port,
                max_frame_size=self._state.settings.callbridge_max_message_bytes,
                logger_name=PICOWS_LOG.name,
                read_buffer_init_size=4096,  # Twilio's frames are ~300 bytes
            )
        except OSError as exc:
            await self.stop()
            reason = f"CALLBRIDGE_MEDIA_STREAM_PORT {port}: {exc.strerror or exc}"
            raise OSError(exc.errno, reason) from None
        self.port = self._server.sockets[0].getsockname()[1]
        self._log.info("server.streams_listening", host=host, port=self.port, library="picows")

    async def stop(self) -> None:
        """Stop accepting; wait for the calls still running (the caller has ended them)."""
        if self._server is not None:
            self._server.close()
        self._stopping.set()
        if self._supervisor is not None:
            await self._supervisor

    async def _supervise(self, ready: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as calls:
            self._calls = calls
            ready.set()
            await self._stopping.wait()
            self._calls = None  # no new calls; the group waits for the running ones

    def _upgrade(self, request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener:
        path = request.path.decode("latin-1").split("?", 1)[0]
        route, _, call_id = path.strip("/").partition("/")
        direction = _ROUTES.get(route)
        if direction is None or not call_id or "/" in call_id:
            return _refusal(404, "not found")
        state = self._state
        log = EventLogger("call", call_id=call_id)
        host = request.headers.get("Host", "")
        base = state.settings.media_stream_base() or f"wss://{host}"
        signature = request.headers.get("X-Twilio-Signature")
        try:
            admit_stream(
                state,
                call_id,
                log,
                lambda: state.auth.check_stream_signature(base + path, signature),
            )
        except StreamRefused as exc:
            return _refusal(exc.status, str(exc))
        if self._calls is None:
            return _refusal(503, "shutting down")
        max_bytes = state.settings.callbridge_max_message_bytes
        return PicowsTwilioSocket(
            lambda sock: self._start(call_id, direction, sock, log), max_bytes=max_bytes
        )

    def _start(
        self, call_id: str, direction: Direction, sock: PicowsTwilioSocket, log: EventLogger
    ) -> None:
        calls = self._calls
        try:
            if calls is None:
                raise StreamRefused(503, "shutting down")
            runner = start_call(self._state, call_id, direction, sock, log)
        except StreamRefused:
            sock.abort(WSCloseCode.POLICY_VIOLATION)
            return
        calls.create_task(self._run(call_id, runner))

    async def _run(self, call_id: str, runner: CallRunner) -> None:
        # CallRunner.run reports its own failures; nothing here may cancel the other calls.
        with contextlib.suppress(Exception):
            await run_call(self._state, call_id, runner)


def _refusal(status: int, text: str) -> WSUpgradeResponseWithListener:
    response = WSUpgradeResponse.create_error_response(status, f"{text}\n".encode())
    return WSUpgradeResponseWithListener(response, None)
