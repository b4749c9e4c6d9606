"""The orchestrator behind `python -m bench`: one fresh server process per (server, N).

For every N of the sweep and every server (callbridge, then the two minimal relays) it
starts the server pinned to core 0 (`taskset -c 0`) and the harness pinned to core 1
(`taskset -c 1`), waits for the harness's JSON, stops the server, and reads the server's
log for warnings and errors. A fresh server per run keeps RSS and CPU figures clean.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from bench import instructions, report
from bench.machine import machine_facts

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("callbridge", "aiohttp", "picows")
# Not in the default sweep (--servers): callbridge with Media Streams on aiohttp (the default
# before one port served them from picows), and with aiohttp both ways.
# And callbridge sharing its live state through Redis (`--redis`).
EXTRA_TARGETS = ("callbridge-aiohttp-streams", "callbridge-aiohttp", "callbridge-redis")
# Redis round trips a call makes (the others are the instance's heartbeat, by the clock).
PER_CALL_REDIS_OPERATIONS = (
    "replay",
    "sid",
    "holder",
    "announce",
    "share_setup",
    "setup",
    "admit",
    "feed",  # batches of live-feed entries (the console on)
    "end",
)
DEFAULT_CALLS = (50, 100, 200, 300, 400, 600)
AUTH_TOKEN = "bench-auth-token-0123456789abcdef"
PUBLIC_URL = "https://bench.callbridge.invalid"  # never resolved: only signed over
API_TOKEN = "bench-api-token-0123456789abcdef"  # the harness scrapes /metrics with it
SERVER_CORE, HARNESS_CORE = 0, 1
# A run this far past the targets says nothing new at a larger N: skip the rest.
HOPELESS_P99_MS = 200.0
QUIET_PERCENT = 15.0


def _free_ports(count: int) -> list[int]:
    """Ports free just now, all different: each socket is held until all are chosen (two
    picked one after the other can be the same port). Another process may still take one
    before the server binds it: see `_port_taken`."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def _port_taken(result: dict[str, Any]) -> bool:
    """The server could not listen: its port was taken between our choice and its bind."""
    samples = result.get("server_log", {}).get("non_json_samples", [])
    return any("Address already in use" in line for line in samples)


def _pinned(core: int, cmd: list[str], pin: bool) -> list[str]:
    if pin and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def _server_command(target: str, port: int, agent_url: str, profile: Path | None) -> list[str]:
    python = [sys.executable]
    if profile is not None:
        python += ["-m", "cProfile", "-o", str(profile)]
    if target.startswith("callbridge"):
        return [*python, "-m", "callbridge.cli", "serve"]
    module = {"aiohttp": "bench.relay_aiohttp", "picows": "bench.relay_picows"}[target]
    return [*python, "-m", module, "--port", str(port), "--agent-url", agent_url]


def _profile_top(path: Path, limit: int = 15) -> list[str]:
    """The functions with the most time of their own, from a cProfile dump."""
    if not path.exists():
        return [f"(no profile written to {path})"]
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(limit)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return [line for line in lines[start:] if line.strip()]


