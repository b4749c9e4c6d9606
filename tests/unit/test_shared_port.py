"""Which library serves a connection on the main port, from its first bytes. The routing
itself, over real connections, is in tests/e2e/test_shared_port.py."""

from __future__ import annotations

import pytest

from callbridge.server.shared_port import route_of


@pytest.mark.parametrize(
    ("head", "route"),
    [
        (b"GET /media-stream/abc HTTP/1.1\r\n", "stream"),
        (b"GET /outbound-stream/abc HTTP/1.1\r\n", "stream"),
        (b"POST /twiml HTTP/1.1\r\n", "http"),
        (b"GET /healthz HTTP/1.1\r\n", "http"),
        (b"GET /media-streams HTTP/1.1\r\n", "http"),
        (b"POST /media-stream/abc HTTP/1.1\r\n", "http"),
        (b"\x16\x03\x01\x02\x00", "http"),  # TLS: aiohttp answers it (badly) as before
        (b"GET /med", None),
        (b"G", None),
        (b"", None),
    ],
)
def test_route_of_the_first_bytes(head: bytes, route: str | None) -> None:
    assert route_of(head) == route
