"""`make bench --quick` and `bench.hot_path` run end to end and report sane figures.

Never a timing target: the machine is shared and noisy. This only checks that the
harness, the three servers and the report work, and that nothing is lost at a tiny N.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from callbridge import fast_path

REPO = Path(__file__).resolve().parent.parent


def _numbers(value: Any, path: str = "") -> list[tuple[str, float]]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [(path, float(value))]
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _numbers(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in _numbers(v, f"{path}[{i}]")]
    return []


def run_bench(folder: Path, module_args: list[str], timeout: float) -> tuple[str, Any]:
    """Run `python -m <module_args>`; its stdout and the JSON it wrote."""
    out = folder / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", *module_args, "--json-out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_bench_reports_sane_figures(tmp_path: Path) -> None:
    # --against: callbridge as of a revision (HEAD here, in a temporary worktree) as well.
    # LOG_LEVEL=DEBUG: the fast path's counts are in a DEBUG line (`call.fast_path`).
    stdout, doc = run_bench(
        tmp_path,
        ["bench", "--quick", "--against", "HEAD", "--server-env", "LOG_LEVEL=DEBUG"],
        timeout=200,
    )
    assert "callbridge" in stdout and "noisy" in stdout
    assert doc["machine"]["logical_cpus"] >= 1 and doc["machine"]["python"]
    runs = {r["target"]: r for r in doc["runs"]}
    (revision,) = set(runs) - {"callbridge", "aiohttp", "picows"}
    assert revision.startswith("callbridge@"), runs.keys()
    assert set(runs) == {"callbridge", revision, "aiohttp", "picows"}

    for target, run in runs.items():
        assert "error" not in run, (target, run.get("error"))
        for path, number in _numbers(run):
            assert math.isfinite(number) and number >= 0, (target, path, number)
        assert run["live_calls"] == run["calls"] == 20, target
        assert run["setup_failures"] == 0 and run["calls_dropped_by_server"] == 0, target
        assert run["frames_up"] > 0 and run["frames_down"] > 0, target
        assert run["lost_up"] == run["lost_down"] == 0, target
        assert run["reordered_up"] == run["reordered_down"] == 0, target
        for direction in ("latency_up", "latency_down"):
            lat = run[direction]
            assert lat["n"] > 0, (target, direction)
            assert all(lat[k] is not None for k in ("p50_ms", "p99_ms", "max_ms")), lat
            assert lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"], (target, lat)
            assert lat["p50_ms"] < 1000.0, (target, direction, lat)  # sanity, not a target
        assert run["server_cpu_us_per_frame"] > 0, target
        assert run["server_rss_idle_bytes"] > 0 and run["server_rss_bytes"] > 0, target

    # Both callbridges relayed most audio on the compiled fast path: the revision's module
    # was built in its worktree.
    if fast_path.COMPILED:
        for target in ("callbridge", revision):
            counters = runs[target]["server_log"]["bridge_counters"]
            assert counters["fast_path_frames"] > counters["frames_to_agent"] // 2, target

    # callbridge ran with its metrics on, scraped in the window as Prometheus would.
    ours = runs["callbridge"]
    assert ours["metrics_scrapes"] >= 1 and ours["metrics_scrape_failures"] == [], ours
    assert ours["metrics_bytes"] > 0
    assert runs["picows"]["metrics_scrapes"] is None  # the relays have none

    # The whole bridge ran, not just the relay: barge-ins, tool calls, clean endings; every
    # stream served by picows (one on aiohttp would have logged a warning).
    for name in ("callbridge", revision):
        ours = runs[name]
        assert "stream.on_reused_connection" not in ours["server_log"]["notable"], ours
        events = ours["events"]
        assert events["barge_ins"] > 0 and events["clears"] > 0, (name, events)
        assert events["tool_calls"] > 0 and events["tool_results"] > 0, (name, events)
        assert events["session_ends"] == 20, (name, events)
        assert ours["late_audio_leaked"] == 0, ours
        assert ours["server_log"]["lines_by_level"].get("error", 0) == 0, ours["server_log"]

    summary = doc["summary"]
    assert set(summary["capacity"]) == {"callbridge", revision, "aiohttp", "picows"}
    for key in ("ratios_callbridge_to",):
        for base in ("aiohttp", "picows", revision):
            ratio = summary[key][base]["cpu_per_frame_ratio"]
            assert ratio is not None and ratio > 0, summary
    assert f"callbridge / {revision}: CPU per frame x" in stdout
    worktrees = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True, check=True
    )
    assert "callbridge-bench-rev-" not in worktrees.stdout  # the checkout was removed


def _run(target: str, calls: int, us_per_frame: float | None, passed: bool = True) -> Any:
    return {
        "target": target,
        "calls": calls,
        "server_cpu_us_per_frame": us_per_frame,
        "passed": passed,
        "calls_at_80pct_cpu": 100,
        "server_cpu_percent": 10.0,
        "harness_limited": False,
    }


def test_rounds_are_summarized_by_their_median_and_a_revision_is_a_baseline() -> None:
    from bench.report import median_run, summarize

    rounds = [_run("callbridge", 200, us) for us in (14.0, 11.0, 12.0)]
    assert median_run(rounds)["server_cpu_us_per_frame"] == 12.0
    # An even count takes the lower middle; a run without the figure counts as the worst.
    assert median_run([*rounds, _run("callbridge", 200, None)])["server_cpu_us_per_frame"] == 12.0

    runs = [
        *rounds,
        *(_run("callbridge@abc1234", 200, us) for us in (16.0, 15.0, 30.0)),
        *(_run("picows", 200, us) for us in (8.0, 6.0, 7.5)),
    ]
    summary = summarize(runs, ["callbridge", "callbridge@abc1234", "picows"])
    ratios = summary["ratios_callbridge_to"]
    assert ratios["callbridge@abc1234"]["cpu_per_frame_ratio"] == round(12.0 / 16.0, 2)
    assert ratios["picows"]["cpu_per_frame_ratio"] == round(12.0 / 7.5, 2)
    assert "aiohttp" in ratios and ratios["aiohttp"]["cpu_per_frame_ratio"] is None


def test_rounds_also_give_the_ratio_within_each_round_and_its_median() -> None:
    from bench.report import footer, summarize

    def run(target: str, us: float, round_index: int) -> Any:
        return {**_run(target, 200, us), "round": round_index}

    # The machine drifts: each server's median run comes from a different round, and the
    # ratio of those (12 / 7.5) is not the one any round measured.
    ours = [run("callbridge", us, i) for i, us in enumerate((14.0, 11.0, 12.0, 9.0))]
    theirs = [run("picows", us, i) for i, us in enumerate((10.0, 10.0, 7.5, 9.0))]
    summary = summarize([*ours, *theirs], ["callbridge", "picows"])
    ratio = summary["ratios_callbridge_to"]["picows"]
    assert ratio["cpu_per_frame_ratio_by_round"] == {"200": [1.4, 1.1, 1.6, 1.0]}
    assert ratio["cpu_per_frame_ratio_round_median"] == {"200": 1.25}
    assert ratio["cpu_per_frame_ratio"] == round(11.0 / 9.0, 2)  # the medians' ratio, as before
    text = footer([*ours, *theirs], summary)
    assert "within each round at 200 calls: x1.40 x1.10 x1.60 x1.00; median x1.25" in text
    # One round: no such line.
    single = summarize([ours[0], theirs[0]], ["callbridge", "picows"])
    assert "cpu_per_frame_ratio_by_round" not in single["ratios_callbridge_to"]["picows"]


def test_a_revision_server_runs_the_code_of_its_checkout(tmp_path: Path) -> None:
    from bench.sweep import _server_env, parse_args

    env = _server_env("callbridge@abc1234", 1, "ws://x", 1, tmp_path, source=tmp_path / "rev")
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "rev" / "src")
    assert parse_args(["--against", "HEAD~1", "--rounds", "3"]).rounds == 3
    for bad in ("0", "21"):
        with pytest.raises(SystemExit):
            parse_args(["--rounds", bad])


def test_hot_path_measures_the_bridge_relaying_every_frame(tmp_path: Path) -> None:
    _, figures = run_bench(tmp_path, ["bench.hot_path", "--frames", "500"], timeout=120)
    keys = {f"{path}_{way}" for path in ("callbridge", "relay") for way in ("up", "down")}
    assert set(figures["wall_ns_per_frame"]) == keys
    assert all(ns > 0 and math.isfinite(ns) for ns in figures["wall_ns_per_frame"].values())
    sent = figures["sent_per_frame"]
    # Every frame went through (none dropped by a rate limit or a state the call was not
    # meant to be in); callbridge's replies carry a mark every 2000 bytes (300-byte chunks).
    assert sent["relay_up"] == sent["relay_down"] == sent["callbridge_up"] == 1.0
    assert 1.1 < sent["callbridge_down"] < 1.2, sent
    # Counted, not timed: the bridge runs more Python than a bare relay, and not absurdly so.
    bytecodes = figures["bytecodes_per_frame"]
    assert set(bytecodes) == keys
    for way in ("up", "down"):
        assert 20 < bytecodes[f"relay_{way}"] < bytecodes[f"callbridge_{way}"] < 2000, bytecodes


def test_server_env_is_parsed_and_a_malformed_one_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.sweep import parse_args

    args = parse_args(["--server-env", "LOG_LEVEL=WARNING", "--server-env", "X=a=b"])
    assert args.server_env == {"LOG_LEVEL": "WARNING", "X": "a=b"}
    assert parse_args([]).server_env == {}
    for bad in ("LOG_LEVEL", "=x"):
        with pytest.raises(SystemExit):
            parse_args(["--server-env", bad])
        assert "NAME=VALUE" in capsys.readouterr().err


# A callgrind dump as valgrind writes it (names compressed after their first use): main ->
# the loop, which runs one frame callback (into libpython and msgspec) and one ready
# callback; one thread; one greenlet; and a cost outside all of them.
_DUMP = """\
version: 1
creator: callgrind-3.19.0
events: Ir
summary: 900

