"""POST /api/calls: the server places a call through the fake Twilio REST API, whose
simulator then fetches the signed TwiML URL like Twilio; the parameters reach the call's
`CallInfo`. Auth, bad bodies and Twilio's refusals, every response checked against
openapi.yaml."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callbridge.bot import bot as default_bot
from callbridge.server.call_registry import CallInfo
from callbridge.server.state import APP_STATE
from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_rest_fake import FakeTwilioRest
from callbridge.testing.twilio_simulator import DEFAULT_ACCOUNT_SID, TwilioSimulator
from callbridge.verbs import Voicemail
from tests.conftest import (
    API_TOKEN,
    AUTH_TOKEN,
    PUBLIC_URL,
    RunningServer,
    ServerFactory,
    free_port,
)
from tests.helpers.log_events import Events, caught
from tests.helpers.server_process import serve_env, start_serve
from tests.records.test_api import _validator, spec

OUR_NUMBER = "+15550001111"
CALLEE = "+15557654321"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def checked(response: aiohttp.ClientResponse) -> Any:
    """The response's JSON, once openapi.yaml documents its status and its body matches."""
    documented = spec()["paths"]["/api/calls"]["post"]["responses"]
    assert str(response.status) in documented, f"{response.status} undocumented"
    entry = documented[str(response.status)]
    if "$ref" in entry:
        entry = spec()["components"]["responses"][entry["$ref"].rsplit("/", 1)[1]]
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    _validator(entry["content"]["application/json"]["schema"]["$ref"].removeprefix("#")).validate(
        body
    )
    return body


class Placing:
    """A server that places calls through a fake Twilio REST API, and that API."""

    def __init__(self, server: RunningServer, rest: FakeTwilioRest) -> None:
        self.server = server
        self.rest = rest

    async def post(
        self, body: object, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        sent = {"Content-Type": "application/json", **(AUTH if headers is None else headers)}
        data = raw if raw is not None else json.dumps(body).encode()
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.server.url + "/api/calls", data=data, headers=sent) as response,
        ):
            return response.status, await checked(response)

    def info(self, call_id: str) -> CallInfo:
        # What the webhook made of the call: the per-call set-up reads it from here.
        return self.server.app[APP_STATE].registry._known[call_id]


@pytest.fixture
def events() -> AsyncIterator[Events]:
    with caught() as found:
        yield found


@pytest.fixture
async def placing_factory(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> AsyncIterator[Any]:
    closers: list[Any] = []

    async def make(**overrides: Any) -> Placing:
        port = free_port()  # the REST fake's: the server must know it before it starts
        overrides.setdefault("twilio_phone_number", OUR_NUMBER)
        overrides.setdefault("bots", {"sales": default_bot})  # a bot to place calls with
        server = await start_server(
            assemblyai_agent_url=fake_agent.url,
            twilio_api_base_url=f"http://127.0.0.1:{port}",
            **overrides,
        )
        simulator = TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)
        rest = FakeTwilioRest(
            simulator, auth_token=AUTH_TOKEN, owned_numbers=[OUR_NUMBER], verified_numbers=[CALLEE]
        )
        await rest.start(port=port)
        closers.extend([rest.stop, simulator.close])
        return Placing(server, rest)

    yield make
    for close in closers:
        await close()


@pytest.fixture
async def placing(placing_factory: Any) -> Placing:
    placer: Placing = await placing_factory()
    return placer


async def test_a_placed_calls_parameters_reach_the_webhook(
    placing: Placing, fake_agent: FakeVoiceAgent, events: Events
) -> None:
    status, body = await placing.post(
        {"to": CALLEE, "parameters": {"name": "Alice", "order": "1234"}, "bot": "sales"}
    )
    assert status == 201, body
    assert body["call_sid"].startswith("CA")
    created = placing.rest.created[0]
    assert created["To"] == [CALLEE] and created["From"] == [OUR_NUMBER]
    assert created["Url"][0].startswith(f"{PUBLIC_URL}/outbound-twiml?")
    call = await placing.rest.wait_for_call()
    await call.wait_started()  # the webhook has answered
    assert call.call_sid == body["call_sid"]
    assert call.webhook_status == 200
    await events.wait_for("call.announced")
    assert events.fields_of("call.announced")[0]["call_id"] == body["call_id"]
    info = placing.info(body["call_id"])
    assert dict(info.parameters) == {"name": "Alice", "order": "1234"}
    assert info.bot_name == "sales"
    assert info.call_sid == body["call_sid"]
    placed = events.fields_of("api.call_placed")[0]
    assert placed["parameters"] == ["name", "order"]  # names only in the log
    await fake_agent.wait_for_session()
    await call.hangup()


