"""Running the server until a signal, then stopping without dropping anyone mid-sentence.

First SIGTERM/SIGINT: stop taking calls (`/readyz` 503, callers get the busy answer), let
live calls go on for up to DRAIN_SECONDS, then ask each agent to say goodbye and hang up.
A second signal ends every call at once, still with `session.end` so billing stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal

from aiohttp import web

from callbridge import fast_path
from callbridge.bridge.inputs import ServerShutdown
from callbridge.config import Settings
from callbridge.logs import EventLogger
from callbridge.server.call_runner import CallRunner
from callbridge.server.last_requests import LAST_REQUEST_WAIT_SECONDS
from callbridge.server.shared_port import main_port_site
from callbridge.server.state import APP_STATE, AppState

_GOODBYE_WAIT_SECONDS = 25.0  # the agent's wrap-up (20 s at most) plus hanging up
_FORCED_WAIT_SECONDS = 5.0  # session.end, session.ended, sockets closed


def app_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """aiohttp's runner for the app, as the server runs it. An idle keep-alive connection
    is closed after CALLBRIDGE_KEEPALIVE_SECONDS (aiohttp's own default is an hour)."""
    return web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=5.0,
        keepalive_timeout=settings.callbridge_keepalive_seconds,
    )


async def serve(app: web.Application, settings: Settings, log: EventLogger) -> None:
    runner = app_runner(app, settings)
    try:
        # Inside: if start-up fails part way (the spool, the port), what did start is closed.
        await runner.setup()
        site = main_port_site(runner, settings.host, settings.port)
        await site.start()
        state = app[APP_STATE]
        streams = "picows" if state.picows_streams else "aiohttp"
        log.info("server.listening", host=settings.host, port=settings.port, media_streams=streams)
        if not settings.callbridge_fast_path:
            log.info("audio.fast_path", used=False, why="turned off (CALLBRIDGE_FAST_PATH)")
        elif not fast_path.COMPILED:  # every frame costs more CPU; nothing else changes
            log.warning("audio.fast_path", used=False, why=fast_path.WHY_NOT_COMPILED)
        else:
            log.info("audio.fast_path", used=True)
        _freeze_startup_heap()
        stopping = _Signals()
        await stopping.first.wait()
        if state.shared.distributed:
            # Other instances take new calls, and the streams of calls announced here: a
            # load balancer in front sees the port refuse and goes to one of them.
            await site.stop()
            log.info("server.stopped_listening", why="draining; other instances take new calls")
        await drain(app[APP_STATE], settings.drain_seconds, stopping.second, log)
    finally:
        await runner.cleanup()
    log.info("server.stopped")


def _freeze_startup_heap() -> None:
    # What start-up loaded (modules, SQLAlchemy, pydantic, twilio) lives as long as the
    # process. Left in the cyclic GC's view, each full pass would walk all of it while every
    # call's audio waits; frozen, a pass walks only what calls allocate.
    gc.collect()
    gc.freeze()


class _Signals:
    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.second = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        (self.second if self.first.is_set() else self.first).set()


async def drain(
    state: AppState, drain_seconds: float, now: asyncio.Event, log: EventLogger
) -> None:
    state.shutting_down = True
    state.last_requests.watching = True
    runners = list(state.registry.live.values())
    log.info("server.draining", live_calls=len(runners), drain_seconds=drain_seconds)
    if not await _wait_for_calls(state, drain_seconds, now):
        log.info("server.ending_calls", live_calls=len(state.registry.live), polite=True)
        _end_calls(state, polite=True)
        if not await _wait_for_calls(state, _GOODBYE_WAIT_SECONDS, now):
            log.warning("server.ending_calls", live_calls=len(state.registry.live), polite=False)
            _end_calls(state, polite=False)
            await _wait_for_calls(state, _FORCED_WAIT_SECONDS, asyncio.Event())
    await _wait_for_last_requests(state, runners, log)


async def _wait_for_last_requests(
    state: AppState, runners: list[CallRunner], log: EventLogger
) -> None:
    """Twilio asks once more for each call whose stream we closed (`last_requests`). With
    several instances the port is closed already and the others answer it."""
    if state.shared.distributed or not state.settings.callbridge_stream_lost_seconds:
        return
    due = {r.call_id for r in runners if r.done.is_set() and r.bridge.twilio_runs_next_verb}
    if not due:
        return
    missing = await state.last_requests.wait_for(due, LAST_REQUEST_WAIT_SECONDS)
    if missing:
        log.info("server.last_requests_missing", calls=len(missing))


async def end_calls_now(state: AppState) -> None:
    """For the app's shutdown hook: whatever is still live ends at once."""
    state.shutting_down = True
    _end_calls(state, polite=False)
    await _wait_for_calls(state, _FORCED_WAIT_SECONDS, asyncio.Event())


def _end_calls(state: AppState, *, polite: bool) -> None:
    for runner in list(state.registry.live.values()):
        with contextlib.suppress(Exception):
            runner.end(ServerShutdown(polite=polite))


async def _wait_for_calls(state: AppState, seconds: float, interrupt: asyncio.Event) -> bool:
    """True once no call is live; False after `seconds` or when `interrupt` is set."""
    runners = list(state.registry.live.values())
    if not runners:
        return True

    async def all_done() -> None:
        for runner in runners:
            await runner.done.wait()

    waiters = [asyncio.ensure_future(all_done()), asyncio.ensure_future(interrupt.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    if interrupt.is_set():
        if state.registry.live:
            _end_calls(state, polite=False)
            await _wait_for_calls(state, _FORCED_WAIT_SECONDS, asyncio.Event())
        return True
    return not state.registry.live