ob=(1) /usr/lib/libc.so.6
fl=(1) ???
fn=(1) main
1 10
cob=(2) /usr/lib/python3.11/site-packages/uvloop/loop.cpython-311.so
cfn=(2) __pyx_f_6uvloop_4loop_4Loop__run
calls=1 0
1 1000

ob=(2)
fn=(2)
1 50
cfn=(3) __pyx_f_6uvloop_4loop___on_uvpoll_event
calls=1 0
1 700
cfn=(5) __pyx_f_6uvloop_4loop_4Loop__on_idle
calls=1 0
1 250

fn=(3)
1 100
cob=(3) /site-packages/picows/picows.cpython-311.so
cfn=(4) __pyx_f_6picows_6picows_10WSProtocol__invoke_on_ws_frame
calls=1 0
1 600

ob=(3)
fn=(4)
1 20
cob=(4) /usr/lib/libpython3.11.so.1.0
cfn=(6) _PyEval_EvalFrameDefault
calls=1 0
1 480
cob=(5) /site-packages/msgspec/_core.cpython-311.so
cfn=(7) json_decode
calls=1 0
1 100

ob=(4)
fn=(6)
1 480
ob=(5)
fn=(7)
1 100
ob=(2)
fn=(5)
1 250

ob=(1)
fn=(8) start_thread
1 40
fn=(9) greenlet::UserGreenlet::inner_bootstrap(_greenlet*, _object*)
1 30
fn=(10) somewhere_else
+1 20
"""


def test_a_callgrind_dump_is_split_by_where_instructions_start_and_are_spent(
    tmp_path: Path,
) -> None:
    from bench.instructions import Dump, per_frame

    path = tmp_path / "callgrind.out.1"
    path.write_text(_DUMP)
    dump = Dump(path)
    assert dump.total == 10 + 50 + 100 + 20 + 480 + 100 + 250 + 40 + 30 + 20
    assert dump.inclusive["__pyx_f_6uvloop_4loop_4Loop__run"] == 1000
    assert dump.summary == 900  # what callgrind counted; the lines add up to more
    figures = per_frame(dump, frames=10)
    assert figures["instructions_per_frame"] == 90
    assert figures["cost_lines_per_frame"] == round(dump.total / 10) == 110
    assert figures["where_started"] == {
        "frame_callbacks": 60,  # 600 / 10 frames
        "socket_io": 10,  # the poll event's 700, less the frame callbacks' 600
        "ready_callbacks": 25,
        "timer_callbacks": 0,
        "other_threads": 4,
        "greenlets": 3,
        "loop_other": 5,  # the loop's 1000, less poll events and ready callbacks
        "unplaced": 3,  # main's own 10 and somewhere_else's 20
    }
    assert figures["where_spent"] == {
        "libpython": 48,
        "uvloop": 40,
        "msgspec": 10,
        "libc": 10,
        "picows": 2,
    }
    with pytest.raises(ValueError, match="no frames"):
        per_frame(dump, frames=0)
    # A dump without a summary line: the sum of its cost lines is all there is.
    path.write_text(_DUMP.replace("summary: 900\n", ""))
    assert per_frame(Dump(path), frames=10)["instructions_per_frame"] == 110


def test_a_simulated_cpu_dump_gives_misses_and_mispredictions_per_frame(tmp_path: Path) -> None:
    from bench.instructions import Dump, per_frame

    path = tmp_path / "callgrind.out.1"
    path.write_text(
        _DUMP.replace("events: Ir\n", "events: Ir Dr I1mr D1mr DLmr Bc Bcm\n").replace(
            "summary: 900\n", "summary: 900 300 40 25 3 120 7\n"
        )
    )
    figures = per_frame(Dump(path), frames=10)
    assert figures["instructions_per_frame"] == 90
    assert figures["simulated_per_frame"] == {
        "I1mr": 4.0,
        "D1mr": 2.5,
        "DLmr": 0.3,
        "Bc": 12.0,
        "Bcm": 0.7,
    }
    # Without the simulation: no such figures.
    path.write_text(_DUMP)
    assert "simulated_per_frame" not in per_frame(Dump(path), frames=10)


def test_callgrind_runs_take_few_calls_and_no_waiting(tmp_path: Path) -> None:
    from bench.sweep import parse_args

    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        with pytest.raises(SystemExit):
            parse_args(["--callgrind", str(tmp_path)])
        return
    args = parse_args(["--callgrind", str(tmp_path)])
    assert (args.calls, args.quiet_wait, args.retries, args.keep_going) == ([4], 0.0, 0, True)
    assert parse_args(["--callgrind", str(tmp_path), "--calls", "8"]).calls == [8]
    assert parse_args([]).calls == [50, 100, 200, 300, 400, 600]
    with pytest.raises(SystemExit):
        parse_args(["--callgrind", str(tmp_path), "--profile", str(tmp_path)])


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    shutil.which("valgrind") is None, reason="needs valgrind (apt install valgrind)"
)
def test_callgrind_counts_the_relay_instructions_per_frame(tmp_path: Path) -> None:
    stdout, doc = run_bench(
        tmp_path,
        [
            *("bench", "--callgrind", str(tmp_path / "dumps"), "--servers", "picows"),
            *("--calls", "2", "--duration", "3", "--settle", "0.5"),
        ],
        timeout=150,
    )
    assert "Instructions per relayed frame" in stdout
    (run,) = doc["runs"]
    assert "error" not in run, run.get("error")
    figures = run["instructions"]
    assert figures["frames"] == run["frames_relayed"] > 0
    # The relay does its work in picows's frame callbacks, in Python and msgspec; the
    # bounds are wide (a relayed frame costs ~18k instructions), a sanity check only.
    assert 2_000 < figures["instructions_per_frame"] < 500_000, figures
    started = figures["where_started"]
    assert started["frame_callbacks"] > started["ready_callbacks"], started
    assert figures["where_spent"]["libpython"] > 0 and figures["where_spent"]["msgspec"] > 0
    assert Path(run["callgrind_dump"]).exists()
    assert (
        doc["summary"]["instructions_per_frame"]["picows"]["2"] == figures["instructions_per_frame"]
    )


def test_rounds_alternate_the_order_of_the_servers() -> None:
    from bench.sweep import round_order

    servers = ["callbridge", "callbridge@abc", "picows"]
    orders = [round_order(servers, i) for i in range(4)]
    assert orders == [servers, servers[::-1], servers, servers[::-1]]
    assert servers == ["callbridge", "callbridge@abc", "picows"]  # not reversed in place


def test_ports_are_distinct_and_a_taken_port_is_recognised() -> None:
    from bench.sweep import _free_ports, _port_taken

    for _ in range(20):
        ports = _free_ports(2)
        assert len(set(ports)) == 2 and all(p > 0 for p in ports)
    clash = {
        "server_log": {
            "non_json_samples": ["callbridge: cannot listen on 127.0.0.1:5: Address already in use"]
        }
    }
    assert _port_taken(clash)
    assert not _port_taken({"server_log": {"non_json_samples": []}})
    assert not _port_taken({"error": "the harness crashed"})


def test_redis_mode_runs_callbridge_with_redis_beside_it_and_counts_round_trips(
    tmp_path: Path,
) -> None:
    from bench.sweep import _redis_figures, _server_env, parse_args

    args = parse_args(["--redis", "--servers", "callbridge,picows"])
    assert args.servers == ["callbridge", "callbridge-redis", "picows"]
    env = _server_env("callbridge-redis", 1, "ws://x", 10, tmp_path, redis_url="redis://r:1/2")
    assert env["REDIS_URL"] == "redis://r:1/2"
    assert env["CALLBRIDGE_REDIS_PREFIX"].startswith("bench-")
    assert "REDIS_URL" not in _server_env("callbridge", 1, "ws://x", 10, tmp_path)
    result: dict[str, Any] = {
        "server_log": {
            "calls_ended_by_reason": {"caller-hangup": 10},
            "bridge_counters": {"frames_from_twilio": 900, "frames_to_twilio": 1100},
            "redis_operations": {"announce": 10, "admit": 10, "end": 10, "heartbeat": 4},
        }
    }
    _redis_figures(result)
    assert result["redis_operations_per_call"] == 3.0
    assert result["redis_operations_per_frame"] == 34 / 2000
