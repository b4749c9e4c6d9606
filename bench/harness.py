"""One measured run: N simulated calls against one server, in one process.

`python -m bench.harness --target callbridge --calls 100 ...` is started by the
orchestrator (`python -m bench`) pinned to the second core. It hosts both ends: the fake
agent's listening socket and every caller's Media Streams client, on one uvloop loop.
Keeping both ends in one process costs no more CPU than two processes on the same core,
and makes pairing each call with its agent session (and its loss counts) trivial.

Phases: ramp (open calls at `--ramp-rate` per second), wait until every call's audio
reaches the agent, settle, measure for `--duration` seconds (latency samples only from
frames sent inside the window; CPU and frame counts as deltas over it), drain (callers
and agent go quiet; wait until nothing is in flight), count loss, hang up. The result is
one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import psutil
import uvloop
from picows import ws_create_server

from bench.agent import AgentSession, BenchAgent
from bench.callers import Caller, connect_direct, connect_via_webhook
from bench.timing import FRAME_MS, Latencies, Ticker
from callbridge.testing.twilio_simulator import TwilioSimulator

READY_TIMEOUT = 20.0  # seconds after the ramp for every call's audio to reach the agent
WARMUP = 0xFFFF  # the stream number of the warm-up call
DRAIN_MAX = 30.0  # seconds to wait for frames still in flight after both ends go quiet
DRAIN_STALL = 3.0  # ...but no longer than this without any of them arriving


class Harness:
    """State shared by the agent sessions and the callers of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ticker = Ticker()
        self.agent = BenchAgent(self)
        self.calls: list[Caller] = []
        self.warmup: Caller | None = None
        self.recording = False
        self.window_start_ns = 0
        self.quiet = False  # draining: no new audio from either end
        self.lat_up = Latencies()  # Twilio -> agent
        self.lat_down = Latencies()  # agent -> Twilio
        self.rx_up = 0  # frames the agent received (all time)
        self.rx_down = 0  # frames the callers received (all time)
        self.errors: list[str] = []

    def link(self, call_index: int, session: AgentSession) -> None:
        if call_index == WARMUP and self.warmup is not None:
            self.warmup.session = session
        elif 0 <= call_index < len(self.calls):
            self.calls[call_index].session = session
        else:
            self.errors.append(f"agent: audio stamped with unknown call {call_index}")


async def _wait_for_server(port: int, proc: psutil.Process, deadline: float) -> None:
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        except OSError:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                raise RuntimeError("the server exited during start-up") from None
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start listening") from None
            await asyncio.sleep(0.05)


_RSS_TRACE_SECONDS = 30.0
# callbridge runs with its metrics on: scraped as often as Prometheus does by default.
_SCRAPE_SECONDS = 15.0
_SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=5.0)


class _Scraper:
    """GET /metrics every `_SCRAPE_SECONDS` of the window (callbridge only). A server that
    has no /metrics (an older revision, `--against`) is noted, not a failure."""

    def __init__(self, base: str, token: str) -> None:
        self._url = f"{base}/metrics"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._next = 0.0
        self.scrapes = 0
        self.failures: list[str] = []
        self.bytes = 0

    async def maybe(self, elapsed: float) -> None:
        if elapsed < self._next:
            return
        self._next = elapsed + _SCRAPE_SECONDS
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(self._url, headers=self._headers, timeout=_SCRAPE_TIMEOUT) as response,
            ):
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures.append(type(exc).__name__)
            return
        if response.status != 200:
            self.failures.append(f"HTTP {response.status}")
            return
        self.scrapes += 1
        self.bytes = len(body)


class _LivePage:
    """An operator's live page (callbridge only): logs in to /console, then reads its event
    feed from before the calls start until the window closes, as a browser would."""

    def __init__(self, base: str, token: str) -> None:
        self._base = base
        self._token = token
        self.events = 0
        self.bytes = 0
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _read(self) -> None:
        jar = aiohttp.CookieJar(unsafe=True)  # the session cookie of a loopback address
        try:
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                async with http.post(
                    f"{self._base}/console/login",
                    data={"token": self._token},
                    headers={"Origin": self._base},
                    allow_redirects=False,
                ) as response:
                    morsel = response.cookies.get("callbridge_console")
                    if response.status != 303 or morsel is None:
                        self.error = f"log-in: HTTP {response.status}"
                        return
                cookie = {"Cookie": f"callbridge_console={morsel.value}"}
                async with http.get(f"{self._base}/console/events", headers=cookie) as feed:
                    if feed.status != 200:
                        self.error = f"feed: HTTP {feed.status}"
                        return
                    async for line in feed.content:
                        self.bytes += len(line)
                        self.events += line.startswith(b"event: ")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.error = type(exc).__name__


