"""What the metrics count from call records, and the bound on labels from outside."""

from __future__ import annotations

from callbridge.records.entries import (
    CallAction,
    CallClosed,
    CallError,
    CallOpened,
    CallSetupDone,
    CallStatusChanged,
    ToolInvocation,
    TurnLatency,
)
from callbridge.records.store import StoreStats
from callbridge.server.metrics import BoundedLabel, CallMetrics

STATS = StoreStats(
    submitted=10,
    durable=9,
    committed=7,
    queued=1,
    spool_bytes=512,
    dropped=2,
    rejected=0,
    database_up=True,
)


def new_metrics(live: dict[str, int] | None = None) -> CallMetrics:
    return CallMetrics(lambda: live or {}, lambda: STATS, tool_names=["lookup"])


def value(metrics: CallMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_call_s_records_become_counters_and_histograms() -> None:
    m = new_metrics()
    m.observe(CallOpened("c1", 0, 0.0, "inbound"))
    m.observe(TurnLatency("c1", 1, 0.0, "r1", 350.0, 420.0, 1350.0, 1420.0))
    m.observe(TurnLatency("c1", 2, 0.0, "r2", 200.0, None))  # cut off before it played
    m.observe(ToolInvocation("c1", 3, 0.0, "t1", "lookup", duration_ms=40.0))
    m.observe(ToolInvocation("c1", 4, 0.0, "t2", "lookup", is_error=True))
    m.observe(ToolInvocation("c1", 5, 0.0, "t3", "lookup", discarded=True))
    m.observe(CallError("c1", 6, 0.0, "agent", "at_capacity"))
    m.observe(CallStatusChanged("c1", 7, 0.0, "CA1", "completed"))  # not counted
    m.observe(
        CallClosed(
            "c1", 8, 0.0, "caller", "stream-stopped",
            frames_from_twilio=100, frames_to_agent=98, frames_to_twilio=40,
            dropped={"before-ready": 2}, resumes=1,
        )
    )  # fmt: skip
    assert value(m, "callbridge_calls_started_total", direction="inbound") == 1
    ended = {"ended_by": "caller", "reason": "stream-stopped"}
    assert value(m, "callbridge_calls_ended_total", **ended) == 1
    assert value(m, "callbridge_audio_frames_total", direction="from-twilio") == 100
    assert value(m, "callbridge_audio_frames_total", direction="to-agent") == 98
    assert value(m, "callbridge_audio_frames_total", direction="to-twilio") == 40
    assert value(m, "callbridge_audio_frames_dropped_total", reason="before-ready") == 2
    assert value(m, "callbridge_agent_resumes_total") == 1
    assert value(m, "callbridge_call_errors_total", source="agent", code="at_capacity") == 1
    assert value(m, "callbridge_turn_latency_seconds_count", stage="sent") == 2
    assert value(m, "callbridge_turn_latency_seconds_count", stage="played") == 1
    assert value(m, "callbridge_turn_latency_seconds_sum", stage="played") == 0.42
    # To the first words, after the silent lead-in: their own stages.
    assert value(m, "callbridge_turn_latency_seconds_count", stage="audible-sent") == 1
    assert value(m, "callbridge_turn_latency_seconds_sum", stage="audible-sent") == 1.35
    assert value(m, "callbridge_turn_latency_seconds_sum", stage="audible-played") == 1.42
    assert value(m, "callbridge_turn_latency_seconds_bucket", stage="sent", le="0.3") == 1
    for outcome in ("ok", "error", "discarded"):
        assert value(m, "callbridge_tool_calls_total", tool="lookup", outcome=outcome) == 1
    assert value(m, "callbridge_tool_duration_seconds_count", tool="lookup") == 1


def test_every_action_on_a_call_is_counted_in_one_counter() -> None:
    m = new_metrics()
    m.observe(CallAction("c1", 1, 0.0, "keypad-entry", "entered", by="caller", detail="4 keys"))
    m.observe(CallAction("c1", 2, 0.0, "transfer", "busy", "sales", 0.0, by="agent"))
    m.observe(CallAction("c1", 3, 0.0, "stream-lost", "reattached"))
    m.observe(CallAction("c1", 4, 0.0, "hang-up", "after-goodbye", by="agent"))
    m.observe(CallAction("c2", 1, 0.0, "hang-up", "after-goodbye", by="operator"))
    counted = {
        (s.labels["verb"], s.labels["outcome"]): s.value
        for family in m.registry.collect()
        if family.name == "callbridge_call_actions"
        for s in family.samples
        if s.name == "callbridge_call_actions_total"
    }
    assert counted == {
        ("keypad-entry", "entered"): 1,
        ("transfer", "busy"): 1,
        ("stream-lost", "reattached"): 1,
        ("hang-up", "after-goodbye"): 2,
    }
    assert b"callbridge_call_verbs" not in m.exposition()


def test_gauges_are_read_when_scraped() -> None:
    live = {"inbound": 3}
    m = new_metrics(live)
    assert value(m, "callbridge_calls_live", direction="inbound") == 3
    assert value(m, "callbridge_calls_live", direction="outbound") == 0
    live["inbound"] = 1
    assert value(m, "callbridge_calls_live", direction="inbound") == 1
    assert value(m, "callbridge_records_queued") == 1
    assert value(m, "callbridge_records_not_committed") == 3
    assert value(m, "callbridge_records_spool_bytes") == 512
    assert value(m, "callbridge_records_dropped_total") == 2
    assert value(m, "callbridge_records_database_up") == 1
    text = m.exposition().decode()
    assert 'callbridge_calls_live{direction="inbound"} 1.0' in text
    assert "process_resident_memory_bytes" in text
    assert "_created" not in text


def test_labels_from_outside_are_bounded() -> None:
    label = BoundedLabel(["known"], limit=3)
    assert label("known") == "known"
    assert label("a") == "a" and label("b") == "b"
    assert label("c") == "other"  # the limit is reached
    assert label("a") == "a"  # values already seen keep their name
    fresh = BoundedLabel()
    assert fresh('"><script>') == "other"
    assert fresh("x" * 65) == "other"
    assert fresh("") == "other"
    m = new_metrics()
    for i in range(200):  # an agent inventing error codes and tools
        m.observe(CallError("c1", i, 0.0, "agent", f"code_{i}"))
        m.observe(ToolInvocation("c1", i, 0.0, f"t{i}", f"tool_{i}"))
    codes = {
        s.labels["code"]
        for metric in m.registry.collect()
        if metric.name == "callbridge_call_errors"
        for s in metric.samples
    }
    assert len(codes) == 51 and "other" in codes
    assert value(m, "callbridge_call_errors_total", source="agent", code="other") == 150


def test_set_ups_are_counted_by_bot_and_outcome() -> None:
    m = new_metrics()
    m.observe(CallSetupDone("c1", 0.0, "inbound", "configured", bot_name="sales"))
    m.observe(CallSetupDone("c2", 0.0, "inbound", "failed", bot_name="sales", error="late"))
    m.observe(CallSetupDone("c3", 0.0, "outbound", "refused"))
    assert value(m, "callbridge_call_setups_total", bot="sales", outcome="configured") == 1
    assert value(m, "callbridge_call_setups_total", bot="sales", outcome="failed") == 1
    assert value(m, "callbridge_call_setups_total", bot="default", outcome="refused") == 1
