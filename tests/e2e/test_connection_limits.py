"""What a client can hold of the main port: connections that say little or nothing are
closed at the request deadline and cost nothing meanwhile, idle keep-alive connections
are closed, and one address holds a limited number of connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest

from callbridge.server import shared_port
from callbridge.server.connections import connections_per_client
from tests.conftest import RunningServer, ServerFactory, make_settings
from tests.helpers.log_events import caught
from tests.helpers.raw_twilio import twilio_session

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def connections(server: RunningServer, count: int) -> AsyncIterator[list[Connection]]:
    url = urlsplit(server.url)
    opened: list[Connection] = []
    try:
        for _ in range(count):
            opened.append(await asyncio.open_connection(url.hostname, url.port))
        yield opened
    finally:
        for _, writer in opened:
            writer.close()


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before closing the connection (raises TimeoutError if it
    keeps it open). Closed with the client's bytes unread, it is reset: nothing sent."""
    async with asyncio.timeout(5):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


async def healthz_status(server: RunningServer) -> int:
    async with twilio_session() as http, http.get(f"{server.url}/healthz") as resp:
        return resp.status


async def test_stalled_request_lines_are_not_looked_at_again_until_more_arrives(
    start_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each look at a connection's first bytes asks route_of; count the looks.
    looks = 0
    looked_at_all = asyncio.Event()
    count = 100
    route_of = shared_port.route_of

    def counting(head: bytes) -> shared_port.Route | None:
        nonlocal looks
        looks += 1
        if looks >= count:
            looked_at_all.set()
        return route_of(head)

    monkeypatch.setattr(shared_port, "route_of", counting)
    server = await start_server()
    async with connections(server, count) as stalled:
        for _, writer in stalled:
            writer.write(b"G")  # a prefix of a stream's request line: not yet routable
        async with asyncio.timeout(10):
            await looked_at_all.wait()
        assert await healthz_status(server) == 200  # others are served meanwhile
        # What is under test is what happens while nothing arrives: let time pass.
        await asyncio.sleep(0.5)
        # One look per byte that arrived (the health check's connection included): none
        # while the stalled connections stay silent.
        assert looks <= count + 5, looks


async def test_a_connection_without_a_whole_request_in_time_is_closed(
    start_server: ServerFactory,
) -> None:
    server = await start_server(callbridge_request_timeout_seconds=0.3)
    async with connections(server, 4) as (silent, stream_line, http_line, http_head):
        stream_line[1].write(b"GET /media-str")  # too little to route
        http_line[1].write(b"GET /healthz HTT")  # routed to aiohttp, line unfinished
        http_head[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no end of the head
        for reader, _ in (silent, stream_line, http_line, http_head):
            assert await closed_by_server(reader) == b""
        assert await healthz_status(server) == 200


async def test_a_keep_alive_connection_is_kept_after_a_request_in_time(
    start_server: ServerFactory,
) -> None:
    server = await start_server(
        callbridge_request_timeout_seconds=0.2, callbridge_keepalive_seconds=30
    )
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    async with connections(server, 1) as ((reader, writer),):
        writer.write(request)
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            await reader.readuntil(b'"ok"}')
        # Past the first request's deadline: it came in time, the connection stays.
        await asyncio.sleep(0.5)
        writer.write(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        response = await closed_by_server(reader)
        assert response.startswith(b"HTTP/1.1 200"), response


async def test_an_idle_keep_alive_connection_is_closed(start_server: ServerFactory) -> None:
    server = await start_server(callbridge_keepalive_seconds=0.3)
    async with connections(server, 1) as ((reader, writer),):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await closed_by_server(reader)  # after the response, idle: closed
        assert response.startswith(b"HTTP/1.1 200"), response


async def test_one_address_holds_at_most_its_limit_of_connections(
    start_server: ServerFactory,
) -> None:
    server = await start_server(callbridge_max_connections_per_client=3)
    with caught("callbridge.server") as events:
        async with connections(server, 3) as held:
            async with connections(server, 3) as refused:
                for reader, _ in refused:
                    assert await closed_by_server(reader) == b""
            assert events.names.count("server.client_over_limit") == 1  # once per client
            (fields,) = events.fields_of("server.client_over_limit")
            assert fields["client"] == "127.0.0.1"
            # One held connection finishes (a request that asks to close): room for one.
            reader, writer = held[0]
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await closed_by_server(reader)).startswith(b"HTTP/1.1 200")
            async with connections(server, 1) as ((reader, writer),):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert (await closed_by_server(reader)).startswith(b"HTTP/1.1 200")


def test_the_default_limit_leaves_room_for_every_call() -> None:
    settings = make_settings(max_calls=500)
    # A stream and its webhooks for each call, all from one Twilio (or proxy) address.
    assert connections_per_client(settings) >= 2 * 500
