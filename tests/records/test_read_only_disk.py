"""The disk under a SQLite database turns read-only in the middle of a call, in a real
`callbridge serve` process: the call goes on, the server says so in its log and keeps the
records in the spool, `callbridge calls` still reads, and the records arrive once the disk
can be written again.

The fault is `chattr +i` (immutable) on the database's folder and every file in it: writes
through open descriptors fail, memory-mapped pages of those files cannot be written (a
process writing them gets SIGBUS), and no file can be created or removed there. It needs
root and a filesystem that has the attribute (ext4, xfs, btrfs...); elsewhere it is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from callbridge.bot import bot
from callbridge.bridge.call_bridge import EndReason
from callbridge.testing.audio import silence, tone
from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_simulator import TwilioSimulator
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, free_port
from tests.helpers.server_process import run_command, serve_env

pytestmark = pytest.mark.slow


def _chattr(flag: str, paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chattr", flag, *map(str, paths)], capture_output=True, text=True, check=False
    )


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """The folder and everything in it immutable, as on a disk remounted read-only."""
    paths = [*folder.iterdir(), folder]
    done = _chattr("+i", paths)
    try:
        assert done.returncode == 0, done.stderr
        yield
    finally:
        _chattr("-i", paths)


@pytest.fixture
def chattr_works(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("making files immutable needs root and chattr")
    probe = tmp_path / "probe"
    probe.touch()
    done = _chattr("+i", [probe])
    _chattr("-i", [probe])
    probe.unlink()
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {done.stderr.strip()}")


class ServerLog:
    """A `callbridge serve` process's JSON log lines, as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        self.lines: list[dict[str, Any]] = []
        self._proc = proc
        self._stream = proc.stderr
        self._changed = asyncio.Event()
        self.closed = False
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while line := await self._stream.readline():
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))
            self._changed.set()
        self.closed = True
        self._changed.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    async def wait_for(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while not (found := self.events(name)):
                if self.closed:
                    status = await self._proc.wait()
                    pytest.fail(f"the server exited ({status}) before logging {name}")
                self._changed.clear()
                await self._changed.wait()
        return found[0]


async def start(env: dict[str, str], folder: Path) -> tuple[asyncio.subprocess.Process, ServerLog]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callbridge.cli",
        "serve",
        cwd=folder,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    log = ServerLog(proc)
    await log.wait_for("server.listening")
    return proc, log


async def cli(env: dict[str, str], folder: Path, *args: str) -> tuple[int, str, str]:
    return await run_command("calls", *args, env=env, cwd=folder)


async def test_database_disk_turning_read_only_mid_call_drops_no_call(
    chattr_works: None, fake_agent: FakeVoiceAgent, tmp_path: Path
) -> None:
    db_folder = tmp_path / "db"  # the spool stays on a disk that can be written
    db_folder.mkdir()
    port = free_port()
    env = serve_env(fake_agent.url, port, tmp_path, DATABASE_URL=f"sqlite:///{db_folder}/calls.db")
    proc, log = await start(env, tmp_path)
    try:
        await log.wait_for("records.ready")
        url = f"http://127.0.0.1:{port}"
        async with TwilioSimulator(url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
            call = await sim.place_inbound_call()
            greeting = fake_agent.reply_audio_for(bot.greeting or "")
            await call.wait_heard(len(greeting), timeout=10)
            with read_only(db_folder):
                call.speak(tone(300, 300) + silence(500))
                answer = fake_agent.reply_audio_for("I heard you.")
                # The call's entries meet the read-only disk at the next commit: logged,
                # and kept in the spool. Nothing of it reaches the caller.
                unavailable = await log.wait_for("records.db_unavailable")
                assert unavailable["effect"] == "calls go ahead; records wait in the spool"
                await call.wait_heard(len(greeting) + len(answer), timeout=10)
                assert bytes(call.heard) == greeting + answer
                assert not call.ended.is_set()
                # The records can still be read while the server runs.
                code, out, err = await cli(env, tmp_path, "list", "--json")
                assert code == 0, err
                assert isinstance(json.loads(out), list)
                await call.hangup()
                await call.wait_ended(timeout=10)
                assert proc.returncode is None
        # Writable again: the records arrive (at the latest when the server stops).
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await log.task
        assert not log.events("records.entries_dropped")
        code, out, err = await cli(env, tmp_path, "show", call.call_sid, "--json")
        assert code == 0, err
        record = json.loads(out)
        assert record["ended_by"] == "caller"
        assert record["end_reason"] != EndReason.SERVER_SHUTDOWN.value
        assert ["caller", "hello"] in [[t["role"], t["text"]] for t in record["transcript"]]
        assert ["agent", "I heard you."] in [[t["role"], t["text"]] for t in record["transcript"]]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