async def test_from_and_no_parameters(placing: Placing) -> None:
    status, body = await placing.post({"to": "+1 (555) 765-4321", "from": OUR_NUMBER})
    assert status == 201, body
    assert placing.rest.created[0]["To"] == [CALLEE]  # as Twilio will send it back
    call = await placing.rest.wait_for_call()
    await call.wait_started()  # the webhook has answered
    assert call.webhook_status == 200
    assert dict(placing.info(body["call_id"]).parameters) == {}
    await call.hangup()


async def test_voicemail_detection_asked_for_or_by_the_bots_setting(
    placing_factory: Any,
) -> None:
    detecting = dataclasses.replace(default_bot, voicemail=Voicemail("Call us back.", detect=True))
    placing: Placing = await placing_factory(bots={"sales": default_bot, "machines": detecting})
    for index, (body, detects) in enumerate(
        (
            ({"to": CALLEE, "bot": "sales"}, False),
            ({"to": CALLEE, "bot": "sales", "voicemail": True}, True),
            ({"to": CALLEE, "bot": "machines"}, True),
        )
    ):
        status, answer = await placing.post(body)
        assert status == 201, answer
        created = placing.rest.created[index]
        assert ("MachineDetection" in created) is detects, body
        if detects:
            assert created["MachineDetection"] == ["DetectMessageEnd"]
            assert created["AsyncAmd"] == ["true"]
        await (await placing.rest.wait_for_call(index)).hangup()


async def test_without_a_token_configured_the_api_is_absent(placing_factory: Any) -> None:
    placing: Placing = await placing_factory(callbridge_api_token=None)
    status, body = await placing.post({"to": CALLEE})
    assert (status, body["error"]) == (404, "api_disabled")
    assert placing.rest.created == []


@pytest.mark.parametrize(
    ("headers", "error"),
    [({}, "unauthorized"), ({"Authorization": "Bearer wrong"}, "invalid_token")],
    ids=["no token", "wrong token"],
)
async def test_without_the_token_401(placing: Placing, headers: dict[str, str], error: str) -> None:
    status, body = await placing.post({"to": CALLEE}, headers=headers)
    assert (status, body["error"]) == (401, error)
    assert placing.rest.created == []


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        (b"{not json", "invalid_body", None),
        (b"[]", "invalid_body", None),
        ({}, "invalid_field", "to"),
        ({"to": 15557654321}, "invalid_field", "to"),
        ({"to": "12345"}, "invalid_field", "to"),
        ({"to": CALLEE, "from": "nobody"}, "invalid_field", "from"),
        ({"to": CALLEE, "tos": CALLEE}, "invalid_field", "tos"),
        ({"to": CALLEE, "parameters": ["name"]}, "invalid_field", "parameters"),
        ({"to": CALLEE, "parameters": {"order": 1234}}, "invalid_field", "parameters.order"),
        ({"to": CALLEE, "parameters": {"1st": "x"}}, "invalid_field", "parameters"),
        ({"to": CALLEE, "parameters": {"n": "x" * 257}}, "invalid_field", "parameters.n"),
        (
            {"to": CALLEE, "parameters": {f"k{i}": "v" for i in range(21)}},
            "invalid_field",
            "parameters",
        ),
        (
            {"to": CALLEE, "parameters": {f"k{i}": "é" * 256 for i in range(4)}},
            "invalid_field",
            "parameters",
        ),
        ({"to": CALLEE, "bot": "no spaces"}, "invalid_field", "bot"),
        ({"to": CALLEE, "bot": 7}, "invalid_field", "bot"),
    ],
    ids=[
        "not json",
        "not an object",
        "no to",
        "to not a string",
        "to not e164",
        "bad from",
        "unknown field",
        "parameters not an object",
        "value not a string",
        "bad name",
        "long value",
        "too many",
        "too large in all",
        "bad bot",
        "bot not a string",
    ],
)
async def test_bad_bodies_400_naming_the_field(
    placing: Placing, body: object, error: str, field: str | None
) -> None:
    raw = body if isinstance(body, bytes) else None
    status, answer = await placing.post(body, raw=raw)
    assert status == 400
    assert answer["error"] == error
    assert answer.get("field") == field
    assert placing.rest.created == []


