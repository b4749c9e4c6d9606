"""Verdicts, the printed table and the summary (ratios to the baselines, capacity)."""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

P99_TARGET_MS = 20.0
# The real server: streams on picows (default) or aiohttp; agent socket on picows or aiohttp.
OURS = ("callbridge", "callbridge-aiohttp-streams", "callbridge-aiohttp", "callbridge-redis")
REVISION_PREFIX = "callbridge@"  # callbridge as of a git revision (`--against`)
HARNESS_CPU_LIMIT = 80.0  # percent of core 1 used by the harness process
CORE_NOISE_LIMIT = 10.0  # percent of a core used by processes other than ours

METHOD = {
    "latency": (
        "One-way, from stamps in the audio bytes: each caller frame (160 B every 20 ms) and "
        "each agent chunk (300 B every 37.5 ms) starts with a 29-byte header (kind, stream, "
        "sequence number, CLOCK_MONOTONIC send time in ns) written as μ-law bytes 0xE0-0xEF "
        "(quiet). The bridge forwards payloads untouched; the far end reads the header, so "
        "latency = receive time - send time, through the server and both loopback sockets. "
        "Only frames sent inside the measurement window count."
    ),
    "relayed_frame": (
        "One audio frame delivered end to end through the server, either way: a Twilio "
        "media frame that reached the agent as input.audio, or an agent reply.audio that "
        "reached the caller as media. CPU per frame = server process CPU time (user+system, "
        "all threads) over the window / frames delivered in the window. Control messages "
        "(start, marks, clear, transcripts, tool calls) are not counted as frames; their "
        "cost is in the CPU."
    ),
    "loss": (
        "Per call, by sequence number after the window, once both ends have gone quiet and "
        "nothing is in flight. Caller audio is counted from the first frame that reached the "
        "agent (the bridge drops audio until session.ready, by design); agent audio from its "
        "first chunk. 'late' chunks of a barged-in reply are stamped apart: the bridge must "
        "drop them (the minimal relays forward them)."
    ),
    "rss_per_call": "(server RSS at the end of the window - RSS before any call) / N.",
    "pass": (
        f"Every call live, no set-up failure or dropped call, zero loss and reordering, "
        f"p99 <= {P99_TARGET_MS:g} ms both ways (and, for callbridge, no late audio leaked)."
    ),
}