def _server_env(
    target: str,
    port: int,
    agent_url: str,
    calls: int,
    workdir: Path,
    database_url: str | None = None,
    source: Path | None = None,
    redis_url: str | None = None,
) -> dict[str, str]:
    """`source`: a checkout whose `src/callbridge` the server runs instead of this one's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLBRIDGE_", "TWILIO_"))}
    first = [str(source / "src")] if source is not None else []
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [*first, str(REPO), env.get("PYTHONPATH")])),
        HOST="127.0.0.1",
        PORT=str(port),
        PUBLIC_URL=PUBLIC_URL,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        ASSEMBLYAI_API_KEY="bench-key",
        ASSEMBLYAI_AGENT_URL=agent_url,
        MAX_CALLS=str(calls + 50),
        CALLBRIDGE_BOT="callbridge.bot:bot",  # has the generate_random_number tool
        LOG_LEVEL="INFO",  # production's default: per-call lines, none per frame
        LOG_FORMAT="json",
        DATABASE_URL=database_url or f"sqlite:///{workdir / 'bench.db'}",
        CALLBRIDGE_SPOOL_PATH=str(workdir / "spool.jsonl"),
        DRAIN_SECONDS="5",  # every call is hung up before the stop: nothing to drain
        CALLBRIDGE_API_TOKEN=API_TOKEN,  # /metrics on, scraped as Prometheus would
    )
    if target in ("callbridge-aiohttp-streams", "callbridge-aiohttp"):
        env["CALLBRIDGE_MEDIA_STREAM_TRANSPORT"] = "aiohttp"
    if target == "callbridge-aiohttp":  # aiohttp both ways
        env["CALLBRIDGE_AGENT_TRANSPORT"] = "aiohttp"
    if target == "callbridge-redis":
        env["REDIS_URL"] = redis_url or "redis://127.0.0.1:6379/0"
        env["CALLBRIDGE_REDIS_PREFIX"] = f"bench-{workdir.name}"  # a run's keys are its own
    return env


# Per-call counts in callbridge's `call.ended` log line (and, at LOG_LEVEL=DEBUG, the
# fast path's in `call.fast_path`), summed over the run.
_BRIDGE_COUNTERS = (
    "frames_from_twilio",
    "frames_to_agent",
    "frames_to_twilio",
    "rate_limited_frames",
    "fast_path_frames",
    "rejected_frames",
    "resumes",
)


def _log_summary(path: Path) -> dict[str, Any]:
    """Counts of the server's log lines by level, and its warning/error events."""
    levels: Counter[str] = Counter()
    notable: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    ended: Counter[str] = Counter()
    counters: Counter[str] = Counter()
    redis: Counter[str] = Counter()
    other: list[str] = []
    with contextlib.suppress(OSError), path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                if line.strip():
                    other.append(line.strip()[:200])
                continue
            if not isinstance(entry, dict):
                continue
            level = str(entry.get("level", "?"))
            levels[level] += 1
            if level in ("warning", "error", "critical"):
                notable[f"{level}:{entry.get('event')}"] += 1
            event = entry.get("event")
            if event == "call.ended":
                # The bridge's own per-call counts: a cross-check on the harness's.
                ended[str(entry.get("reason"))] += 1
                for reason, count in (entry.get("dropped") or {}).items():
                    dropped[reason] += int(count)
            if event == "shared_state.stopped":
                for kind, count in (entry.get("operations") or {}).items():
                    redis[str(kind)] += int(count)
            if event in ("call.ended", "call.fast_path"):
                for key in _BRIDGE_COUNTERS:
                    value = entry.get(key)
                    if isinstance(value, int):
                        counters[key] += value
    return {
        "lines_by_level": dict(levels),
        "notable": dict(notable.most_common(8)),
        "calls_ended_by_reason": dict(ended),
        "bridge_dropped_frames": dict(dropped),
        "bridge_counters": dict(counters),
        **({"redis_operations": dict(redis)} if redis else {}),
        "non_json_lines": len(other),
        "non_json_samples": other[:3],
    }


def _redis_figures(result: dict[str, Any]) -> None:
    """With Redis on: its round trips per call (at set-up and end) and per relayed frame."""
    operations = result["server_log"].get("redis_operations")
    if not operations:
        return
    calls = sum(result["server_log"].get("calls_ended_by_reason", {}).values())
    per_call = sum(operations.get(kind, 0) for kind in PER_CALL_REDIS_OPERATIONS)
    frames = sum(
        result["server_log"]["bridge_counters"].get(k, 0)
        for k in ("frames_from_twilio", "frames_to_twilio")
    )
    result["redis_operations_per_call"] = round(per_call / calls, 2) if calls else None
    result["redis_operations_by_kind"] = operations
    total = sum(operations.values())
    result["redis_operations_per_frame"] = round(total / frames, 6) if frames else None


