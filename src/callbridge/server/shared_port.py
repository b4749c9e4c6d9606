"""The main port: Media Streams to picows, everything else to aiohttp.

Twilio's stream sockets carry nearly all of the traffic, and picows handles their frames
in C callbacks: the whole server spends less CPU per relayed frame than with aiohttp's
stream routes (README, Performance). aiohttp serves the webhooks, health checks
and records API. Both share one port: the first bytes of each new connection are peeked at
(not read), and the socket goes, untouched, to the library that serves its request. The
choice is made once per connection; a keep-alive connection that began with a webhook
stays with aiohttp, which serves the stream routes too, so nothing depends on the choice
but the cost.

The port also holds every client to its limits: a connection must finish its first request
within CALLBRIDGE_REQUEST_TIMEOUT_SECONDS (waiting for it costs nothing while no byte
arrives), and one address may hold at most CALLBRIDGE_MAX_CONNECTIONS_PER_CLIENT
connections; aiohttp closes idle keep-alive connections (CALLBRIDGE_KEEPALIVE_SECONDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from typing import Literal

from aiohttp import web

from callbridge.logs import EventLogger
from callbridge.server.connections import (
    FIRST_REQUESTS,
    ClientConnections,
    FirstRequests,
    connections_per_client,
)
from callbridge.server.picows_streams import PICOWS_STREAMS, PicowsStreams
from callbridge.server.state import APP_STATE

STREAM_REQUEST_PREFIXES = (b"GET /media-stream/", b"GET /outbound-stream/")
_PEEK_BYTES = max(len(p) for p in STREAM_REQUEST_PREFIXES)
# Where the socket cannot be told to wake only for more bytes (SO_RCVLOWAT), a request
# line cut short is looked at again after a pause that grows up to the longest.
_RETRY_FIRST_SECONDS = 0.005
_RETRY_LONGEST_SECONDS = 0.5
_ACCEPT_BACKOFF_SECONDS = 0.5
_CLIENT_GONE = {errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EPERM, errno.EAGAIN}

Route = Literal["stream", "http"]


def route_of(head: bytes) -> Route | None:
    """Which library serves a connection that began with `head`; None: too short to tell."""
    undecided = False
    for prefix in STREAM_REQUEST_PREFIXES:
        if head.startswith(prefix):
            return "stream"
        undecided = undecided or prefix.startswith(head)
    return None if undecided else "http"


class _Listening(asyncio.AbstractServer):
    """The bound sockets, shaped as aiohttp's runner expects of a site's server."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets
        self._loop = asyncio.get_running_loop()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return any(sock.fileno() != -1 for sock in self.sockets)

    async def start_serving(self) -> None:
        pass  # SharedPortSite serves from start()

    async def serve_forever(self) -> None:
        raise NotImplementedError("SharedPortSite serves the sockets")

    async def wait_closed(self) -> None:
        pass  # close() is immediate