def _lat(result: dict[str, Any], direction: str, key: str) -> float | None:
    value = result.get(f"latency_{direction}", {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def annotate(result: dict[str, Any]) -> None:
    """Add `passed`, `fail_reasons` and `harness_limited` to a run's result."""
    reasons: list[str] = []
    if "error" in result:
        reasons.append(result["error"][:200])
    else:
        if result["live_calls"] < result["calls"]:
            reasons.append(f"{result['calls'] - result['live_calls']} calls not live")
        for key in ("setup_failures", "calls_without_audio", "calls_dropped_by_server"):
            if result[key]:
                reasons.append(f"{key}={result[key]}")
        for key in ("lost_up", "lost_down", "reordered_up", "reordered_down"):
            if result[key]:
                reasons.append(f"{key}={result[key]}")
        if result["target"].startswith("callbridge") and result["late_audio_leaked"]:
            reasons.append(f"late_audio_leaked={result['late_audio_leaked']}")
        for direction in ("up", "down"):
            p99 = _lat(result, direction, "p99_ms")
            if p99 is None:
                reasons.append(f"no {direction} latency samples")
            elif p99 > P99_TARGET_MS:
                reasons.append(f"p99 {direction} {p99:.1f} ms")
    result["passed"] = not reasons
    result["fail_reasons"] = reasons
    if "error" in result:
        result["harness_limited"] = result["noisy"] = False
        return
    cores = result.get("cores") or []
    server_other = harness_other = 0.0
    if len(cores) > 1:
        # Whatever else ran on each core during the window (the machine is shared).
        server_other = max(0.0, cores[0]["busy"] - result["server_cpu_percent"])
        harness_other = max(0.0, cores[1]["busy"] - result["harness_cpu_percent"])
    result["server_core_other_percent"] = round(server_other, 1)
    result["harness_core_other_percent"] = round(harness_other, 1)
    result["noisy"] = max(server_other, harness_other) > CORE_NOISE_LIMIT
    result["harness_limited"] = result["harness_cpu_percent"] > HARNESS_CPU_LIMIT
    cpu = result["server_cpu_percent"]
    # The design's rule of thumb: capacity is the calls a core carries at 80% CPU. From CPU
    # time, so much less sensitive to a noisy neighbour than the latency verdict.
    result["calls_at_80pct_cpu"] = round(result["calls"] * 80.0 / cpu) if cpu > 0 else None


def noise(result: dict[str, Any]) -> float:
    """Percent of a core (the worse of ours two) that went to other processes."""
    return float(
        max(
            result.get("server_core_other_percent", 100.0),
            result.get("harness_core_other_percent", 100.0),
        )
    )


def hopeless(result: dict[str, Any], p99_limit_ms: float) -> bool:
    """So far past the targets that larger N cannot pass: skip them."""
    if "error" in result or result.get("setup_failures") or result.get("calls_dropped_by_server"):
        return True
    if result.get("lost_up") or result.get("lost_down"):
        return True
    return any((_lat(result, d, "p99_ms") or 0.0) > p99_limit_ms for d in ("up", "down"))


def header(facts: dict[str, Any], args: argparse.Namespace) -> str:
    pin = "server pinned to core 0, harness to core 1" if args.pin else "NOT pinned"
    return "\n".join(
        [
            f"callbridge bench: {facts['cpu_model']}, {facts['logical_cpus']} CPUs, "
            f"Python {facts['python']}, Linux {facts['kernel']}; {pin}",
            f"calls {','.join(map(str, args.calls))}; {args.duration:g} s measured per run "
            f"after a {args.ramp_rate:g}/s ramp and {args.settle:g} s settle; "
            f"servers: {', '.join(args.servers)}",
            "Note: this machine is shared and noisy; absolute timings move between runs. "
            "Compare servers within one run.",
            *(
                ["PROFILING: servers run under cProfile; timings and CPU are inflated."]
                if getattr(args, "profile", None)
                else []
            ),
            "",
            f"{'server':<18} {'calls':>5} {'live':>4}  {'up ms p50/p99/max':>20}  "
            f"{'down ms p50/p99/max':>20}  {'lost':>4} {'reord':>5} {'cpu%':>5} "
            f"{'us/frame':>8} {'KB/call':>7} {'harn%':>5}  verdict",
        ]
    )


def _fmt_lat(result: dict[str, Any], direction: str) -> str:
    parts = [_lat(result, direction, k) for k in ("p50_ms", "p99_ms", "max_ms")]
    if any(p is None for p in parts):
        return f"{'-':>20}"
    p50, p99, mx = (p for p in parts if p is not None)
    return f"{p50:6.2f}/{p99:6.2f}/{mx:6.1f}"


def row(result: dict[str, Any]) -> str:
    name = f"{result['target']:<18} {result['calls']:>5}"
    if "error" in result:
        return f"{name}  ERROR: {result['error'][:150]}"
    lost = result["lost_up"] + result["lost_down"]
    reord = result["reordered_up"] + result["reordered_down"]
    us = result["server_cpu_us_per_frame"]
    verdict = "pass" if result["passed"] else "FAIL: " + "; ".join(result["fail_reasons"])[:80]
    if result["harness_limited"]:
        verdict += " [harness busy]"
    if result["noisy"]:
        verdict += f" [noisy {noise(result):.0f}%]"
    return (
        f"{name} {result['live_calls']:>4}  {_fmt_lat(result, 'up')}  {_fmt_lat(result, 'down')}"
        f"  {lost:>4} {reord:>5} {result['server_cpu_percent']:5.1f} "
        f"{(us if us is not None else math.nan):8.1f} {result['server_rss_per_call_kb']:7.1f} "
        f"{result['harness_cpu_percent']:5.1f}  {verdict}"
    )


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Of several rounds of one (server, N), the run with the median CPU per frame (the
    lower middle of an even count); runs without that figure count as the most costly."""

    def cost(r: dict[str, Any]) -> float:
        value = r.get("server_cpu_us_per_frame")
        return float(value) if isinstance(value, int | float) else math.inf

    ranked = sorted(runs, key=cost)
    return ranked[(len(ranked) - 1) // 2]


def summarize(runs: list[dict[str, Any]], targets: list[str]) -> dict[str, Any]:
    rounds: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        rounds.setdefault((r["target"], r["calls"]), []).append(r)
    by_target: dict[str, dict[int, dict[str, Any]]] = {t: {} for t in targets}
    for (target, calls), of_n in rounds.items():
        by_target.setdefault(target, {})[calls] = median_run(of_n)
    capacity: dict[str, Any] = {}
    for target, results in by_target.items():
        passed = [n for n, r in results.items() if r.get("passed")]
        tried = sorted(results)
        best = max(passed) if passed else 0
        # Projected from CPU: the largest N at which the server stayed under 85% of its core.
        measured = [
            r
            for _, r in sorted(results.items())
            if r.get("calls_at_80pct_cpu") and not r.get("harness_limited")
        ]
        under = [r for r in measured if r["server_cpu_percent"] <= 85.0]
        basis = under[-1] if under else (measured[0] if measured else None)
        capacity[target] = {
            "calls_at_80pct_cpu": basis["calls_at_80pct_cpu"] if basis else None,
            "calls_at_80pct_cpu_from_run": basis["calls"] if basis else None,
            "max_calls_passing": best,
            # The sweep's largest N passed: the real limit is somewhere above it.
            "at_least": bool(passed) and best == tried[-1],
            "tried": tried,
        }
    summary: dict[str, Any] = {"capacity": capacity}
    counted = {
        target: {
            str(n): r["instructions"]["instructions_per_frame"]
            for n, r in sorted(results.items())
            if "instructions" in r
        }
        for target, results in by_target.items()
    }
    if any(counted.values()):
        summary["instructions_per_frame"] = {t: c for t, c in counted.items() if c}
    # callbridge as of another revision (`--against`): what a change did, measured in this run.
    revisions = tuple(t for t in by_target if t.startswith(REVISION_PREFIX))
    for ours_name in OURS:
        if ours_name in by_target:
            key = "ratios_" + ours_name.replace("-", "_") + "_to"
            bases: tuple[str, ...] = ("aiohttp", "picows")
            if ours_name == "callbridge":
                bases += revisions
            if ours_name == "callbridge-redis":
                bases += ("callbridge",)  # what sharing the live state costs a frame
            summary[key] = _ratios(ours_name, by_target, capacity, bases)
            for base, pairs in _ratios_by_round(ours_name, rounds, bases).items():
                summary[key][base].update(pairs)
    return summary


def _ratios_by_round(
    ours_name: str, rounds: dict[tuple[str, int], list[dict[str, Any]]], bases: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """With --rounds, the ratio within each round: the two servers ran minutes apart, so a
    drift of the machine (which moves a server's figure by ±20% between rounds) falls on
    both alike, where the ratio of each server's median run does not cancel it. Their
    median (of an even count, the mean of the middle two) is the steadier figure."""
    out: dict[str, dict[str, Any]] = {}
    for base in bases:
        by_round: dict[str, list[float]] = {}
        for (target, calls), ours in sorted(rounds.items()):
            if target != ours_name:
                continue
            theirs = {r.get("round"): r for r in rounds.get((base, calls), [])}
            ratios = []
            for r in sorted(ours, key=lambda r: r.get("round", 0)):
                other = theirs.get(r.get("round"))
                a = r.get("server_cpu_us_per_frame")
                b = other.get("server_cpu_us_per_frame") if other else None
                if a and b:
                    ratios.append(round(a / b, 3))
            if len(ratios) > 1:
                by_round[str(calls)] = ratios
        if by_round:
            out[base] = {
                "cpu_per_frame_ratio_by_round": by_round,
                "cpu_per_frame_ratio_round_median": {
                    n: round(statistics.median(r), 3) for n, r in by_round.items()
                },
            }
    return out


def _ratios(
    ours_name: str,
    by_target: dict[str, dict[int, dict[str, Any]]],
    capacity: dict[str, Any],
    bases: tuple[str, ...],
) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    ours = by_target.get(ours_name, {})
    for base in bases:
        theirs = by_target.get(base, {})
        per_n = {}
        for n in sorted(set(ours) & set(theirs)):
            a = ours[n].get("server_cpu_us_per_frame")
            b = theirs[n].get("server_cpu_us_per_frame")
            if a and b:
                per_n[str(n)] = round(a / b, 2)
        common = sorted(set(ours) & set(theirs))
        both_passed = [n for n in common if ours[n].get("passed") and theirs[n].get("passed")]
        # The headline ratio: at the largest N both handled, else the smallest N both ran.
        at = both_passed[-1] if both_passed else (common[0] if common else None)
        ours_cap, theirs_cap = capacity.get(ours_name, {}), capacity.get(base, {})
        a, b = ours_cap.get("max_calls_passing", 0), theirs_cap.get("max_calls_passing", 0)
        # A capacity that is only a lower bound (it passed every N tried) makes the ratio
        # a bound too, or unknown when both are.
        bound = {
            (False, False): "exact",
            (True, False): "at least",
            (False, True): "at most",
            (True, True): "unknown",
        }[(bool(ours_cap.get("at_least")), bool(theirs_cap.get("at_least")))]
        ratios[base] = {
            "cpu_per_frame_ratio_by_calls": per_n,
            "cpu_per_frame_ratio": per_n.get(str(at)) if at is not None else None,
            "cpu_ratio_at_calls": at,
            "max_calls_ratio": round(a / b, 2) if b and bound != "unknown" else None,
            "max_calls_ratio_is": bound,
            "calls_at_80pct_cpu_ratio": (
                round(ours_cap["calls_at_80pct_cpu"] / theirs_cap["calls_at_80pct_cpu"], 2)
                if ours_cap.get("calls_at_80pct_cpu") and theirs_cap.get("calls_at_80pct_cpu")
                else None
            ),
        }
    return ratios


def footer(runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = ["", f"Largest N with p99 <= {P99_TARGET_MS:g} ms both ways and zero loss:"]
    for target, cap in summary["capacity"].items():
        n = cap["max_calls_passing"]
        text = f">= {n} (the largest N tried)" if cap["at_least"] else str(n or "none passed")
        projected = cap["calls_at_80pct_cpu"]
        if projected:
            text += (
                f"; from CPU, ~{projected} calls at 80% of the core "
                f"(measured at {cap['calls_at_80pct_cpu_from_run']})"
            )
        lines.append(f"  {target:<18} {text}")
    for ours_name in OURS:
        ratios = summary.get("ratios_" + ours_name.replace("-", "_") + "_to", {})
        for base, r in ratios.items():
            if base not in summary["capacity"]:
                continue
            cpu = r["cpu_per_frame_ratio"]
            cap = r["max_calls_ratio"]
            if cap is None:
                cap_text = "unknown (not bracketed by the sweep)"
            else:
                prefix = {"at least": ">= ", "at most": "<= "}.get(r["max_calls_ratio_is"], "")
                cap_text = f"{prefix}x{cap}"
            lines.append(
                f"{ours_name} / {base}: CPU per frame x{cpu if cpu is not None else '?'}"
                f" (at {r['cpu_ratio_at_calls']} calls; by N {r['cpu_per_frame_ratio_by_calls']})"
                f"; max calls {cap_text}"
                f"; calls at 80% CPU x{r['calls_at_80pct_cpu_ratio'] or '?'}"
            )
            for n, each in r.get("cpu_per_frame_ratio_by_round", {}).items():
                rounds = " ".join(f"x{x:.2f}" for x in each)
                median = r["cpu_per_frame_ratio_round_median"][n]
                lines.append(f"  within each round at {n} calls: {rounds}; median x{median:.2f}")
    for r in runs:
        if r.get("redis_operations_per_call") is not None:
            lines.append(
                f"{r['target']} at {r['calls']} calls: Redis round trips per call "
                f"{r['redis_operations_per_call']} (set-up, live feed and end), per relayed frame "
                f"{r['redis_operations_per_frame']} (heartbeats only); by kind "
                f"{r['redis_operations_by_kind']}"
            )
    lines += instruction_table(runs)
    warnings = []
    for r in runs:
        if "error" in r:
            continue
        tag = f"{r['target']} at {r['calls']} calls"
        if r.get("harness_limited"):
            warnings.append(
                f"{tag}: the harness used {r['harness_cpu_percent']:.0f}% of its core: the load "
                "generator may be the limit, not the server"
            )
        if r.get("noisy"):
            warnings.append(
                f"{tag}: other processes took {r['server_core_other_percent']:.0f}% of the "
                f"server's core and {r['harness_core_other_percent']:.0f}% of the harness's "
                "(shared machine): its latencies are not the server's alone"
            )
    if warnings:
        lines += ["", "Warnings:", *(f"  - {w}" for w in warnings)]
    lines += [
        "",
        "Timings on a shared machine are noisy; nothing here is a pass/fail test.",
    ]
    return "\n".join(lines)


_STARTED = (
    ("frame_callbacks", "frames"),
    ("socket_io", "sock I/O"),
    ("ready_callbacks", "ready cb"),
    ("timer_callbacks", "timers"),
    ("other_threads", "threads"),
    ("greenlets", "greenlets"),
    ("unplaced", "unplaced"),
)
_SPENT = ("libpython", "msgspec", "picows", "uvloop", "libc", "sqlite")


def instruction_table(runs: list[dict[str, Any]]) -> list[str]:
    """With --callgrind: instructions per relayed frame, where they start and where they
    are spent, and each server's total as a multiple of the picows relay's at the same N."""
    counted = [r for r in runs if "instructions" in r]
    if not counted:
        return []
    relay = {
        r["calls"]: r["instructions"]["instructions_per_frame"]
        for r in counted
        if r["target"] == "picows"
    }
    head = " ".join(f"{label:>9}" for _, label in _STARTED)
    spent = " ".join(f"{name:>9}" for name in _SPENT)
    lines = [
        "",
        "Instructions per relayed frame (callgrind, user space, exact): executed, and split "
        "by where they start | where they are spent, over the dump's cost lines (which add "
        "up to more, `lines`: see bench/instructions.py):",
        f"  {'server':<18} {'calls':>5} {'total':>8} {'/picows':>7} {'lines':>8}  {head} | {spent}",
    ]
    for r in counted:
        figures = r["instructions"]
        total = figures["instructions_per_frame"]
        base = relay.get(r["calls"])
        ratio = f"x{total / base:.2f}" if base else "-"
        started = " ".join(f"{figures['where_started'].get(k, 0):>9}" for k, _ in _STARTED)
        used = " ".join(f"{figures['where_spent'].get(k, 0):>9}" for k in _SPENT)
        in_lines = figures.get("cost_lines_per_frame", total)
        lines.append(
            f"  {r['target']:<18} {r['calls']:>5} {total:>8} {ratio:>7} {in_lines:>8}  "
            f"{started} | {used}"
        )
    simulated = [r for r in counted if r["instructions"].get("simulated_per_frame")]
    if simulated:
        lines += [
            "",
            "Simulated per relayed frame (callgrind --cache-sim --branch-sim): cache misses "
            "(I1mr D1mr D1mw first level, ILmr DLmr DLmw last), branches (Bc conditional, "
            "Bi indirect) and mispredictions (Bcm, Bim):",
        ]
        for r in simulated:
            events = r["instructions"]["simulated_per_frame"]
            shown = "  ".join(f"{name} {count:g}" for name, count in events.items())
            lines.append(f"  {r['target']:<18} {r['calls']:>5}  {shown}")
    return lines
