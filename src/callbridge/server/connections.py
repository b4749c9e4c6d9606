"""What each client may hold of the main port: how many connections, and for how long
before its first request is in. `shared_port.py` applies both as it accepts and routes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from callbridge.config import Settings
from callbridge.logs import EventLogger

# The connections of addresses with none left open are forgotten when the table has
# doubled since it was last tidied (and has at least this many addresses).
_TIDY_AT_LEAST = 1024


def connections_per_client(settings: Settings) -> int:
    """The most connections one address may hold: the setting, or by default enough for
    every call's stream and its webhooks to come from one address (Twilio's, or a proxy's)."""
    configured = settings.callbridge_max_connections_per_client
    return configured if configured is not None else 2 * settings.max_calls + 100


class ClientConnections:
    """The connections each client address holds open, and the limit on them.

    Each connection's socket object is kept: once served, its transport closes (or, on
    uvloop, detaches) that object, so a closed one is told by its fileno() of -1. A
    client's list is pruned only when it reaches the limit, and the table of addresses
    when it has doubled: no callback is needed from the libraries that serve them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, list[socket.socket]] = {}
        self._warned: set[str] = set()  # refused since it last had nothing open
        self._tidy_at = _TIDY_AT_LEAST
        self._log = EventLogger("server")

    def admit(self, client: str, conn: socket.socket) -> bool:
        """Count `conn` as `client`'s; False (and logged once per client) past the limit."""
        conns = self._open.get(client)
        if conns is None:
            if len(self._open) >= self._tidy_at:
                self._tidy()
            self._open[client] = [conn]
            return True
        if len(conns) >= self.limit:
            conns[:] = [c for c in conns if c.fileno() != -1]
            if len(conns) >= self.limit:
                if client not in self._warned:
                    self._warned.add(client)
                    self._log.warning(
                        "server.client_over_limit",
                        client=client,
                        open_connections=len(conns),
                        effect="its further connections are closed at once until some close",
                        setting="CALLBRIDGE_MAX_CONNECTIONS_PER_CLIENT",
                    )
                return False
        conns.append(conn)
        return True

    def open_count(self, client: str) -> int:
        return sum(1 for c in self._open.get(client, ()) if c.fileno() != -1)

    def _tidy(self) -> None:
        for client in list(self._open):
            conns = self._open[client]
            conns[:] = [c for c in conns if c.fileno() != -1]
            if not conns:
                del self._open[client]
                self._warned.discard(client)
        self._tidy_at = max(_TIDY_AT_LEAST, 2 * len(self._open))


class FirstRequests:
    """HTTP connections that have not yet sent a whole request, each with its deadline.

    The main port watches each connection it hands to aiohttp; the middleware below tells
    it when the first request has arrived (its head complete). A connection still waiting
    at the deadline is shut down, and aiohttp closes it. Keyed by file descriptor: a
    connection's descriptor is unique while it is open, and its socket object (closed or
    detached once served) tells a stale entry."""

    def __init__(self) -> None:
        self._waiting: dict[int, tuple[socket.socket, asyncio.TimerHandle]] = {}

    def watch(self, conn: socket.socket, deadline: float) -> None:
        fd = conn.fileno()
        self._forget(fd)  # a connection closed before its deadline, whose number this is
        handle = asyncio.get_running_loop().call_at(deadline, self._expire, fd, conn)
        self._waiting[fd] = (conn, handle)

    def first_request(self, request: web.BaseRequest) -> bool:
        """Whether `request` is the first its connection carried (it was being watched)."""
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return False
        return self._forget(sock.fileno())

    def _forget(self, fd: int) -> bool:
        entry = self._waiting.pop(fd, None)
        if entry is None:
            return False
        entry[1].cancel()
        return entry[0].fileno() == fd

    def _expire(self, fd: int, conn: socket.socket) -> None:
        entry = self._waiting.get(fd)
        if entry is None or entry[0] is not conn:
            return
        del self._waiting[fd]
        if conn.fileno() == fd:  # still open: the serving transport sees the end and closes
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


FIRST_REQUESTS = web.AppKey("first_requests", FirstRequests)
_FIRST_ON_CONNECTION = web.RequestKey("first_on_connection", bool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def note_first_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells the main port that a connection's first request has arrived in time."""
    watching = request.app.get(FIRST_REQUESTS)
    request[_FIRST_ON_CONNECTION] = watching is not None and watching.first_request(request)
    return await handler(request)


def on_reused_connection(request: web.Request) -> bool:
    """Whether an earlier request on the same connection came before this one (a
    keep-alive client, or a proxy reusing its upstream connections)."""
    return not request.get(_FIRST_ON_CONNECTION, True)
