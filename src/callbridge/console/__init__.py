"""The operator console: every call live in a browser, its history, and a hand on each one.

Served at /console on the server's own port, when CALLBRIDGE_API_TOKEN is set (else 404, as
the records API). Pages are rendered on the server (Jinja2); one small script keeps the live
page current from a server-sent event feed, which is fed by the call records as the bridge
makes them (`feed.LiveFeed`), never by the audio.
"""

from __future__ import annotations

from aiohttp import web

from callbridge.console import pages
from callbridge.console.pages import CONSOLE, Console
from callbridge.console.relay import FeedRelay
from callbridge.server.state import AppState

__all__ = ["CONSOLE", "Console", "add_console"]


def add_console(app: web.Application, state: AppState) -> None:
    """Mount the console on `app`. Without a token it answers 404 and watches nothing."""
    console = Console(state)
    app[CONSOLE] = console
    if state.api_token is not None:
        state.taps.append(console.feed.tap)
        if state.shared.distributed:  # and every other instance's calls
            console.feed.longest_call = state.settings.max_call_seconds + 600
            relay = FeedRelay(state, console.feed)
            state.taps.append(relay.publish)
            state.shared.feed_listeners.append(relay.receive)
    app.on_shutdown.append(_stop_feeds)
    add = app.router
    add.add_get("/console", pages.live_page)
    add.add_get("/console/", pages.live_page)
    add.add_get("/console/login", pages.login_page)
    add.add_post("/console/login", pages.login)
    add.add_post("/console/logout", pages.logout)
    add.add_get("/console/events", pages.live_events)
    add.add_get("/console/history", pages.history)
    add.add_get("/console/history.{format:csv|json}", pages.export)
    add.add_get("/console/overview", pages.overview)
    add.add_get("/console/calls/{call}", pages.call_page)
    add.add_post("/console/calls/{call}/{verb}", pages.act)
    add.add_get("/console/static/{name}", pages.static)


async def _stop_feeds(app: web.Application) -> None:
    app[CONSOLE].closing.set()
