"""The per-frame cost of callbridge's own code, without sockets: repeatable where `make
bench` is not.

`make bench` times whole processes on a shared machine, where the same build moves ±20%
between runs. This measures only what runs in Python for each relayed frame, in one
process: callbridge's path (picows frame callback -> `PicowsTwilioSocket` -> `CallRunner`
-> `CallBridge` -> `PicowsAgentSocket.send`, and back with the playout ledger's marks)
against the minimal relays' (the same msgspec decode and encode, `bench/relay_common.py`).
picows's transports are replaced by stubs whose `send` does nothing, so neither socket
syscalls nor picows's own parsing are counted (they are the same for every server).
Frames go to the sockets' `_on_frame`: the full path, every frame through the bridge.
The compiled fast path (`callbridge.fast_path`) needs picows's own transports and frames,
so only a whole-server run (`python -m bench`, `--callgrind`) measures it.

Three measures:

* wall-clock nanoseconds per frame (the best of five rounds), in-process: fast, still
  subject to the machine's noise but far less than a whole-server run;
* Python bytecodes executed per frame (`sys.settrace` opcode events over 1,000 frames),
  stubs included on both sides: exact, in a second, and what a change to our Python
  changes first (the whole server runs each bytecode several times slower than this
  loop does, with caches shared with the kernel's network stack);
* with `--callgrind`, instructions per frame counted by `valgrind --tool=callgrind`: the
  same figure whatever else the machine is doing. Each (path, direction) runs twice, with
  F and 2F frames, and the difference of the two totals is divided by F, so start-up and
  imports cancel out. Takes a few minutes.

    python -m bench.hot_path [--frames 20000] [--callgrind]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from picows import WSMsgType

from bench import relay_common
from callbridge.agent.picows import PicowsAgentSocket
from callbridge.bot import bot
from callbridge.bridge.call_bridge import CallBridge
from callbridge.logs import EventLogger
from callbridge.server.call_runner import CallRunner
from callbridge.twilio.picows import PicowsTwilioSocket

STREAM_SID = "MZ" + "0" * 32
CALLER_AUDIO = base64.b64encode(bytes(range(160))).decode()  # 20 ms of μ-law
AGENT_AUDIO = base64.b64encode(bytes(300)).decode()  # 37.5 ms, as the bench agent sends
TWILIO_MEDIA = json.dumps(
    {
        "event": "media",
        "sequenceNumber": "5",
        "streamSid": STREAM_SID,
        "media": {"track": "inbound", "chunk": "4", "timestamp": "80", "payload": CALLER_AUDIO},
    }
).encode()
REPLY_AUDIO = json.dumps({"type": "reply.audio", "reply_id": "r1", "data": AGENT_AUDIO}).encode()
DIRECTIONS = ("up", "down")  # up: Twilio -> agent; down: agent -> Twilio
# Each measured call: its two sockets and the task running it, until _end_calls().
_calls: list[tuple[PicowsTwilioSocket, PicowsAgentSocket, asyncio.Task[None]]] = []


class _StubTransport:
    """What the sockets use of picows's WSTransport; sends are counted, not sent. A call
    that ended during the measurement shows as fewer sends than frames."""

    def __init__(self) -> None:
        self.sent = 0
        self.is_disconnected = False
        self.is_close_frame_sent = False
        self.close_handshake = None
        self._gone = asyncio.Event()

    def send(self, kind: object, data: bytes) -> None:
        self.sent += 1

    async def wait_disconnected(self) -> None:
        await self._gone.wait()

    def disconnect(self, graceful: bool = True) -> None:
        self.is_disconnected = True
        self._gone.set()

    def send_close(self, code: object) -> None:
        self.is_close_frame_sent = True
        self._gone.set()  # the peer answers at once


class _Frame:
    """What the sockets use of picows's WSFrame."""

    msg_type = WSMsgType.TEXT
    fin = True
    rsv1 = rsv2 = rsv3 = False

    def __init__(self, payload: bytes) -> None:
        self._payload = payload

    def get_payload_as_memoryview(self) -> memoryview:
        return memoryview(self._payload)


def _frame(event: dict[str, Any]) -> _Frame:
    return _Frame(json.dumps(event).encode())


def _paced_clock(start: float) -> Callable[[], float]:
    """20 ms per call: frames arrive at Twilio's pace, as far as the rate limits can tell."""
    ticks: Iterator[int] = iter(range(1, 1 << 62))
    return lambda: start + next(ticks) * 0.02


