"""What the console's pages show, worked out from records and live calls: no I/O, no HTML."""

from __future__ import annotations

import datetime
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from callbridge.records.queries import CallDetail, Overview, ToolCallItem, describe_action

MASK = "•"
SENSITIVE = "••••"  # a sensitive argument's value, as shown


def mask_number(number: str | None) -> str:
    """A phone number with all but its last two digits hidden (a client name as it is)."""
    if not number:
        return "unknown"
    digits = sum(c.isdigit() for c in number)
    if digits < 5:
        return number
    shown, out = 0, []
    for c in reversed(number):
        if c.isdigit():
            shown += 1
            out.append(c if shown <= 2 else MASK)
        else:
            out.append(c)
    return "".join(reversed(out))


def show_number(number: str | None, shown: bool) -> str:
    return (number or "unknown") if shown else mask_number(number)


def live_state(bridge_state: str | None, closed: bool = False, transferring: bool = False) -> str:
    """The bridge's state as the console names it: connecting, live, reconnecting,
    transferring, ending."""
    if closed or bridge_state is None:
        return "ended"
    if transferring and bridge_state == "live":
        return "transferring"
    if bridge_state in ("awaiting-start", "connecting", "configuring"):
        return "connecting"
    if bridge_state in ("reconnecting", "resuming"):
        return "reconnecting"
    if bridge_state == "live":
        return "live"
    return "ending"


def split_heard(
    text: str | None,
    interrupted: bool,
    generated_seconds: float | None,
    heard_seconds: float | None,
) -> tuple[str, str]:
    """An agent reply as (what the caller heard, what they did not).

    Twilio's mark echoes tell how much of the reply's audio was played; the text is cut in
    the same proportion, before the word that was playing (a word cut off counts as not
    heard)."""
    words = text or ""
    if not words or generated_seconds is None or heard_seconds is None:
        return words, ""
    if generated_seconds <= 0:
        return ("", words) if interrupted else (words, "")
    share = max(0.0, min(1.0, heard_seconds / generated_seconds))
    if share >= 0.999:
        return words, ""
    cut = int(len(words) * share)
    if 0 < cut < len(words) and not words[cut].isspace() and not words[cut - 1].isspace():
        space = words.rfind(" ", 0, cut)
        cut = space + 1 if space >= 0 else 0
    return words[:cut].rstrip(), words[cut:].strip()


def tool_arguments(item: ToolCallItem) -> dict[str, Any] | None:
    """A tool call's arguments as shown: any the record marks sensitive masked.

    A record marks them with `sensitive_arguments` (their names) or `sensitive` (all of
    them), when it has such fields."""
    if item.arguments is None:
        return None
    if getattr(item, "sensitive", False):
        return {name: SENSITIVE for name in item.arguments}
    hidden = set(getattr(item, "sensitive_arguments", None) or ())
    return {k: (SENSITIVE if k in hidden else v) for k, v in item.arguments.items()}


def tool_result(item: ToolCallItem) -> str | None:
    return SENSITIVE if getattr(item, "sensitive", False) and item.result else item.result


@dataclass(frozen=True)
class TimelineEvent:
    offset_seconds: float
    kind: str  # status, session, caller, agent, tool, error, action, end
    text: str


def timeline(call: CallDetail) -> list[TimelineEvent]:
    """Everything that happened to a call, in order of time."""
    start = call.started_at
    events: list[tuple[float, int, TimelineEvent]] = []

    def add(offset: float, order: int, kind: str, text: str) -> None:
        events.append((offset, order, TimelineEvent(round(offset, 2), kind, text)))

    for s in call.statuses:
        add((s.at - start).total_seconds(), 0, "status", f"Twilio: {s.status}")
    for a in call.agent_sessions:
        add(
            a.offset_seconds,
            1,
            "session",
            "agent session resumed" if a.resumed else "agent session started",
        )
    for t in call.transcript:
        said = t.text if t.text is not None else "(not stored)"
        add(
            t.offset_seconds,
            2,
            t.role,
            f"{t.role}: {said}" + (" (interrupted)" if t.interrupted else ""),
        )
    for tool in call.tool_calls:
        add(
            tool.offset_seconds,
            2,
            "tool",
            f"tool {tool.name}" + (" (error)" if tool.is_error else ""),
        )
    for e in call.errors:
        add(
            e.offset_seconds,
            2,
            "error",
            f"{e.source} error {e.code}" + (f": {e.message}" if e.message else ""),
        )
    for act in call.actions:
        add(act.offset_seconds, 2, "action", describe_action(act))
    if call.ended_at is not None:
        who = f" by {call.ended_by}" if call.ended_by else ""
        reason = f" ({call.end_reason})" if call.end_reason else ""
        add((call.ended_at - start).total_seconds(), 3, "end", f"ended{who}{reason}")
    events.sort(key=lambda e: (e[0], e[1]))
    return [e for _, _, e in events]


def turn_latencies(call: CallDetail) -> list[float | None]:
    """Each turn's wait, in ms: to the reply's first audible audio as played, else its
    first audio as played, else as sent."""
    out: list[float | None] = []
    for t in call.turn_latencies:
        out.append(
            t.to_first_audible_played_ms
            or t.to_first_audio_played_ms
            or t.to_first_audible_sent_ms
            or t.to_first_audio_sent_ms
        )
    return out


# -- the overview ---------------------------------------------------------------------------

OUTCOMES = ("completed", "in-progress", "busy", "no-answer", "failed", "canceled", "other")


@dataclass(frozen=True)
class Hourly:
    hours: list[datetime.datetime]  # each bucket's start, oldest first
    calls: dict[str, list[int]]  # outcome -> count per hour
    latency_median: list[float | None]
    latency_p95: list[float | None]
    agent_errors: list[int]


def hourly(rows: Overview, now: datetime.datetime, hours: int = 24) -> Hourly:
    end = now.replace(minute=0, second=0, microsecond=0) + datetime.timedelta(hours=1)
    start = end - datetime.timedelta(hours=hours)
    starts = [start + datetime.timedelta(hours=i) for i in range(hours)]

    def bucket(at: datetime.datetime) -> int | None:
        index = math.floor((at - start).total_seconds() / 3600)
        return index if 0 <= index < hours else None

    calls = {outcome: [0] * hours for outcome in OUTCOMES}
    for at, status, _ in rows.calls:
        i = bucket(at)
        if i is not None:
            calls[status if status in calls else "other"][i] += 1
    waits: list[list[float]] = [[] for _ in range(hours)]
    for at, ms in rows.turn_latencies:
        i = bucket(at)
        if i is not None:
            waits[i].append(ms)
    errors = Counter(i for at in rows.agent_errors if (i := bucket(at)) is not None)
    return Hourly(
        hours=starts,
        calls={k: v for k, v in calls.items() if any(v)},
        latency_median=[statistics.median(w) if w else None for w in waits],
        latency_p95=[percentile(w, 95) if w else None for w in waits],
        agent_errors=[errors.get(i, 0) for i in range(hours)],
    )


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]
