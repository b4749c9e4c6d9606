"""`callbridge` as a real process: the server, for the tests that need signals or a SIGKILL,
and any other command run to its end."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import API_KEY, AUTH_TOKEN, PUBLIC_URL


def serve_env(agent_url: str, port: int, folder: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "ASSEMBLYAI_API_KEY": API_KEY,
        "ASSEMBLYAI_AGENT_URL": agent_url,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PUBLIC_URL": PUBLIC_URL,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{folder}/calls.db",
        "CALLBRIDGE_SPOOL_PATH": str(folder / "spool.jsonl"),
        "LOG_FORMAT": "json",
        **extra,
    }


async def start_serve(
    env: dict[str, str], folder: Path, on_line: Callable[[bytes], None] | None = None
) -> asyncio.subprocess.Process:
    """Start the server and return once it logs that it is listening; `on_line` gets each
    later line of its log."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callbridge.cli",
        "serve",
        cwd=folder,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while b'"server.listening"' not in (line := await asyncio.wait_for(proc.stderr.readline(), 30)):
        assert line, "server exited before listening"
    # Keep reading: a server that logs more than the pipe holds would block on its next line.
    drain = asyncio.get_running_loop().create_task(_drain(proc.stderr, on_line))
    _draining.add(drain)  # ends at EOF, when the process has exited
    drain.add_done_callback(_draining.discard)
    return proc


_draining: set[asyncio.Task[None]] = set()


async def _drain(stream: asyncio.StreamReader, on_line: Callable[[bytes], None] | None) -> None:
    if on_line is None:
        while await stream.read(65536):
            pass
        return
    while line := await stream.readline():
        on_line(line)


async def run_command(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 30.0
) -> tuple[int, str, str]:
    """`callbridge ARGS...` run to its end: its exit status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callbridge.cli",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