def run_one(target: str, calls: int, args: argparse.Namespace) -> dict[str, Any]:
    server_port, agent_port = _free_ports(2)
    agent_url = f"ws://127.0.0.1:{agent_port}/v1/ws"
    with tempfile.TemporaryDirectory(prefix="callbridge-bench-") as tmp:
        workdir = Path(tmp)
        server_log = workdir / "server.log"
        env = _server_env(
            target,
            server_port,
            agent_url,
            calls,
            workdir,
            args.database_url,
            args.revision_trees.get(target),
            args.redis_url,
        )
        if target.startswith("callbridge"):
            env.update(args.server_env)
        profile = None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            profile = (args.profile / f"{target}-{calls}.prof").resolve()
        command = _server_command(target, server_port, agent_url, profile)
        dump_prefix = None
        if args.callgrind is not None:
            args.callgrind.mkdir(parents=True, exist_ok=True)
            dump_prefix = (args.callgrind / f"{target}-{calls}").resolve()
            command = [
                "valgrind",
                "--tool=callgrind",
                *(["--cache-sim=yes", "--branch-sim=yes"] if args.simulate_cpu else []),
                f"--callgrind-out-file={dump_prefix}.%p",
                *command,
            ]
        with server_log.open("wb") as log:
            server = subprocess.Popen(
                _pinned(SERVER_CORE, command, args.pin),
                cwd=workdir,  # no stray .env, and the server's files land in the temp dir
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        harness_cmd = [
            sys.executable,
            "-m",
            "bench.harness",
            "--target",
            "callbridge" if target.startswith(report.REVISION_PREFIX) else target,
            "--server-port",
            str(server_port),
            "--server-pid",
            str(server.pid),
            "--agent-port",
            str(agent_port),
            "--calls",
            str(calls),
            "--duration",
            str(args.duration),
            "--settle",
            str(args.settle),
            "--ramp-rate",
            str(args.ramp_rate),
            "--public-url",
            PUBLIC_URL,
            "--auth-token",
            AUTH_TOKEN,
            "--api-token",
            API_TOKEN,
            *(["--callgrind"] if dump_prefix is not None else []),
            *(["--console"] if args.console else []),
        ]
        budget = 90 + calls / args.ramp_rate + args.settle + args.duration
        if dump_prefix is not None:
            budget += 600  # start-up and the window, some 50x slower
        result: dict[str, Any]
        try:
            done = subprocess.run(
                _pinned(HARNESS_CORE, harness_cmd, args.pin),
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=budget,
                check=False,
            )
            lines = done.stdout.strip().splitlines()
            if done.returncode == 0 and lines:
                result = json.loads(lines[-1])
                result["target"] = target
            else:
                stderr = done.stderr.strip().splitlines() or ["(no output)"]
                result = {
                    "target": target,
                    "calls": calls,
                    "error": f"harness exited {done.returncode}: {stderr[-1][:300]}",
                    "harness_stderr_tail": stderr[-15:],
                }
        except subprocess.TimeoutExpired:
            result = {"target": target, "calls": calls, "error": f"harness ran over {budget:.0f} s"}
        finally:
            _stop(server)
        result["server_exit_code"] = server.returncode
        if dump_prefix is not None and "error" not in result:
            _read_instructions(result, Path(f"{dump_prefix}.{server.pid}.1"))
        result["server_log"] = _log_summary(server_log)
        _redis_figures(result)
        if "error" in result:
            tail = server_log.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
            result["server_log_tail"] = tail
        if profile is not None:
            result["profile"] = str(profile)
            result["profile_top"] = _profile_top(profile)
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(server_log, args.keep_logs / f"{target}-{calls}.log")
    return result


def _read_instructions(result: dict[str, Any], dump: Path) -> None:
    """Instructions per relayed frame from the dump the harness asked for at the window's
    end (callgrind numbers it `.1`; the whole process's, at exit, has no suffix)."""
    try:
        result["instructions"] = instructions.per_frame(
            instructions.Dump(dump), int(result["frames_relayed"])
        )
        result["callgrind_dump"] = str(dump)
    except (OSError, ValueError) as exc:
        result["error"] = f"callgrind: {exc}"


def _wait_for_quiet(limit: float) -> tuple[float, list[float]]:
    """Wait (up to `limit` s) until no core is busier than QUIET_PERCENT with others' work.

    Other people's test runs on a shared machine take whole cores for minutes; starting a
    run in a quiet moment costs nothing and makes its numbers mean something.
    """
    began = time.monotonic()
    while True:
        busy = psutil.cpu_percent(interval=1.0, percpu=True)
        if max(busy[:2]) < QUIET_PERCENT or time.monotonic() - began >= limit:
            return time.monotonic() - began, busy


_PORT_RETRIES = 3


def _measure(target: str, calls: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run, repeated (up to --retries times) while it fails in a noisy window."""
    attempts: list[dict[str, Any]] = []
    for attempt in range(1 + args.retries):
        waited, busy = _wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else (0.0, [])
        began = time.monotonic()
        result = run_one(target, calls, args)
        for _ in range(_PORT_RETRIES):  # not a measurement at all: run it again, at once
            if not _port_taken(result):
                break
            print(f"{target:<18} {calls:>5}: its port was taken; once more", flush=True)
            result = run_one(target, calls, args)
        result["wall_seconds"] = round(time.monotonic() - began, 1)
        result["waited_for_quiet_seconds"] = round(waited, 1)
        result["cores_busy_before_percent"] = busy
        report.annotate(result)
        attempts.append(result)
        last = result["passed"] or not result["noisy"] or attempt == args.retries
        print(report.row(result) + ("" if last else "  (noisy: once more)"), flush=True)
        if result.get("profile_top"):
            print("\n".join(f"    {line}" for line in result["profile_top"]), flush=True)
        if last:
            break
    # The least disturbed attempt is the best estimate of the server on its own.
    best = min(attempts, key=report.noise)
    if len(attempts) > 1:
        best["kept_attempt"] = attempts.index(best) + 1
        print(f"{'':>17}kept attempt {best['kept_attempt']} (the least noisy)", flush=True)
    best["attempts"] = [
        {
            "passed": a["passed"],
            "noise_percent": report.noise(a),
            "p99_up_ms": a.get("latency_up", {}).get("p99_ms"),
            "p99_down_ms": a.get("latency_down", {}).get("p99_ms"),
        }
        for a in attempts
    ]
    return best


@contextlib.contextmanager
def _revision_trees(args: argparse.Namespace) -> Iterator[None]:
    """With `--against REV`: check REV out in a temporary git worktree and add callbridge as
    of REV to the servers, right after callbridge, so that each round runs both in turn."""
    if args.against is None:
        yield
        return
    git = ["git", "-C", str(REPO)]
    try:
        short = subprocess.run(
            [*git, "rev-parse", "--short", "--verify", args.against + "^{commit}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            f"bench: --against {args.against!r}: not a git revision here ({exc})"
        ) from None
    target = report.REVISION_PREFIX + short
    with tempfile.TemporaryDirectory(prefix="callbridge-bench-rev-") as tmp:
        tree = Path(tmp) / short
        subprocess.run(
            [*git, "worktree", "add", "--detach", "--quiet", str(tree), short],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            _build_fast_path(tree)
            args.revision_trees[target] = tree
            at = args.servers.index("callbridge") + 1 if "callbridge" in args.servers else 0
            args.servers.insert(at, target)
            yield
        finally:
            subprocess.run(
                [*git, "worktree", "remove", "--force", str(tree)],
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )


def _build_fast_path(tree: Path) -> None:
    """A worktree has the sources only: build its compiled fast path, if it has one, as
    `make install` does for this checkout (else that revision would run without it)."""
    if not (tree / "src" / "callbridge" / "fast_path" / "_compiled.pyx").exists():
        return
    done = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not list((tree / "src").rglob("_compiled*.so")):
        print(
            f"bench: could not build {tree.name}'s compiled fast path; it runs without it\n"
            + done.stderr[-2000:],
            file=sys.stderr,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # graceful: the server ends live calls and exits
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _parse_calls(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 50,100: {text!r}") from None
    if not values or values[0] < 1 or values[-1] > 5000:
        raise argparse.ArgumentTypeError("call counts must be between 1 and 5000")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure what the bridge adds to a call, against two minimal relays.",
    )
    p.add_argument(
        "--calls",
        type=_parse_calls,
        default=None,
        help="simultaneous calls per run, comma-separated (default 50,100,200,300,400,600; "
        "4 with --callgrind)",
    )
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    p.add_argument("--settle", type=float, default=2.0, help="seconds between ramp and window")
    p.add_argument("--ramp-rate", type=float, default=100.0, help="new calls per second")
    p.add_argument(
        "--servers",
        type=lambda s: [t for t in s.split(",") if t],
        default=list(TARGETS),
        help="which servers to run (default callbridge,aiohttp,picows)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one small run per server (20 calls, 5 s): checks the harness, not capacity",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=None,
        help="repeat a run that failed while other processes used our cores (default 1)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="seconds to wait for a quiet machine before each run (default 20)",
    )
    p.add_argument("--keep-going", action="store_true", help="do not skip N past a clear fail")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument(
        "--profile",
        type=Path,
        help="run each server under cProfile, dumps in this folder (distorts the timings)",
    )
    p.add_argument("--keep-logs", type=Path, help="copy each server's log into this folder")
    p.add_argument(
        "--callgrind",
        type=Path,
        metavar="DIR",
        help="run each server under valgrind's callgrind, dumps in DIR, and report "
        "instructions per relayed frame: exact whatever the machine's load, user space "
        "only; timings and verdicts of such runs mean nothing",
    )
    p.add_argument(
        "--simulate-cpu",
        action="store_true",
        help="with --callgrind: also simulate the caches and the branch predictor, and "
        "report misses and mispredictions per relayed frame (this VM has no hardware "
        "counters); slower",
    )
    p.add_argument("--json-out", type=Path, help="default bench-results/bench-<timestamp>.json")
    p.add_argument(
        "--database-url",
        help="callbridge's DATABASE_URL (default: a fresh SQLite file per run), e.g. "
        "postgresql://postgres@127.0.0.1/test?options=-csearch_path%%3Dbench",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for callbridge (repeatable), e.g. LOG_LEVEL=WARNING to see "
        "what a part of the bridge costs; recorded in the JSON",
    )
    p.add_argument(
        "--against",
        metavar="REV",
        help="also run callbridge as of this git revision (a temporary worktree), interleaved "
        "with the others, and print callbridge's ratio to it: what a change did",
    )
    p.add_argument(
        "--redis",
        action="store_true",
        help="also run callbridge with its live state in Redis (REDIS_URL), in the same "
        "rounds: CPU per frame against Redis off, and Redis round trips per call",
    )
    p.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="the Redis of --redis (default redis://127.0.0.1:6379/0)",
    )
    p.add_argument(
        "--console",
        action="store_true",
        help="callbridge runs with the operator console's live page open (its event feed "
        "read through the window): what watching costs",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every (server, N) this many times, interleaved; the summary takes each "
        "one's median CPU per frame (default 1)",
    )
    args = p.parse_args(argv)
    if not 1 <= args.rounds <= 20:
        p.error("--rounds must be between 1 and 20")
    bad = [item for item in args.server_env if "=" not in item or item.startswith("=")]
    if bad:
        p.error(f"--server-env takes NAME=VALUE, got {bad[0]!r}")
    args.server_env = dict(item.split("=", 1) for item in args.server_env)
    if args.redis and "callbridge-redis" not in args.servers:
        at = args.servers.index("callbridge") + 1 if "callbridge" in args.servers else 0
        args.servers.insert(at, "callbridge-redis")
    unknown = set(args.servers) - set(TARGETS) - set(EXTRA_TARGETS)
    if unknown:
        p.error(f"unknown servers: {', '.join(sorted(unknown))}")
    args.revision_trees = {}  # server name -> checkout it runs (--against)
    if args.simulate_cpu and args.callgrind is None:
        p.error("--simulate-cpu goes with --callgrind DIR")
    if args.callgrind is not None:
        if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            p.error("--callgrind needs valgrind on PATH (Debian: apt install valgrind)")
        if args.profile is not None:
            p.error("--callgrind and --profile do not mix")
        # Instructions do not depend on a quiet machine or on p99: no waiting, no retries.
        args.calls = args.calls or [4]
        args.quiet_wait = 0.0 if args.quiet_wait is None else args.quiet_wait
        args.retries = 0 if args.retries is None else args.retries
        args.keep_going = True
    args.calls = args.calls or list(DEFAULT_CALLS)
    if args.quick:
        args.calls, args.duration, args.settle = [20], 5.0, 1.0
    # --quick checks the harness, not capacity: no waiting, no retries (it must stay short).
    if args.retries is None:
        args.retries = 0 if args.quick else 1
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 20.0
    return args


def round_order(servers: list[str], round_index: int) -> list[str]:
    """The servers in the order round `round_index` runs them: every other round reversed,
    so that a drift within a round (a neighbour arriving) weighs on each server alike, not
    always on whichever goes first."""
    return list(servers) if round_index % 2 == 0 else servers[::-1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pin and (os.cpu_count() or 1) < 2:
        print("bench: one CPU only; running unpinned (results mean little)", file=sys.stderr)
        args.pin = False
    if args.pin:
        # The orchestrator sleeps through the runs, but keep it off the server's core.
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {HARNESS_CORE})
    started = datetime.datetime.now(datetime.UTC)
    facts = machine_facts()
    runs: list[dict[str, Any]] = []
    given_up: set[str] = set()
    with _revision_trees(args):
        print(report.header(facts, args), flush=True)
        for calls in args.calls:
            for round_index in range(args.rounds):  # interleaved: the machine drifts
                for target in round_order(args.servers, round_index):
                    if target in given_up:
                        continue
                    result = _measure(target, calls, args)
                    result["round"] = round_index
                    runs.append(result)
                    if not args.keep_going and report.hopeless(result, HOPELESS_P99_MS):
                        given_up.add(target)
    summary = report.summarize(runs, args.servers)
    print(report.footer(runs, summary), flush=True)
    out = args.json_out or Path("bench-results") / f"bench-{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "started": started.isoformat(timespec="seconds"),
        "machine": facts,
        "config": {
            "calls": args.calls,
            "duration_seconds": args.duration,
            "settle_seconds": args.settle,
            "ramp_rate": args.ramp_rate,
            "retries": args.retries,
            "quiet_wait_seconds": args.quiet_wait,
            "servers": args.servers,
            "quick": args.quick,
            "pinned": args.pin,
            "profiled": args.profile is not None,
            "callgrind": args.callgrind is not None,
            "server_env": args.server_env,
            "redis_url": args.redis_url if "callbridge-redis" in args.servers else None,
            "console": args.console,
            "rounds": args.rounds,
            "against": args.against,
            "server_core": SERVER_CORE,
            "harness_core": HARNESS_CORE,
        },
        "method": report.METHOD,
        "runs": runs,
        "summary": summary,
    }
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"results: {out}", flush=True)
    return 0
