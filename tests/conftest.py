"""Shared fixtures: the real server in-process on a loopback port, the fake Voice Agent
API, and the Twilio simulator, all talking over real sockets."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from callbridge.app import build_app
from callbridge.bot import Bot
from callbridge.bot import bot as default_bot
from callbridge.config import Settings
from callbridge.server.lifecycle import app_runner
from callbridge.server.shared_port import main_port_site
from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_simulator import DEFAULT_ACCOUNT_SID, TwilioSimulator

AUTH_TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC_URL = "https://callbridge.example.test"
API_KEY = "test-key"
API_TOKEN = "records-api-token"


@dataclass
class RunningServer:
    url: str
    app: web.Application
    settings: Settings


ServerFactory = Callable[..., Awaitable[RunningServer]]


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "assemblyai_api_key": API_KEY,
        "public_url": PUBLIC_URL,
        "twilio_account_sid": DEFAULT_ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "host": "127.0.0.1",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def fake_agent() -> AsyncIterator[FakeVoiceAgent]:
    agent = FakeVoiceAgent(api_key=API_KEY, validate_own_events=True)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()
    # Anything we sent that the API would reject fails the test that caused it.
    assert agent.violations == [], agent.violations


@pytest.fixture
def agent_transport(request: pytest.FixtureRequest) -> str | None:
    """The upstream socket's library; None keeps the default. Tests parametrize it
    (indirect=True) to run over both transports."""
    return getattr(request, "param", None)


@pytest.fixture
def twilio_transport(request: pytest.FixtureRequest) -> str | None:
    """Which library serves Media Streams on the main port (None: the default, picows).
    Modules override this fixture, or tests parametrize it (indirect=True), to run under
    both."""
    return getattr(request, "param", None)


@pytest.fixture
def fast_path(request: pytest.FixtureRequest) -> bool | None:
    """Whether the compiled audio fast path is used (None: the default, used when built).
    Tests parametrize it with BOTH_AUDIO_PATHS."""
    return getattr(request, "param", None)


# Runs a test with the audio fast path and without it: every frame through the bridge.
BOTH_AUDIO_PATHS = pytest.mark.parametrize(
    "fast_path", [True, False], ids=["fast-path", "full-path"], indirect=True
)


# Runs a test (or a module, as pytestmark) under both stream servers, aiohttp and picows.
# The `twilio_transport` fixture reads the value from request.param.
BOTH_STREAM_SERVERS = pytest.mark.parametrize(
    "twilio_transport", ["aiohttp", "picows"], indirect=True
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def start_server(
    tmp_path_factory: pytest.TempPathFactory,
    agent_transport: str | None,
    twilio_transport: str | None,
    fast_path: bool | None,
) -> AsyncIterator[ServerFactory]:
    runners: list[web.AppRunner] = []

    async def start(
        bot: Bot = default_bot, bots: dict[str, Bot] | None = None, **overrides: Any
    ) -> RunningServer:
        if agent_transport is not None:
            overrides.setdefault("callbridge_agent_transport", agent_transport)
        if twilio_transport is not None:
            overrides.setdefault("callbridge_media_stream_transport", twilio_transport)
        if fast_path is not None:
            overrides.setdefault("callbridge_fast_path", fast_path)
        # Each server keeps its call records in a fresh SQLite file of its own.
        folder = tmp_path_factory.mktemp("records")
        overrides.setdefault("database_url", f"sqlite:///{folder}/calls.db")
        overrides.setdefault("callbridge_spool_path", str(folder / "spool.jsonl"))
        overrides.setdefault("callbridge_api_token", API_TOKEN)
        settings = make_settings(**overrides)
        app = build_app(settings, bot, bots)
        runner = app_runner(app, settings)
        await runner.setup()
        site = main_port_site(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site.port
        return RunningServer(url=f"http://127.0.0.1:{port}", app=app, settings=settings)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def server(start_server: ServerFactory, fake_agent: FakeVoiceAgent) -> RunningServer:
    return await start_server(assemblyai_agent_url=fake_agent.url)


@pytest.fixture
async def simulator(server: RunningServer) -> AsyncIterator[TwilioSimulator]:
    sim = TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)
    try:
        yield sim
    finally:
        await sim.close()
    for call in sim.calls:
        # Twilio would log a warning for every frame of ours it could not use.
        assert call.warnings == [], call.warnings
