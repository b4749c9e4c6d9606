"""GET /metrics: Prometheus metrics for whoever operates the server.

Nothing here runs per audio frame. Counters and histograms are fed by the call records as
the bridge makes them (a few a call-second at most: turns, tool calls, errors, and a
call's totals when it ends), and the gauges (live calls, the records' queue) are read from
the server's state when Prometheus scrapes. So frame counts are those of ended calls: a
call's frames count when it ends, with the rest of its totals.

Labels whose values come from outside (an agent's error codes, the tool names it asks for)
are bounded: past a few dozen distinct values, or for text that is not a plain code, the
value is counted as "other", so that no peer can grow the metrics without limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from callbridge.records.entries import (
    CallAction,
    CallClosed,
    CallError,
    CallOpened,
    CallSetupDone,
    RecordEntry,
    ToolInvocation,
    TurnLatency,
)
from callbridge.records.store import StoreStats
from callbridge.server.api_auth import authorize

# Seconds: a reply's first audio is usually 0.3-1.5 s after the caller stops; tools vary.
_TURN_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_TOOL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
_MAX_LABEL_VALUES = 50
# No `*_created` series: a timestamp per label set that dashboards do not use.
disable_created_metrics()  # type: ignore[no-untyped-call]
_PLAIN_CODE = re.compile(r"[a-z0-9_.:-]{1,64}", re.IGNORECASE)


class BoundedLabel:
    """A label's values as seen, up to a limit; then, and for odd text, "other"."""

    def __init__(self, known: Iterable[str] = (), limit: int = _MAX_LABEL_VALUES) -> None:
        self._seen = set(known)
        self._limit = limit

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit or not _PLAIN_CODE.fullmatch(value):
            return "other"
        self._seen.add(value)
        return value


