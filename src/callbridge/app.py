"""Builds the aiohttp application from settings and a bot."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Mapping
from importlib import resources

import aiohttp
from aiohttp import web

from callbridge.bot import Bot, with_settings
from callbridge.config import Settings
from callbridge.console import add_console
from callbridge.records.store import CallStore
from callbridge.server import (
    calls_api,
    records_api,
    session_api,
    streams,
    verb_webhooks,
    verbs_api,
    webhooks,
)
from callbridge.server.connections import FIRST_REQUESTS, FirstRequests, note_first_request
from callbridge.server.control import command_handler
from callbridge.server.instance_urls import direct_url
from callbridge.server.lifecycle import end_calls_now
from callbridge.server.lost_instances import close_lost_calls
from callbridge.server.metrics import METRICS, CallMetrics, metrics_endpoint
from callbridge.server.picows_streams import PICOWS_STREAMS, PicowsStreams
from callbridge.server.placed_calls import PLACED_CALLS, PlacedCalls
from callbridge.server.records_api import RECORDS_STORE
from callbridge.server.shared_state import SharedState, SharedStateCollector
from callbridge.server.state import APP_STATE, AppState
from callbridge.twilio.signatures import TwilioAuthenticator

# One second of μ-law per media message: Twilio accepts any size; fewer frames, same sound.
_APOLOGY_CHUNK_BYTES = 8000


def load_apology() -> tuple[tuple[bytes, ...], float]:
    """The built-in spoken apology, as μ-law chunks, and its length in seconds."""
    audio = resources.files("callbridge.assets").joinpath("apology.ulaw").read_bytes()
    payloads = tuple(
        audio[i : i + _APOLOGY_CHUNK_BYTES] for i in range(0, len(audio), _APOLOGY_CHUNK_BYTES)
    )
    return payloads, len(audio) / 8000


def build_app(
    settings: Settings, bot: Bot, bots: Mapping[str, Bot] | None = None
) -> web.Application:
    """The application; `bot` answers the numbers CALLBRIDGE_NUMBERS leaves out, `bots` are
    the others by name (CALLBRIDGE_BOTS)."""
    bot = with_settings(bot, settings)
    payloads, seconds = load_apology()
    state = AppState(
        settings=settings,
        bot=bot,
        bots=dict(bots or {}),
        numbers=settings.bot_numbers,
        apology_payloads=payloads,
        apology_seconds=seconds,
        auth=TwilioAuthenticator(settings),
        records=CallStore.from_settings(settings),
    )
    if settings.redis_url is not None:
        state.shared = _redis_state(settings, state)
    # The main port closes a connection whose first request is not in by the deadline;
    # the middleware tells it which have arrived (and a stream which connection it is on).
    app = web.Application(middlewares=[note_first_request])
    app[APP_STATE] = state
    app[FIRST_REQUESTS] = FirstRequests()
    app.router.add_post("/twiml", webhooks.inbound_twiml)
    app.router.add_post("/outbound-twiml", webhooks.outbound_twiml)
    app.router.add_post("/call-status", webhooks.call_status)
    app.router.add_get("/media-stream/{call_id}", streams.inbound_stream)
    app.router.add_get("/outbound-stream/{call_id}", streams.outbound_stream)
    # A call's later streams (re-attaching to it): a URL of their own, signed anew.
    app.router.add_get("/media-stream/{call_id}/{stream:[A-Za-z0-9]+}", streams.inbound_stream)
    app.router.add_get("/outbound-stream/{call_id}/{stream:[A-Za-z0-9]+}", streams.outbound_stream)
    app.router.add_get("/healthz", webhooks.healthz)
    app.router.add_get("/readyz", webhooks.readyz)
    records_api.add_routes(app)
    calls_api.add_routes(app)
    app[PLACED_CALLS] = PlacedCalls(settings.auth_token)
    verb_webhooks.add_routes(app)
    verbs_api.add_routes(app)
    session_api.add_routes(app)
    app[RECORDS_STORE] = state.records
    metrics = CallMetrics(
        lambda: _live_by_direction(state),
        state.records.stats,
        tool_names=sorted({t.name for b in state.bots.values() for t in b.tools}),
    )
    state.observe = metrics.observe
    metrics.registry.register(SharedStateCollector(state.shared))
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_endpoint)
    add_console(app, state)
    if settings.callbridge_media_stream_transport == "picows":
        app[PICOWS_STREAMS] = PicowsStreams(state)  # the main port hands it stream sockets
    # Each a context: if one fails to start (a spool it cannot open, say), the ones already
    # started are closed, in reverse order, and nothing else is. Streams stop first (that
    # waits for their calls), then the records (the calls' last entries), then the client.
    app.cleanup_ctx.append(_http_client)
    app.cleanup_ctx.append(_records)
    app.cleanup_ctx.append(_shared_state)
    app.cleanup_ctx.append(_picows_streams)
    app.on_shutdown.append(_end_live_calls)
    return app


async def _picows_streams(app: web.Application) -> AsyncIterator[None]:
    picows_streams = app.get(PICOWS_STREAMS)
    if picows_streams is not None:
        await picows_streams.start()
    yield
    if picows_streams is not None:
        await picows_streams.stop()


def _redis_state(settings: Settings, state: AppState) -> SharedState:
    try:
        from callbridge.server.redis_state import RedisState
    except ImportError:
        raise ValueError(
            "REDIS_URL: needs the redis client: pip install 'callbridge[redis]'"
        ) from None
    assert settings.redis_url is not None
    return RedisState(
        state.registry,
        state.records.instance_id,
        url=settings.redis_url,
        prefix=settings.callbridge_redis_prefix,
        instance_timeout=settings.callbridge_instance_timeout_seconds,
        when_down=settings.callbridge_redis_down,
        max_call_seconds=settings.max_call_seconds,
        own_url=direct_url(settings),
    )


async def _shared_state(app: web.Application) -> AsyncIterator[None]:
    # After the records (a lost instance's calls are closed there), before the streams.
    state = app[APP_STATE]
    await state.shared.start(
        command_handler(state.registry, state.log), close_lost_calls(state.records, state.log)
    )
    yield
    await state.shared.close()


async def _records(app: web.Application) -> AsyncIterator[None]:
    await app[APP_STATE].records.start()
    yield
    # After the calls: their last entries (CallClosed) are flushed with the rest.
    await app[APP_STATE].records.close()


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    # aiohttp's default pool caps a session at 100 connections: the 101st call would
    # wait for an upstream socket. Calls are the limit here, not the pool.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    http = app[APP_STATE].http = aiohttp.ClientSession(connector=connector)
    yield
    await http.close()


def _live_by_direction(state: AppState) -> dict[str, int]:
    return Counter(runner.bridge.direction for runner in state.registry.live.values())


async def _end_live_calls(app: web.Application) -> None:
    await end_calls_now(app[APP_STATE])
