"""The console's log-in, session and cross-site rules, over plain HTTP against a running
server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from callbridge.console.auth import MAX_FAILURES
from tests.conftest import RunningServer, ServerFactory
from tests.console.client import ConsoleClient
from tests.helpers.log_events import caught


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture
async def client(server: RunningServer, http: aiohttp.ClientSession) -> ConsoleClient:
    return ConsoleClient(http, server.url)


@pytest.mark.parametrize(
    "path", ["/console", "/console/login", "/console/history", "/console/static/console.css"]
)
async def test_without_a_token_the_console_is_absent(
    start_server: ServerFactory, http: aiohttp.ClientSession, path: str
) -> None:
    server = await start_server(callbridge_api_token=None)
    client = ConsoleClient(http, server.url)
    status, _, _ = await client.get(path)
    assert status == 404
    status, _, _ = await client.post("/console/login", {"token": "anything"})
    assert status == 404


async def test_pages_need_a_session(client: ConsoleClient) -> None:
    for path in ("/console", "/console/history", "/console/overview", "/console/calls/x"):
        status, _, response = await client.get(path)
        assert status == 303
        assert response.headers["Location"] == "/console/login"
    status, body, _ = await client.get("/console/login")
    assert status == 200
    assert 'name="token"' in body


async def test_log_in_sets_a_strict_http_only_cookie(client: ConsoleClient) -> None:
    assert await client.log_in() == 303
    morsel = client.set_cookie["callbridge_console"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["secure"] is True  # PUBLIC_URL is https
    assert morsel["path"] == "/console"
    status, body, response = await client.get("/console")
    assert status == 200
    assert "Live calls" in body
    assert response.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


async def test_cookie_is_not_secure_on_plain_http(
    start_server: ServerFactory, fake_agent: object, http: aiohttp.ClientSession
) -> None:
    server = await start_server(public_url="http://127.0.0.1:3000")
    client = ConsoleClient(http, server.url)
    assert await client.log_in() == 303
    assert not client.set_cookie["callbridge_console"]["secure"]


async def test_wrong_token_is_refused_and_logged_without_it(client: ConsoleClient) -> None:
    with caught("callbridge.console") as events:
        status, body, _ = await client.post("/console/login", {"token": "guess-1234"})
    assert status == 401
    assert "not the token" in body
    assert client.cookie is None
    [line] = events.fields_of("console.refused")
    assert line["reason"] == "wrong token"
    assert "guess-1234" not in repr(events.fields)


async def test_failed_log_ins_are_throttled(client: ConsoleClient) -> None:
    for _ in range(MAX_FAILURES):
        assert await client.log_in("wrong") == 401
    # Even the right token waits now: a guesser learns nothing from the answer.
    status, body, response = await client.post("/console/login", {"token": "records-api-token"})
    assert status == 429
    assert int(response.headers["Retry-After"]) > 0
    assert "Too many failed log-ins" in body


async def test_forged_and_tampered_cookies_are_refused(client: ConsoleClient) -> None:
    assert await client.log_in() == 303
    assert client.cookie is not None
    expires, nonce, signature = client.cookie.split("=", 1)[1].split(".")
    for forged in (
        f"{int(expires) + 3600}.{nonce}.{signature}",  # a longer session
        f"{expires}.{nonce}.{'0' * len(signature)}",
        "garbage",
    ):
        client.cookie = f"callbridge_console={forged}"
        status, _, _ = await client.get("/console")
        assert status == 303


async def test_log_out_ends_the_session(client: ConsoleClient) -> None:
    assert await client.log_in() == 303
    csrf = await client.csrf()
    status, _, response = await client.post("/console/logout", {"csrf": csrf})
    assert status == 303
    assert response.headers["Location"] == "/console/login"
    assert 'callbridge_console=""' in response.headers["Set-Cookie"]
    # The old cookie, replayed, no longer works.
    status, _, _ = await client.get("/console")
    assert status == 303


@pytest.mark.parametrize(
    ("headers", "form_token"),
    [
        ({"Origin": "https://evil.example"}, True),
        ({"Origin": "null"}, True),
        ({"Origin": "http://127.0.0.1:1"}, True),  # another port is another origin
        ({"Sec-Fetch-Site": "cross-site"}, True),
        ({}, False),  # our own origin, but no form token
    ],
    ids=["foreign-origin", "null-origin", "other-port", "sec-fetch-site", "no-form-token"],
)
async def test_cross_site_actions_are_refused(
    client: ConsoleClient, headers: dict[str, str], form_token: bool
) -> None:
    assert await client.log_in() == 303
    csrf = await client.csrf()
    data = {"csrf": csrf} if form_token else {}
    with caught("callbridge.console") as events:
        status, body, _ = await client.post("/console/calls/some-call/hang-up", data, **headers)
        logout_status, _, _ = await client.post("/console/logout", data, **headers)
    assert status == 403, body
    assert logout_status == 403
    assert events.fields_of("console.refused")
    # The session still works: a refused request changes nothing.
    assert (await client.get("/console"))[0] == 200


async def test_a_referer_from_elsewhere_is_refused_without_an_origin(
    client: ConsoleClient,
) -> None:
    assert await client.log_in() == 303
    csrf = await client.csrf()
    async with client.http.post(
        client.base + "/console/logout",
        data={"csrf": csrf},
        headers=client.headers(Referer="https://evil.example/page"),
        allow_redirects=False,
    ) as response:
        assert response.status == 403


async def test_a_cross_site_log_in_is_refused(client: ConsoleClient) -> None:
    status, _, _ = await client.post(
        "/console/login", {"token": "records-api-token"}, Origin="https://evil.example"
    )
    assert status == 403
    assert client.cookie is None


async def test_hang_up_of_a_call_that_is_not_live_says_so(client: ConsoleClient) -> None:
    assert await client.log_in() == 303
    csrf = await client.csrf()
    status, body, _ = await client.post("/console/calls/no-such-call/hang-up", {"csrf": csrf})
    assert status == 409
    assert "not live" in body
    status, body, _ = await client.post("/console/calls/no-such-call/explode", {"csrf": csrf})
    assert status == 409


async def test_static_files_are_only_the_known_ones(client: ConsoleClient) -> None:
    status, body, _ = await client.get("/console/static/live.js")
    assert status == 200
    assert "EventSource" in body
    for name in ("../pages.py", "..%2Fpages.py", "nope.js"):
        assert (await client.get(f"/console/static/{name}"))[0] == 404