class SharedPortSite(web.BaseSite):
    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        streams: PicowsStreams | None,
        *,
        request_timeout: float,
        clients: ClientConnections,
        first_requests: FirstRequests | None,
        backlog: int = 1024,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._streams = streams
        self._request_timeout = request_timeout
        self._clients = clients
        self._first_requests = first_requests
        self._reuse_port = reuse_port
        self._supervisor: asyncio.Task[None] | None = None
        self._log = EventLogger("server")

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the one the system chose for 0)."""
        if isinstance(self._server, _Listening) and self._server.sockets:
            port: int = self._server.sockets[0].getsockname()[1]
            return port
        return self._port

    async def start(self) -> None:
        await super().start()
        self._server = _Listening(
            await _bind(self._host, self._port, self._backlog, self._reuse_port)
        )
        self._supervisor = asyncio.create_task(self._serve(self._server.sockets))

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await super().stop()

    async def _serve(self, listening: list[socket.socket]) -> None:
        async with asyncio.TaskGroup() as tg:  # cancelled by stop(): accepts and routing
            for sock in listening:
                tg.create_task(self._accept(sock, tg))

    async def _accept(self, listening: socket.socket, tg: asyncio.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(listening)
            except OSError as exc:
                if exc.errno in _CLIENT_GONE:
                    continue  # that client is gone; the port is fine
                # Out of descriptors or memory, say: log, and let calls end before retrying.
                self._log.error("server.accept_failed", error=exc.strerror or str(exc))
                await asyncio.sleep(_ACCEPT_BACKOFF_SECONDS)
                continue
            client = address[0] if isinstance(address, tuple) else str(address)
            if not self._clients.admit(client, conn):
                conn.close()
                continue
            tg.create_task(self._route(conn))

    async def _route(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        handed_over = False
        deadline = loop.time() + self._request_timeout
        try:
            conn.setblocking(False)
            head = await _first_bytes(conn, deadline)
            if head is None:
                return  # gone, or too slow to say what it wants
            streams = self._streams
            if streams is not None and streams.serving and route_of(head) == "stream":
                # picows gives the rest of the upgrade request its own few seconds.
                await streams.accept(conn)
            else:
                server = self._runner.server
                assert server is not None
                if self._first_requests is not None:
                    self._first_requests.watch(conn, deadline)
                await loop.connect_accepted_socket(server, conn)
            handed_over = True
        except OSError as exc:
            self._log.debug("server.connection_lost_early", error=exc.strerror or str(exc))
        finally:
            if not handed_over:
                conn.close()


async def _first_bytes(conn: socket.socket, deadline: float) -> bytes | None:
    """Enough of the request's start to route it; None if the client closed, or had not
    said that much by `deadline` (loop time).

    The bytes are peeked at, not read, so they stay in the socket for the library that
    serves it, and would make it readable at once again: while a request line is cut short,
    the socket is told to wake only when more has arrived (SO_RCVLOWAT), so a connection
    that stalls costs nothing until its deadline."""
    loop = asyncio.get_running_loop()
    wanted = 1  # the bytes the socket must hold to wake us
    retry = _RETRY_FIRST_SECONDS
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                await _readable(loop, conn)
                try:
                    head = conn.recv(_PEEK_BYTES, socket.MSG_PEEK)
                except BlockingIOError:
                    continue
                if len(head) < wanted:
                    return None  # readable with nothing new: the client closed its side
                if route_of(head) is not None:
                    return head
                wanted = len(head) + 1
                if not _wake_at(conn, wanted):
                    await asyncio.sleep(retry)
                    retry = min(2 * retry, _RETRY_LONGEST_SECONDS)
                    wanted = len(head)  # the same bytes again is no sign of a close here
    except TimeoutError:
        return None
    finally:
        if wanted > 1:
            _wake_at(conn, 1)  # as the serving library expects


def _wake_at(conn: socket.socket, size: int) -> bool:
    """Make `conn` readable only once `size` bytes have arrived; False if it cannot be."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
    except (OSError, AttributeError):
        return False
    return True


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _bind(host: str, port: int, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to, as loop.create_server binds."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            if port:  # the port the first address got, when the system chose it
                address = (address[0], port, *address[2:])
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:  # other processes serve this port too: the kernel spreads them
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
            if port == 0:  # the same system-chosen port on every address
                port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def main_port_site(runner: web.AppRunner, host: str, port: int) -> SharedPortSite:
    """The one listening port: streams to picows (unless configured otherwise), the rest
    to aiohttp, each client within its limits (see `build_app` for the middleware)."""
    app = runner.app
    settings = app[APP_STATE].settings
    return SharedPortSite(
        runner,
        host,
        port,
        app.get(PICOWS_STREAMS),
        request_timeout=settings.callbridge_request_timeout_seconds,
        clients=ClientConnections(connections_per_client(settings)),
        first_requests=app.get(FIRST_REQUESTS),  # None: no middleware to end the watch
        reuse_port=settings.callbridge_reuse_port,
    )