async def test_a_body_that_is_not_json_by_its_type_or_too_large(placing: Placing) -> None:
    status, body = await placing.post(None, {**AUTH, "Content-Type": "text/plain"}, raw=b"{}")
    assert (status, body["error"]) == (400, "invalid_body")
    status, body = await placing.post(None, raw=b" " * (64 * 1024 + 1))
    assert (status, body["error"]) == (400, "invalid_body")
    assert "larger than" in body["message"]


async def test_twilio_refusing_the_call_is_502(placing: Placing) -> None:
    status, body = await placing.post({"to": "+15559990000"})  # not verified on the trial
    assert (status, body["error"]) == (502, "twilio_error")
    assert "not a verified number" in body["message"]


async def test_no_caller_id_is_400_and_no_account_503(placing_factory: Any) -> None:
    placing: Placing = await placing_factory(twilio_phone_number=None)
    status, body = await placing.post({"to": CALLEE})
    assert (status, body["error"], body["field"]) == (400, "invalid_field", "from")
    unconfigured: Placing = await placing_factory(twilio_account_sid=None)
    status, body = await unconfigured.post({"to": CALLEE})
    assert (status, body["error"]) == (503, "not_configured")
    assert "TWILIO_ACCOUNT_SID" in body["message"]


async def test_a_serve_process_places_the_call(fake_agent: FakeVoiceAgent, tmp_path: Path) -> None:
    """`callbridge serve` as deployed: the call it places is answered with its call id."""
    port, rest_port = free_port(), free_port()
    lines: list[dict[str, Any]] = []
    seen = asyncio.Event()

    def on_line(line: bytes) -> None:
        try:
            lines.append(json.loads(line))
        except ValueError:
            return
        seen.set()

    env = serve_env(
        fake_agent.url,
        port,
        tmp_path,
        CALLBRIDGE_API_TOKEN=API_TOKEN,
        TWILIO_ACCOUNT_SID=DEFAULT_ACCOUNT_SID,
        TWILIO_PHONE_NUMBER=OUR_NUMBER,
        TWILIO_API_BASE_URL=f"http://127.0.0.1:{rest_port}",
    )
    async with TwilioSimulator(
        f"http://127.0.0.1:{port}", auth_token=AUTH_TOKEN, public_url=PUBLIC_URL
    ) as simulator:
        rest = FakeTwilioRest(
            simulator, auth_token=AUTH_TOKEN, owned_numbers=[OUR_NUMBER], verified_numbers=[CALLEE]
        )
        await rest.start(port=rest_port)
        proc = await start_serve(env, tmp_path, on_line)
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"http://127.0.0.1:{port}/api/calls",
                    json={"to": CALLEE, "parameters": {"name": "Alice"}},
                    headers=AUTH,
                ) as response,
            ):
                assert response.status == 201
                placed = await checked(response)
            call = await rest.wait_for_call()
            await call.wait_started()  # the webhook has answered
            assert call.webhook_status == 200

            def announced() -> list[dict[str, Any]]:
                return [line for line in lines if line.get("event") == "call.announced"]

            async with asyncio.timeout(10):
                while not announced():
                    seen.clear()
                    await seen.wait()
            line = announced()[0]
            assert line["call_id"] == placed["call_id"]
            assert line["call_sid"] == placed["call_sid"]
            assert line["parameters"] == ["name"]
            await call.hangup()
        finally:
            proc.terminate()
            await proc.wait()
            await rest.stop()


async def test_a_body_sent_in_pieces_is_read_whole(placing: Placing) -> None:
    body = json.dumps({"to": CALLEE, "parameters": {"name": "Alice"}}).encode()

    async def pieces() -> AsyncIterator[bytes]:
        yield body[:10]
        await asyncio.sleep(0.2)  # the input's shape: a client that pauses mid-body
        yield body[10:]

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            placing.server.url + "/api/calls",
            data=pieces(),
            headers={**AUTH, "Content-Type": "application/json"},
        ) as response,
    ):
        answer = await checked(response)
        assert response.status == 201, answer
    call = await placing.rest.wait_for_call()
    await call.wait_started()
    await call.hangup()
