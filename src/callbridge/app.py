"""Builds the aiohttp application from settings and a bot."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from importlib import resources

import aiohttp
from aiohttp import web

from callbridge.bot import Bot
from callbridge.config import Settings
from callbridge.console import add_console
from callbridge.records.store import CallStore
from callbridge.server import records_api, streams, webhooks
from callbridge.server.connections import FIRST_REQUESTS, FirstRequests, note_first_request
from callbridge.server.lifecycle import end_calls_now
from callbridge.server.metrics import METRICS, CallMetrics, metrics_endpoint
from callbridge.server.picows_streams import PICOWS_STREAMS, PicowsStreams
from callbridge.server.records_api import RECORDS_STORE
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


def build_app(settings: Settings, bot: Bot) -> web.Application:
    payloads, seconds = load_apology()
    state = AppState(
        settings=settings,
        bot=bot,
        apology_payloads=payloads,
        apology_seconds=seconds,
        auth=TwilioAuthenticator(settings),
        records=CallStore.from_settings(settings),
    )
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
    app.router.add_get("/healthz", webhooks.healthz)
    app.router.add_get("/readyz", webhooks.readyz)
    records_api.add_routes(app)
    app[RECORDS_STORE] = state.records
    metrics = CallMetrics(
        lambda: _live_by_direction(state),
        state.records.stats,
        tool_names=(t.name for t in bot.tools),
    )
    state.observe = metrics.observe
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