async def _live_call(
    to_agent: _StubTransport, to_twilio: _StubTransport
) -> tuple[PicowsTwilioSocket, PicowsAgentSocket]:
    """A call brought to the point where audio flows both ways and a reply is playing."""
    agent_socket = PicowsAgentSocket()
    agent_socket.on_ws_connected(to_agent)  # type: ignore[arg-type]

    dialled = asyncio.Event()

    async def dial_agent() -> PicowsAgentSocket:
        dialled.set()  # the runner feeds AgentOpened before its task next yields
        return agent_socket

    twilio_socket = PicowsTwilioSocket(lambda sock: None, max_bytes=65536)
    twilio_socket.on_ws_connected(to_twilio)  # type: ignore[arg-type]
    bridge = CallBridge(
        session_config=bot.session_config("inbound"),
        tools=bot.tools,
        apology_payloads=(),
        apology_seconds=0.0,
        call_id="hot-path",
        direction="inbound",
    )
    runner = CallRunner(
        call_id="hot-path",
        twilio_socket=twilio_socket,
        bridge=bridge,
        dial_agent=dial_agent,
        log=EventLogger("call", call_id="hot-path"),
    )
    _calls.append((twilio_socket, agent_socket, asyncio.create_task(runner.run())))
    stub = _StubTransport()
    twilio_socket._on_frame(stub, _frame({"event": "connected", "protocol": "Call"}))  # type: ignore[arg-type]
    start = _frame(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": STREAM_SID,
            "start": {
                "streamSid": STREAM_SID,
                "callSid": "CA" + "0" * 32,
                "accountSid": "AC" + "0" * 32,
                "tracks": ["inbound"],
                "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )
    twilio_socket._on_frame(stub, start)  # type: ignore[arg-type]
    async with asyncio.timeout(5):  # the runner dials the agent in a task of its own
        await dialled.wait()
    for event in (
        {"type": "session.updated", "session": {}},
        {"type": "session.ready", "session_id": "sess_hot"},
        {"type": "reply.started", "reply_id": "r1"},
    ):
        agent_socket._on_frame(stub, _frame(event))  # type: ignore[arg-type]
    # The agent socket keeps these until the runner's reader task, already scheduled,
    # starts serving it: one turn of the loop.
    await asyncio.sleep(0)
    # A bench may reach in: its frames come far faster than real time.
    runner._now = _paced_clock(runner._now())
    assert bridge.state.value == "live", bridge.state
    return twilio_socket, agent_socket


Step = tuple[Callable[[], None], _StubTransport]  # one frame in; where it comes out


def _callbridge_step(direction: str) -> Step:
    to_agent, to_twilio = _StubTransport(), _StubTransport()
    loop = asyncio.get_event_loop()
    twilio_socket, agent_socket = loop.run_until_complete(_live_call(to_agent, to_twilio))
    to_agent.sent = to_twilio.sent = 0
    stub = _StubTransport()
    if direction == "up":
        frame = _Frame(TWILIO_MEDIA)
        return lambda: twilio_socket._on_frame(stub, frame), to_agent  # type: ignore[arg-type]
    frame = _Frame(REPLY_AUDIO)
    return lambda: agent_socket._on_frame(stub, frame), to_twilio  # type: ignore[arg-type]


def _relay_step(direction: str) -> Step:
    out = _StubTransport()
    text = WSMsgType.TEXT
    if direction == "up":
        frame = _Frame(TWILIO_MEDIA)

        def up() -> None:
            msg = relay_common.decode_twilio(frame.get_payload_as_memoryview())
            if msg.event == "media" and msg.media is not None:
                out.send(text, relay_common.encode_input_audio(msg.media.payload))

        return up, out
    frame = _Frame(REPLY_AUDIO)

    def down() -> None:
        msg = relay_common.decode_agent(frame.get_payload_as_memoryview())
        if msg.type == "reply.audio" and msg.data is not None:
            out.send(text, relay_common.encode_media(STREAM_SID, msg.data))

    return down, out


def _step(path: str, direction: str) -> Step:
    return _callbridge_step(direction) if path == "callbridge" else _relay_step(direction)


def _wall_ns_per_frame(path: str, direction: str, frames: int) -> tuple[float, float]:
    """Best nanoseconds per frame of five rounds, and messages sent per frame given."""
    step, out = _step(path, direction)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(frames):
            step()
        best = min(best, time.perf_counter_ns() - start)
    return best / frames, out.sent / (5 * frames)


def _bytecodes_per_frame(path: str, direction: str, frames: int = 1000) -> float:
    step, _ = _step(path, direction)
    for _ in range(100):  # past anything done once (first-time lookups, a first mark)
        step()
    executed = 0

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal executed
        frame.f_trace_opcodes = True
        if event == "opcode":
            executed += 1
        return trace

    sys.settrace(trace)
    try:
        for _ in range(frames):
            step()
    finally:
        sys.settrace(None)
    return executed / frames


def _instructions(path: str, direction: str, frames: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.hot_path",
                "--run-one",
                f"{path}:{direction}:{frames}",
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts every run
        )
        if done.returncode != 0:
            raise RuntimeError(f"valgrind failed: {done.stderr[-500:]}")
        totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
        if totals is None:
            raise RuntimeError("no instruction total in callgrind's output")
        return int(totals.group(1))


def _run_one(spec: str) -> None:
    """One timed-nowhere run for callgrind: set up, then `frames` steps."""
    path, direction, frames = spec.split(":")
    step, _ = _step(path, direction)
    for _ in range(int(frames)):
        step()
    _end_calls()


def _end_calls() -> None:
    """Hang the measured calls up as Twilio and the agent would, and wait for them."""

    async def hang_up() -> None:
        stub = _StubTransport()
        for twilio_socket, agent_socket, _ in _calls:
            twilio_socket._on_frame(stub, _frame({"event": "stop", "streamSid": STREAM_SID}))  # type: ignore[arg-type]
            agent_socket._on_frame(stub, _frame({"type": "session.ended"}))  # type: ignore[arg-type]
        async with asyncio.timeout(10):
            await asyncio.gather(*(task for _, _, task in _calls))

    loop = asyncio.get_event_loop()
    loop.run_until_complete(hang_up())
    loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_path", description=__doc__)
    parser.add_argument("--frames", type=int, default=20000, help="frames per round")
    parser.add_argument(
        "--callgrind", action="store_true", help="also count instructions (needs valgrind)"
    )
    parser.add_argument("--json-out", type=Path, help="write the figures here too")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    asyncio.set_event_loop(asyncio.new_event_loop())
    if args.run_one:
        _run_one(args.run_one)
        return
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    if args.callgrind and shutil.which("valgrind") is None:
        parser.error("--callgrind needs valgrind on PATH (Debian: apt install valgrind)")
    figures: dict[str, Any] = {
        "frames": args.frames,
        "wall_ns_per_frame": {},
        # Messages out per frame in: 1.0 up; down, callbridge adds a mark every ~7 frames.
        "sent_per_frame": {},
    }
    for path in ("callbridge", "relay"):
        for direction in DIRECTIONS:
            ns, sent = _wall_ns_per_frame(path, direction, args.frames)
            figures["wall_ns_per_frame"][f"{path}_{direction}"] = round(ns, 1)
            figures["sent_per_frame"][f"{path}_{direction}"] = round(sent, 3)
    figures["bytecodes_per_frame"] = {
        f"{path}_{direction}": round(_bytecodes_per_frame(path, direction), 1)
        for path in ("callbridge", "relay")
        for direction in DIRECTIONS
    }
    if args.callgrind:
        count = max(args.frames // 10, 1000)  # valgrind is ~50x slower
        figures["callgrind_frames"] = count
        per_frame: dict[str, float] = {}
        for path in ("callbridge", "relay"):
            for direction in DIRECTIONS:
                once = _instructions(path, direction, count)
                twice = _instructions(path, direction, 2 * count)
                per_frame[f"{path}_{direction}"] = (twice - once) / count
        figures["instructions_per_frame"] = per_frame
    _print(figures)
    _end_calls()
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(figures, indent=2))


def _print(figures: dict[str, Any]) -> None:
    print("per relayed frame, in-process (no sockets): callbridge's code vs the relay's")
    units = [("wall_ns_per_frame", "ns (best of 5)"), ("bytecodes_per_frame", "bytecodes")]
    if "instructions_per_frame" in figures:
        units.append(("instructions_per_frame", "instructions"))
    for key, unit in units:
        values = figures[key]
        for direction in DIRECTIONS:
            ours, relay = values[f"callbridge_{direction}"], values[f"relay_{direction}"]
            print(
                f"  {direction:>4}  callbridge {ours:10.0f}  relay {relay:10.0f}  "
                f"extra {ours - relay:10.0f}  x{ours / relay:.2f}  {unit}"
            )


if __name__ == "__main__":
    main()
