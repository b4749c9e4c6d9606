"""GET /api/calls and /api/calls/{call}: auth, paging, filters, errors, and every response
checked against openapi.yaml."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from callbridge.bot import Bot
from callbridge.config import Settings
from callbridge.records.entries import CallClosed, CallOpened, CallStatusChanged
from callbridge.records.store import CallStore
from callbridge.server import session_api, verbs_api
from callbridge.server.records_api import RECORDS_STORE, add_routes
from callbridge.server.state import APP_STATE, AppState
from callbridge.twilio.signatures import TwilioAuthenticator
from tests.helpers.log_events import caught

from .conftest import T0, Backend, StoreFactory, full_call

TOKEN = "records-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPEC_URI = "urn:callbridge:records-openapi"


@functools.cache
def spec() -> dict[str, Any]:
    text = resources.files("callbridge.records").joinpath("openapi.yaml").read_text()
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def _validator(pointer: str) -> Draft202012Validator:
    resource = Resource.from_contents(spec(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    return Draft202012Validator(
        {"$ref": f"{SPEC_URI}#{pointer}"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def validator(schema: str) -> Draft202012Validator:
    """A validator for one of openapi.yaml's component schemas."""
    return _validator(f"/components/schemas/{schema}")


async def checked(response: Any, path: str, method: str = "get") -> Any:
    """The response's JSON, after checking that openapi.yaml documents its status and that
    the body matches the documented schema."""
    documented = spec()["paths"][path][method]["responses"]
    assert str(response.status) in documented, f"{response.status} undocumented for {path}"
    entry = documented[str(response.status)]
    if "$ref" in entry:
        entry = spec()["components"]["responses"][entry["$ref"].rsplit("/", 1)[1]]
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    schema_ref = entry["content"]["application/json"]["schema"]["$ref"]
    _validator(schema_ref.removeprefix("#")).validate(body)
    return body


def records_app(store: CallStore, api_token: str | None) -> web.Application:
    """An application serving only the records API, configured with `api_token`."""
    settings = Settings(_env_file=None, callbridge_api_token=api_token)  # type: ignore[call-arg]
    state = AppState(
        settings=settings,
        bot=Bot(system_prompt="unused"),
        apology_payloads=(),
        apology_seconds=0.0,
        auth=TwilioAuthenticator(settings),
        records=store,
    )
    app = web.Application()
    app[APP_STATE] = state
    app[RECORDS_STORE] = store
    add_routes(app)
    return app


@pytest.fixture
async def api(make_store: StoreFactory) -> AsyncIterator[tuple[TestClient[Any, Any], CallStore]]:
    store = make_store()
    await store.start()
    app = records_app(store, TOKEN)
    async with TestClient(TestServer(app)) as client:
        yield client, store


LIST, ONE = "/api/calls", "/api/calls/{call}"


def test_the_routes_are_the_documented_paths() -> None:
    app = web.Application()
    add_routes(app)
    session_api.add_routes(app)
    verbs_api.add_routes(app)
    routes = {
        r.resource.canonical
        for r in app.router.routes()
        if r.resource and r.method in ("GET", "POST")
    }
    assert routes == set(spec()["paths"])


async def test_disabled_without_a_token(make_store: StoreFactory) -> None:
    app = records_app(make_store(), api_token=None)
    async with TestClient(TestServer(app)) as client:
        for url, path in ((LIST, LIST), ("/api/calls/x", ONE)):
            response = await client.get(url, headers=AUTH)
            assert response.status == 404
            assert (await checked(response, path))["error"] == "api_disabled"


