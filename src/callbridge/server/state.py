"""What the HTTP and WebSocket handlers share: settings, the bot, live calls."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from callbridge.bot import Bot
from callbridge.config import Settings
from callbridge.logs import EventLogger
from callbridge.records.entries import RecordEntry
from callbridge.records.store import CallStore
from callbridge.server.call_registry import CallRegistry
from callbridge.server.instance_urls import direct_url
from callbridge.server.last_requests import LastRequests
from callbridge.server.log_throttle import LogThrottle
from callbridge.server.shared_state import LocalState, SharedState
from callbridge.twilio.signatures import TwilioAuthenticator


@dataclass
class AppState:
    settings: Settings
    bot: Bot
    apology_payloads: tuple[bytes, ...]
    apology_seconds: float
    auth: TwilioAuthenticator
    records: CallStore
    registry: CallRegistry = field(default_factory=CallRegistry)
    log: EventLogger = field(default_factory=lambda: EventLogger("server"))
    # Lines about refused requests, at a bounded rate per client and reason.
    refusals: LogThrottle = field(default_factory=LogThrottle)
    http: aiohttp.ClientSession | None = None
    shutting_down: bool = False
    # Twilio's `stream-ended` requests, awaited by a stopping server (`last_requests`).
    last_requests: LastRequests = field(default_factory=LastRequests)
    warned_public_url: bool = False
    picows_streams: bool = False  # the main port hands stream sockets to picows
    warned_stream_on_aiohttp: bool = False
    # Counts what the records say before they are stored (`server/metrics.py`).
    observe: Callable[[RecordEntry], None] | None = None
    # What the instances answering one line share (`build_app` sets it from REDIS_URL).
    shared: SharedState = field(init=False)
    # Every bot by name (`default` is `bot`), and the bot's name for each number listed.
    bots: Mapping[str, Bot] = field(default_factory=dict)
    numbers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shared = LocalState(self.registry, self.records.instance_id, direct_url(self.settings))
        self.bots = {"default": self.bot, **self.bots}

    # Also handed every entry, after the metrics (the operator console's live feed). Each
    # must be cheap and must not raise: entries come in behind a call's events.
    taps: list[Callable[[RecordEntry], None]] = field(default_factory=list)

    def record(self, entry: RecordEntry) -> None:
        """Every record entry goes through here: counted for the metrics, shown to whoever
        watches live, then queued for the database."""
        if self.observe is not None:
            self.observe(entry)
        for tap in self.taps:
            tap(entry)
        self.records.submit(entry)

    @property
    def api_token(self) -> str | None:
        """CALLBRIDGE_API_TOKEN, the bearer token of the records API and /metrics (None:
        both are off; see `api_auth`)."""
        token = self.settings.callbridge_api_token
        return token.get_secret_value() if token is not None else None

    def not_ready_reasons(self) -> list[str]:
        reasons = []
        if self.settings.api_key is None:
            reasons.append("ASSEMBLYAI_API_KEY is not set")
        if self.shutting_down:
            reasons.append("shutting down")
        if not self.shared.up and self.settings.callbridge_redis_down == "refuse":
            reasons.append("Redis is not answering (CALLBRIDGE_REDIS_DOWN=refuse)")
        return reasons


APP_STATE = web.AppKey("callbridge_state", AppState)
