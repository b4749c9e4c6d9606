"""What the console shows, worked out from records: masking, heard and unheard, states,
the overview's hourly figures, and the live feed's bounded queues."""

from __future__ import annotations

import asyncio
import datetime

import msgspec

from callbridge.console import charts, views
from callbridge.console.feed import LiveFeed
from callbridge.records.entries import (
    CallClosed,
    CallError,
    CallOpened,
    ToolInvocation,
    TranscriptLine,
    TurnLatency,
)
from callbridge.records.queries import Overview, ToolCallItem


def test_numbers_are_masked_but_their_last_two_digits() -> None:
    assert views.mask_number("+15557654321") == "+•••••••••21"
    assert views.mask_number(None) == "unknown"
    assert views.mask_number("client:alice") == "client:alice"
    assert views.show_number("+15557654321", shown=True) == "+15557654321"


def test_heard_and_unheard_parts_of_a_reply() -> None:
    text = "Your number is seven and that is all"
    assert views.split_heard(text, False, 2.0, 2.0) == (text, "")
    assert views.split_heard(text, True, 4.0, 2.0) == ("Your number is", "seven and that is all")
    assert views.split_heard(text, True, 4.0, 0.0) == ("", text)
    assert views.split_heard(text, True, 0.0, 0.0) == ("", text)
    assert views.split_heard(text, False, None, None) == (text, "")
    assert views.split_heard(None, True, 1.0, 0.5) == ("", "")


def test_live_states() -> None:
    assert views.live_state("configuring") == "connecting"
    assert views.live_state("live") == "live"
    assert views.live_state("resuming") == "reconnecting"
    assert views.live_state("live", transferring=True) == "transferring"
    assert views.live_state("resuming", transferring=True) == "reconnecting"
    assert views.live_state("apologizing") == "ending"
    assert views.live_state("live", closed=True) == "ended"


class MarkedToolCall(ToolCallItem, kw_only=True):
    sensitive_arguments: list[str]


def test_arguments_the_record_marks_sensitive_are_masked() -> None:
    at = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    fields = {
        "seq": 1, "at": at, "offset_seconds": 1.0, "tool_call_id": "t", "name": "pay",
        "arguments": {"pin": "4321", "amount": 5}, "result": "ok", "is_error": False,
        "duration_ms": None, "discarded": False,
    }  # fmt: skip
    plain = ToolCallItem(**fields)  # type: ignore[arg-type]
    assert views.tool_arguments(plain) == {"pin": "4321", "amount": 5}
    marked = MarkedToolCall(**fields, sensitive_arguments=["pin"])  # type: ignore[arg-type]
    assert views.tool_arguments(marked) == {"pin": views.SENSITIVE, "amount": 5}


def test_hourly_overview() -> None:
    now = datetime.datetime(2026, 12, 1, 12, 30, tzinfo=datetime.UTC)
    hour = datetime.timedelta(hours=1)
    rows = Overview(
        calls=[
            (now, "completed", "caller"),
            (now - hour, "busy", None),
            (now - hour, "completed", "agent"),
            (now - 30 * hour, "completed", "caller"),  # outside the day
        ],
        turn_latencies=[(now, ms) for ms in (100.0, 200.0, 300.0, 1000.0)],
        agent_errors=[now, now],
    )
    hourly = views.hourly(rows, now)
    assert hourly.hours[-1] == datetime.datetime(2026, 12, 1, 12, tzinfo=datetime.UTC)
    assert hourly.calls["completed"][-2:] == [1, 1]
    assert hourly.calls["busy"][-2:] == [1, 0]
    assert sum(hourly.calls["completed"]) == 2
    assert hourly.latency_median[-1] == 250.0
    assert hourly.latency_p95[-1] == 1000.0
    assert hourly.latency_median[-2] is None
    assert hourly.agent_errors[-1] == 2


def test_charts_escape_their_labels() -> None:
    svg = charts.bars({"<b>": [1.0, 2.0]}, ["<i>", "x"], 'a "label"')
    assert "<b>" not in svg and "&lt;b&gt;" in svg
    assert "&quot;label&quot;" in svg
    assert charts.lines({"m": [None, 3.0, 4.0]}, ["a", "b", "c"], "l").count("<circle") == 2


def test_the_live_feed_keeps_live_calls_and_drops_for_a_slow_page() -> None:
    feed = LiveFeed()
    feed.tap(CallOpened("c1", 0, 1.0, "inbound", from_number="+15550001111"))
    feed.tap(TurnLatency("c1", 1, 2.0, "r1", 1.0, 1.0))  # nothing a card shows
    with feed.subscribe(maxsize=3) as page:
        hello = TranscriptLine("c1", 2, 3.0, "caller", "hello")
        feed.tap(hello)
        feed.tap(TranscriptLine("c1", 3, 4.0, "agent", "hi"))
        # New lines go as lines; anything else draws the card again, lines and all.
        assert [line.text for line in page.take_all()["c1"] or []] == ["hello", "hi"]
        feed.tap(TranscriptLine("c1", 4, 4.5, "caller", "again"))
        feed.tap(CallError("c1", 5, 4.6, "agent", "boom"))
        feed.tap(TranscriptLine("c1", 6, 4.7, "caller", "and again"))
        assert page.take_all() == {"c1": None}
        page.tick()  # the periodic look: not a change of any call
        assert page.take_all() == {}
        assert page.ticked
        tool = ToolInvocation("c1", 7, 4.8, "t1", "lookup")
        feed.tap(tool)  # a tool called is a line of the card too
        assert page.take_all() == {"c1": [tool]}
        for seq in range(8, 12):
            feed.tap(TranscriptLine("c1", seq, 5.0, "caller", "more"))
        assert page.dropped == 1  # never blocks, says how many it left out
    assert feed.watching == 0
    said = [line.text for line in feed.calls["c1"].lines if isinstance(line, TranscriptLine)]
    assert said[:3] == ["hello", "hi", "again"]
    feed.tap(CallClosed("c1", 19, 6.0, "operator", "operator-hang-up"))
    assert "c1" not in feed.calls
    ended = feed.find("c1")
    assert ended is not None and ended.closed is not None
    feed.tap(TranscriptLine("c9", 0, 1.0, "caller", "unknown call"))
    assert feed.find("c9") is None
    assert msgspec.json.encode(ended.lines[0])


def test_a_call_gone_without_its_close_is_counted_as_ended() -> None:
    feed = LiveFeed()
    feed.tap(CallOpened("crashed", 0, 1000.0, "inbound"))
    feed.tap(CallOpened("running", 0, 1000.0, "inbound"))
    feed.tap(CallOpened("young", 0, 1090.0, "inbound"))
    feed.settle({"running"}, now=1100.0)
    assert list(feed.calls) == ["running", "young"]
    assert "crashed" in feed.ended


async def test_a_page_is_woken_by_a_change_or_a_tick() -> None:
    feed = LiveFeed()
    feed.tap(CallOpened("c1", 0, 1.0, "inbound"))
    with feed.subscribe() as page:
        waiting = asyncio.ensure_future(page.wait())
        await asyncio.sleep(0)
        assert not waiting.done()
        feed.tap(TranscriptLine("c1", 1, 2.0, "caller", "hello"))
        await asyncio.wait_for(waiting, 1)
        assert not page.ticked_only()
        page.take_all()
        page.tick()
        await asyncio.wait_for(page.wait(), 1)
        assert page.ticked_only()