async def test_the_token_is_callbridge_api_token(make_store: StoreFactory) -> None:
    assert records_app(make_store(), TOKEN)[APP_STATE].api_token == TOKEN
    assert records_app(make_store(), None)[APP_STATE].api_token is None


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "unauthorized"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "unauthorized"),
        ({"Authorization": "Bearer "}, "unauthorized"),
        ({"Authorization": "Bearer wrong-token"}, "invalid_token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "invalid_token"),
        ({"Authorization": f"Bearer {TOKEN[:-1]}"}, "invalid_token"),
    ],
)
async def test_without_the_right_token_401(
    api: tuple[TestClient[Any, Any], CallStore], headers: dict[str, str], error: str
) -> None:
    client, _ = api
    for url, path in ((LIST, LIST), ("/api/calls/call-1", ONE)):
        response = await client.get(url, headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="callbridge"')
        if error == "invalid_token":
            assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert (await checked(response, path))["error"] == error


async def test_bearer_scheme_is_case_insensitive(
    api: tuple[TestClient[Any, Any], CallStore],
) -> None:
    client, _ = api
    response = await client.get(LIST, headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status == 200


async def seven_calls(store: CallStore) -> list[str]:
    """Seven calls, newest last; c2, c3 and c4 start at the same instant, so that a page of
    three ends in the middle of a tie."""
    ids = []
    for i, minute in enumerate([0, 1, 2, 2, 2, 3, 4]):
        at = T0 + 60 * minute
        call_id = f"c{i}"
        direction = "inbound" if i % 2 else "outbound"
        store.submit(CallOpened(call_id, 0, at, direction, call_sid=f"CA{i:032d}"))
        if i < 4:
            store.submit(CallClosed(call_id, 1, at + 10, "caller", "caller hung up"))
        ids.append(call_id)
    store.submit(CallStatusChanged(f"CA{2:032d}", "busy", T0 + 200, sequence=4))
    await store.flush()
    return ids


async def test_paging_walks_every_call_once(api: tuple[TestClient[Any, Any], CallStore]) -> None:
    client, store = api
    await seven_calls(store)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        response = await client.get(LIST, params=params, headers=AUTH)
        assert response.status == 200
        page = await checked(response, LIST)
        seen += [c["call_id"] for c in page["calls"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == ["c6", "c5", "c4", "c3", "c2", "c1", "c0"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"direction": "inbound"}, ["c5", "c3", "c1"]),
        ({"status": "busy"}, ["c2"]),
        ({"status": "completed"}, ["c3", "c1", "c0"]),
        ({"status": "in-progress"}, ["c6", "c5", "c4"]),
        ({"since": "2026-09-21T14:16:20Z"}, ["c6", "c5"]),
        ({"since": "2026-09-21T14:15:20Z"}, ["c6", "c5", "c4", "c3", "c2"]),
        ({"since": "2026-09-22"}, []),
        ({"since": "2026-09-21T14:16:20Z", "direction": "outbound", "limit": "1"}, ["c6"]),
    ],
)
async def test_filters(
    api: tuple[TestClient[Any, Any], CallStore], params: dict[str, str], expected: list[str]
) -> None:
    client, store = api
    await seven_calls(store)
    response = await client.get(LIST, params=params, headers=AUTH)
    assert response.status == 200
    assert [c["call_id"] for c in (await checked(response, LIST))["calls"]] == expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "invalid limit 0"),
        ("limit=501", "invalid limit 501"),
        ("limit=ten", "invalid limit 'ten'"),
        ("since=last-week", "invalid since"),
        ("status=hung-up", "invalid status"),
        ("direction=up", "invalid direction"),
        ("cursor=not-a-cursor", "invalid cursor"),
        ("cursor=WzEsMl0", "invalid cursor"),
        ("state=busy", "unknown parameter 'state'"),
        ("limit=1&limit=2", "given more than once"),
    ],
)
async def test_bad_parameters_400(
    api: tuple[TestClient[Any, Any], CallStore], query: str, message: str
) -> None:
    client, _ = api
    response = await client.get(f"{LIST}?{query}", headers=AUTH)
    assert response.status == 400
    body = await checked(response, LIST)
    assert body["error"] == "invalid_parameter" and message in body["message"]


async def test_one_call_by_id_or_sid(api: tuple[TestClient[Any, Any], CallStore]) -> None:
    client, store = api
    for entry in full_call():
        store.submit(entry)
    await store.flush()
    expected = None
    for key in ("call-1", "CA" + "1" * 32):
        response = await client.get(f"/api/calls/{key}", headers=AUTH)
        assert response.status == 200
        body = await checked(response, ONE)
        assert body["call_id"] == "call-1"
        assert body["transcript"][2]["interrupted"] is True
        assert body["transcript"][2]["heard_seconds"] == 1.25
        expected = expected or body
        assert body == expected


async def test_an_unknown_call_404(api: tuple[TestClient[Any, Any], CallStore]) -> None:
    client, _ = api
    response = await client.get("/api/calls/nope", headers=AUTH)
    assert response.status == 404
    assert (await checked(response, ONE))["error"] == "not_found"


# SQLite locked by another writer keeps reading.
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_database_down_503(
    api: tuple[TestClient[Any, Any], CallStore], backend: Backend
) -> None:
    client, _ = api
    await backend.cut()
    for url, path in ((LIST, LIST), ("/api/calls/x", ONE)):
        response = await client.get(url, headers=AUTH)
        assert response.status == 503
        assert (await checked(response, path))["error"] == "database_unavailable"
    await backend.restore()
    assert (await client.get(LIST, headers=AUTH)).status == 200


async def test_refused_tokens_are_logged_once_per_client_and_reason(
    api: tuple[TestClient[Any, Any], CallStore],
) -> None:
    client, _ = api
    with caught() as events:
        for _ in range(20):
            response = await client.get(LIST, headers={"Authorization": "Bearer guess"})
            assert response.status == 401
        for _ in range(5):
            assert (await client.get("/api/calls/call-1")).status == 401
    assert events.fields_of("api.refused") == [
        {"client": "127.0.0.1", "reason": "wrong bearer token", "path": LIST},
        {"client": "127.0.0.1", "reason": "no bearer token", "path": ONE},
    ]
    assert all("guess" not in str(fields) for fields in events.fields)