class CallMetrics:
    """The server's metrics, in a registry of its own (so that two servers in one process,
    as in the tests, do not share counters)."""

    def __init__(
        self,
        live_calls: Callable[[], dict[str, int]],
        records: Callable[[], StoreStats],
        tool_names: Iterable[str] = (),
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # CPU seconds, RSS, open files
        self.registry.register(_StateCollector(live_calls, records))
        r = self.registry
        self.calls_started = Counter(
            "callbridge_calls_started",
            "Calls whose media stream started.",
            ["direction"],
            registry=r,
        )
        self.calls_ended = Counter(
            "callbridge_calls_ended",
            "Calls ended, by who ended them (caller, agent, server) and why.",
            ["ended_by", "reason"],
            registry=r,
        )
        self.frames = Counter(
            "callbridge_audio_frames",
            "Audio frames of ended calls: from Twilio, to the agent, to Twilio.",
            ["direction"],
            registry=r,
        )
        self.dropped = Counter(
            "callbridge_audio_frames_dropped",
            "Audio frames of ended calls not relayed, by why (before-ready, interrupted...).",
            ["reason"],
            registry=r,
        )
        self.resumes = Counter(
            "callbridge_agent_resumes",
            "Agent sessions resumed after a dropped socket.",
            registry=r,
        )
        self.errors = Counter(
            "callbridge_call_errors",
            "Errors in calls, by source (agent, twilio, bridge, tool, setup) and code.",
            ["source", "code"],
            registry=r,
        )
        self.turn_latency = Histogram(
            "callbridge_turn_latency_seconds",
            "From the end of the caller's speech to the reply's first audio (its silent "
            "lead-in, as a rule), sent to Twilio and played (confirmed by Twilio's mark); "
            "audible-sent and audible-played: to its first audible audio, the first words.",
            ["stage"],
            buckets=_TURN_BUCKETS,
            registry=r,
        )
        self.tool_calls = Counter(
            "callbridge_tool_calls",
            "Tool calls, by tool and outcome (ok, error, discarded: the reply was cut off).",
            ["tool", "outcome"],
            registry=r,
        )
        self.tool_seconds = Histogram(
            "callbridge_tool_duration_seconds",
            "How long tools took.",
            ["tool"],
            buckets=_TOOL_BUCKETS,
            registry=r,
        )
        self.call_actions = Counter(
            "callbridge_call_actions",
            "Actions on calls, by verb and outcome: hang-up (at-once, after-goodbye, "
            "goodbye-not-played, refused), say (sent, refused), keypad-entry and keypad-argument "
            "(entered, missing), silence-check-in (asked), transfer (answered, busy, "
            "no-answer, failed, canceled, not-started), digits (sent, failed), amd (Twilio's "
            "verdict), voicemail (left), stream-lost (reattached, not-back, call-ended).",
            ["verb", "outcome"],
            registry=r,
        )
        self.setups = Counter(
            "callbridge_call_setups",
            "Calls by bot and what its set-up decided (configured, defaults, refused, "
            "forwarded; failed: the bot's defaults were used).",
            ["bot", "outcome"],
            registry=r,
        )
        # From the agent: bounded. End and drop reasons are the bridge's own, a fixed set.
        self._error_code = BoundedLabel()
        self._tool_name = BoundedLabel(tool_names)
        self._outcome = BoundedLabel()  # Twilio's words: bounded all the same
        self._bot_name = BoundedLabel()

    def observe(self, entry: RecordEntry) -> None:
        """Count what a call record entry says (called for every entry, before it is stored)."""
        if isinstance(entry, TurnLatency):
            if entry.to_first_audio_sent_ms is not None:
                self.turn_latency.labels("sent").observe(entry.to_first_audio_sent_ms / 1000)
            if entry.to_first_audio_played_ms is not None:
                self.turn_latency.labels("played").observe(entry.to_first_audio_played_ms / 1000)
            if entry.to_first_audible_sent_ms is not None:
                self.turn_latency.labels("audible-sent").observe(
                    entry.to_first_audible_sent_ms / 1000
                )
            if entry.to_first_audible_played_ms is not None:
                self.turn_latency.labels("audible-played").observe(
                    entry.to_first_audible_played_ms / 1000
                )
        elif isinstance(entry, ToolInvocation):
            tool = self._tool_name(entry.name)
            outcome = "discarded" if entry.discarded else "error" if entry.is_error else "ok"
            self.tool_calls.labels(tool, outcome).inc()
            if entry.duration_ms is not None:
                self.tool_seconds.labels(tool).observe(entry.duration_ms / 1000)
        elif isinstance(entry, CallError):
            self.errors.labels(entry.source, self._error_code(entry.code)).inc()
        elif isinstance(entry, CallOpened):
            self.calls_started.labels(entry.direction).inc()
        elif isinstance(entry, CallClosed):
            self._call_closed(entry)
        elif isinstance(entry, CallAction):
            self.call_actions.labels(entry.verb, self._outcome(entry.outcome)).inc()
        elif isinstance(entry, CallSetupDone):
            self.setups.labels(self._bot_name(entry.bot_name or "default"), entry.outcome).inc()

    def _call_closed(self, entry: CallClosed) -> None:
        self.calls_ended.labels(entry.ended_by, entry.reason).inc()
        self.frames.labels("from-twilio").inc(entry.frames_from_twilio)
        self.frames.labels("to-agent").inc(entry.frames_to_agent)
        self.frames.labels("to-twilio").inc(entry.frames_to_twilio)
        for reason, count in entry.dropped.items():
            self.dropped.labels(reason).inc(count)
        if entry.resumes:
            self.resumes.inc(entry.resumes)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges read at scrape time: nothing to keep up to date between scrapes."""

    def __init__(
        self, live_calls: Callable[[], dict[str, int]], records: Callable[[], StoreStats]
    ) -> None:
        self._live_calls = live_calls
        self._records = records

    def collect(self) -> Iterator[Metric]:
        live = GaugeMetricFamily(
            "callbridge_calls_live", "Calls with a media stream open now.", labels=["direction"]
        )
        counts = self._live_calls()
        for direction in ("inbound", "outbound"):
            live.add_metric([direction], counts.get(direction, 0))
        yield live
        stats = self._records()
        yield GaugeMetricFamily(
            "callbridge_records_queued", "Record entries waiting to be spooled.", stats.queued
        )
        yield GaugeMetricFamily(
            "callbridge_records_not_committed",
            "Record entries accepted and not yet in the database (spooled or queued).",
            stats.submitted - stats.committed,
        )
        yield GaugeMetricFamily(
            "callbridge_records_spool_bytes", "Size of the spool file.", stats.spool_bytes
        )
        yield CounterMetricFamily(
            "callbridge_records_dropped",
            "Record entries refused since start (queue full, store closed).",
            stats.dropped,
        )
        yield GaugeMetricFamily(
            "callbridge_records_database_up",
            "1 while the records database answers.",
            1 if stats.database_up else 0,
        )


METRICS = web.AppKey("callbridge_metrics", CallMetrics)


async def metrics_endpoint(request: web.Request) -> web.Response:
    refused = authorize(request, "/metrics")
    if refused is not None:
        return refused
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