def _second_half_growth(trace: list[tuple[float, int]], rss_end: int) -> int | None:
    if len(trace) < 3:
        return None
    middle = trace[-1][0] / 2
    at_middle = next(rss for t, rss in trace if t >= middle)
    return rss_end - at_middle


async def _callgrind_control(command: str, pid: int) -> None:
    """Zero or dump the instruction counts of a server running under callgrind."""
    proc = await asyncio.create_subprocess_exec(
        "callgrind_control",
        command,
        str(pid),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"callgrind_control {command} {pid}: {err.decode()[-300:]}")


def _cpu_seconds(proc: psutil.Process) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads."""
    t = proc.cpu_times()
    return float(t.user), float(t.system)


_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _core_breakdown(before: Any, after: Any) -> dict[str, float]:
    """Where one core's time went between two cpu_times samples, in percent.

    `busy` is everything but idle: our process, other processes, interrupts, and `steal`
    (the hypervisor running someone else on our virtual CPU).
    """
    delta = {f: getattr(after, f, 0.0) - getattr(before, f, 0.0) for f in _CPU_FIELDS}
    total = sum(delta.values())
    if total <= 0:
        return {**dict.fromkeys(_CPU_FIELDS, 0.0), "busy": 0.0}
    share = {f: round(100.0 * v / total, 1) for f, v in delta.items()}
    share["busy"] = round(100.0 * (total - delta["idle"] - delta["iowait"]) / total, 1)
    return share


def _in_flight(h: Harness) -> tuple[int, int]:
    """Frames sent that have not arrived yet, (caller -> agent, agent -> caller)."""
    up = down = 0
    for c in h.calls:
        s = c.session
        if s is None:
            continue
        up += max(0, (c.chunk - s.rx_first + 1) - s.rx_count)
        down += max(0, s.sent_seq - c.rx_count)
    return up, down


async def _warm_up(
    h: Harness,
    open_call: Callable[[Caller, list[str]], Awaitable[None]],
    errors: list[str],
) -> None:
    """One short call, hung up, before anything is measured."""
    caller = Caller(h, WARMUP, 0)
    h.warmup = caller
    await open_call(caller, errors)
    for _ in range(100):  # up to 5 s for its audio to reach the agent
        if caller.session is not None or caller.closed:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    await caller.hang_up()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(h.agent.all_closed(), 5.0)
    if caller.session is None:
        errors.append("the warm-up call's audio never reached the agent")
    await asyncio.sleep(0.5)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    h = Harness(args)
    loop = asyncio.get_running_loop()
    server = await ws_create_server(
        h.agent.listener, "127.0.0.1", args.agent_port, logger_name="bench.agent"
    )
    server_proc = psutil.Process(args.server_pid)
    me = psutil.Process()
    # Under callgrind the server takes a minute or more to import and start.
    ready_within = 600 if args.callgrind else 30
    await _wait_for_server(args.server_port, server_proc, time.monotonic() + ready_within)

    h.ticker.start()
    simulator = TwilioSimulator(
        f"http://127.0.0.1:{args.server_port}",
        auth_token=args.auth_token,
        public_url=args.public_url,
        record_received=False,
    )
    ws_base = f"ws://127.0.0.1:{args.server_port}"
    rng = random.Random(args.seed)
    setup_errors: list[str] = []

    async def open_call(caller: Caller, errors: list[str]) -> None:
        try:
            if args.target.startswith("callbridge"):
                await connect_via_webhook(caller, simulator, ws_base)
            else:
                await connect_direct(caller, ws_base)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        h.ticker.every_frame(caller.index % FRAME_MS, caller.send_media)

    # One call first, then the idle RSS: the first call loads code (and fills caches) that
    # no later call needs again, which is not memory per call.
    warmup_errors: list[str] = []
    await _warm_up(h, open_call, warmup_errors)
    rss_idle = server_proc.memory_info().rss

    live_page = None
    if args.console and args.target.startswith("callbridge") and args.api_token:
        live_page = _LivePage(f"http://127.0.0.1:{args.server_port}", args.api_token)
        live_page.start()

    ramp_started = time.monotonic()
    tasks = []
    for i in range(args.calls):
        caller = Caller(h, i, rng.randrange(200))
        h.calls.append(caller)
        tasks.append(loop.create_task(open_call(caller, setup_errors)))
        await asyncio.sleep(1.0 / args.ramp_rate)
    await asyncio.gather(*tasks)
    ramp_seconds = time.monotonic() - ramp_started

    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if all(c.session is not None or c.closed or c.transport is None for c in h.calls):
            break
        await asyncio.sleep(0.1)
    live_calls = sum(1 for c in h.calls if c.session is not None and not c.closed)
    await asyncio.sleep(args.settle)

    # --- the measurement window ------------------------------------------------------------
    if args.callgrind:
        await _callgrind_control("--zero", args.server_pid)
    cpu0 = _cpu_seconds(server_proc)
    me0 = _cpu_seconds(me)
    cores0 = psutil.cpu_times(percpu=True)
    rx_up0, rx_down0 = h.rx_up, h.rx_down
    late0 = h.ticker.late_ticks
    h.window_start_ns = time.monotonic_ns()
    h.recording = True
    started = time.monotonic()
    rss_max = 0
    rss_trace: list[tuple[float, int]] = []  # (seconds into the window, RSS): a soak's record
    scraper = None
    if args.target.startswith("callbridge") and args.api_token:
        scraper = _Scraper(f"http://127.0.0.1:{args.server_port}", args.api_token)
    while (left := args.duration - (time.monotonic() - started)) > 0:
        if scraper is not None:
            await scraper.maybe(time.monotonic() - started)
            left = args.duration - (time.monotonic() - started)
        await asyncio.sleep(max(0.0, min(1.0, left)))
        rss = server_proc.memory_info().rss
        rss_max = max(rss_max, rss)
        elapsed = time.monotonic() - started
        if not rss_trace or elapsed - rss_trace[-1][0] >= _RSS_TRACE_SECONDS:
            rss_trace.append((round(elapsed, 1), rss))
    h.recording = False
    window = time.monotonic() - started
    cpu1 = _cpu_seconds(server_proc)
    if args.callgrind:
        await _callgrind_control("--dump", args.server_pid)
    me1 = _cpu_seconds(me)
    cores1 = psutil.cpu_times(percpu=True)
    frames_up, frames_down = h.rx_up - rx_up0, h.rx_down - rx_down0
    late_ticks = h.ticker.late_ticks - late0
    rss_at_n = server_proc.memory_info().rss

    # --- drain: both ends go quiet; wait for what is still in flight -----------------------
    h.quiet = True
    drain_started = time.monotonic()
    progress_at, last = drain_started, (-1, -1)
    while time.monotonic() - drain_started < DRAIN_MAX:
        pending = _in_flight(h)
        if pending == (0, 0):
            break
        if pending != last:
            progress_at, last = time.monotonic(), pending
        elif time.monotonic() - progress_at > DRAIN_STALL:
            break  # nothing arrives any more: what is missing is lost
        await asyncio.sleep(0.1)
    drain_seconds = time.monotonic() - drain_started

    lost_up = lost_down = reordered_up = reordered_down = leaked = 0
    no_audio = dropped = 0
    totals = dict.fromkeys(
        (
            "barge_ins",
            "tool_calls",
            "tool_results",
            "tool_timeouts",
            "late_tool_results",
            "replies",
            "late_sent",
        ),
        0,
    )
    clears = marks = 0
    for c in h.calls:
        if c.transport is None:
            continue  # set-up failed: counted in setup_errors
        dropped += c.closed_by_server
        clears += c.clears
        marks += c.marks
        s = c.session
        if s is None:
            no_audio += 1
            continue
        # The bridge drops caller audio until the agent session is ready (by design), so
        # the caller's stream is counted from the first frame that got through.
        lost_up += max(0, (c.chunk - s.rx_first + 1) - s.rx_count)
        reordered_up += s.rx_reordered
        lost_down += max(0, s.sent_seq - c.rx_count)
        reordered_down += c.rx_reordered
        leaked += c.late_rx
        for key in totals:
            totals[key] += getattr(s, key)

    # --- hang up -----------------------------------------------------------------------------
    h.ticker.clear_periodic()
    await asyncio.gather(*(c.hang_up() for c in h.calls))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(h.agent.all_closed(), 5.0)
    session_ends = sum(1 for s in h.agent.sessions if s.session_end and s.call_index != WARMUP)
    h.ticker.stop()
    await simulator.close()
    server.close()
    if live_page is not None:
        await live_page.stop()

    server_user, server_system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    server_cpu = server_user + server_system
    harness_cpu = sum(me1) - sum(me0)
    frames = frames_up + frames_down
    return {
        "target": args.target,
        "calls": args.calls,
        "live_calls": live_calls,
        "setup_failures": len(setup_errors),
        "setup_errors": sorted(set(setup_errors))[:5],
        "warmup_errors": warmup_errors,
        "calls_without_audio": no_audio,
        "calls_dropped_by_server": dropped,
        "ramp_seconds": round(ramp_seconds, 3),
        "window_seconds": round(window, 3),
        "drain_seconds": round(drain_seconds, 3),
        "latency_up": h.lat_up.summary(),
        "latency_down": h.lat_down.summary(),
        "frames_up": frames_up,
        "frames_down": frames_down,
        "frames_relayed": frames,
        "frames_per_second": frames / window,
        "lost_up": lost_up,
        "lost_down": lost_down,
        "reordered_up": reordered_up,
        "reordered_down": reordered_down,
        "late_audio_leaked": leaked,
        "server_cpu_seconds": server_cpu,
        "server_cpu_percent": 100.0 * server_cpu / window,
        "server_cpu_system_share": server_system / server_cpu if server_cpu else 0.0,
        "server_cpu_us_per_frame": 1e6 * server_cpu / frames if frames else None,
        "server_rss_idle_bytes": rss_idle,
        "server_rss_bytes": rss_at_n,
        "server_rss_max_bytes": max(rss_max, rss_at_n),
        "server_rss_trace": rss_trace,
        # Growth over the window's second half, when the caches have had time to fill.
        "server_rss_growth_second_half_bytes": _second_half_growth(rss_trace, rss_at_n),
        # Clamped: at a tiny N, allocator noise can make the difference negative.
        "server_rss_per_call_kb": max(0, rss_at_n - rss_idle) / args.calls / 1024,
        "harness_cpu_percent": 100.0 * harness_cpu / window,
        "harness_cpu_system_share": (me1[1] - me0[1]) / harness_cpu if harness_cpu else 0.0,
        "harness_late_ticks": late_ticks,
        "cores": [_core_breakdown(a, b) for a, b in zip(cores0, cores1, strict=True)],
        "events": {**totals, "clears": clears, "marks_echoed": marks, "session_ends": session_ends},
        "metrics_scrapes": scraper.scrapes if scraper is not None else None,
        "metrics_scrape_failures": sorted(set(scraper.failures)) if scraper is not None else [],
        "metrics_bytes": scraper.bytes if scraper is not None else None,
        # The operator console's live page, when one was open (--console).
        "console_events": live_page.events if live_page is not None else None,
        "console_bytes": live_page.bytes if live_page is not None else None,
        "console_error": live_page.error if live_page is not None else None,
        "harness_errors": len(h.errors),
        "harness_error_samples": sorted(set(h.errors))[:5],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__)
    p.add_argument(
        "--target",
        choices=(
            "callbridge",
            "callbridge-aiohttp-streams",
            "callbridge-aiohttp",
            "callbridge-redis",
            "aiohttp",
            "picows",
        ),
        required=True,
    )
    p.add_argument("--server-port", type=int, required=True)
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--agent-port", type=int, required=True)
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--ramp-rate", type=float, default=100.0, help="calls opened per second")
    p.add_argument("--public-url", default="https://bench.callbridge.invalid")
    p.add_argument("--auth-token", default="bench-auth-token")
    p.add_argument("--api-token", default="", help="callbridge's API token: scrape /metrics")
    p.add_argument(
        "--console", action="store_true", help="keep the console's live page open (callbridge)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--callgrind",
        action="store_true",
        help="the server runs under callgrind: zero its counts as the window opens, dump "
        "them as it closes",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = uvloop.run(run(args))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    # Skip interpreter teardown of thousands of objects: the numbers are out.
    os._exit(0)


if __name__ == "__main__":
    main()
