"""`callbridge serve --workers N`: N processes on one port, a supervisor that starts a dead
one again and passes a stop on to all of them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from callbridge.bot import bot as default_bot
from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_simulator import TwilioSimulator
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, free_port
from tests.helpers.server_process import serve_env
from tests.scale.cluster import LoggedProcess, serve_argv


def serve_two_workers(env: dict[str, str], folder: Path) -> subprocess.CompletedProcess[str]:
    """`serve --workers 2` run to its end (for the settings it refuses at once)."""
    return subprocess.run(
        [*serve_argv(), "--workers", "2"],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_more_than_one_worker_needs_redis(tmp_path: Path) -> None:
    env = serve_env("ws://127.0.0.1:9/v1/ws", free_port(), tmp_path)
    done = serve_two_workers(env, tmp_path)
    assert done.returncode == 2
    assert "REDIS_URL" in done.stderr and "--workers 2" in done.stderr


def test_workers_cannot_share_one_instance_url(tmp_path: Path) -> None:
    # Workers share a port: a URL routed to it reaches any of them, not one.
    env = serve_env(
        "ws://127.0.0.1:9/v1/ws",
        free_port(),
        tmp_path,
        REDIS_URL="redis://127.0.0.1:9/0",
        CALLBRIDGE_INSTANCE_URL=PUBLIC_URL + "/i/box",
    )
    done = serve_two_workers(env, tmp_path)
    assert done.returncode == 2
    assert "CALLBRIDGE_INSTANCE_URL" in done.stderr and "--workers 2" in done.stderr
    assert "workers.starting" not in done.stderr


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    # Its records spool cannot be made: starting it again would fail the same way.
    env = serve_env(
        "ws://127.0.0.1:9/v1/ws",
        free_port(),
        tmp_path,
        REDIS_URL="redis://127.0.0.1:9/0",
        CALLBRIDGE_SPOOL_PATH=str(tmp_path / "no-such-folder" / "spool.jsonl"),
    )
    done = serve_two_workers(env, tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "workers.worker_refused_to_start" in done.stderr
    assert "workers.worker_died" not in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_killed_worker_is_started_again(
    tmp_path: Path, fake_agent: FakeVoiceAgent, redis_server: str, redis_prefix: str
) -> None:
    port = free_port()
    env = serve_env(
        fake_agent.url,
        port,
        tmp_path,
        REDIS_URL=redis_server,
        CALLBRIDGE_REDIS_PREFIX=redis_prefix,
        CALLBRIDGE_INSTANCE_ID="box",
    )
    supervisor = LoggedProcess("supervisor")
    await supervisor.spawn([*serve_argv(), "--workers", "2"], env, tmp_path)
    try:
        await supervisor.wait_for("server.listening", times=2)
        started = {e["worker"]: e["pid"] for e in supervisor.seen("workers.worker_started")}
        assert sorted(started) == [1, 2]
        os.kill(started[1], signal.SIGKILL)
        died = await supervisor.wait_for("workers.worker_died")
        assert (died["worker"], died["pid"]) == (1, started[1])
        again = await supervisor.wait_for("workers.worker_started", times=3)
        assert again["worker"] == 1 and again["pid"] != started[1]
        await supervisor.wait_for("server.listening", times=3)
        # Each worker its own instance, both in Redis; and the port answers calls.
        ids = {e["instance_id"] for e in supervisor.seen("shared_state.started")}
        assert ids == {"box-1", "box-2"}
        # None can be addressed alone: each worker started said so, once.
        warned = supervisor.seen("config.no_instance_url")
        assert len(warned) == len(supervisor.seen("server.listening")) == 3
        async with TwilioSimulator(
            f"http://127.0.0.1:{port}", auth_token=AUTH_TOKEN, public_url=PUBLIC_URL
        ) as sim:
            call = await sim.place_inbound_call()
            expected = fake_agent.reply_audio_for(default_bot.greeting or "")
            await call.wait_heard(len(expected), timeout=15)
            await call.hangup()
        supervisor.signal(signal.SIGTERM)
        await supervisor.wait_for("workers.stopped", timeout=40)
        assert supervisor.proc is not None
        assert await supervisor.proc.wait() == 0
        assert len(supervisor.seen("server.stopped")) == 2
    finally:
        await supervisor.stop()
        for event in supervisor.seen("workers.worker_started"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(event["pid"], signal.SIGKILL)


def test_workers_option_is_in_the_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "callbridge.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--workers" in done.stdout
