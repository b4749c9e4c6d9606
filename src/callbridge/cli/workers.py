"""`callbridge serve --workers N`: N server processes on one port, kept running.

Each worker is a whole `callbridge serve` of its own, bound to the same port with
SO_REUSEPORT (the kernel spreads new connections over them); they share live state through
Redis, which is why more than one worker needs REDIS_URL. Each gets its own instance id
(CALLBRIDGE_INSTANCE_ID with `-1`, `-2`... added; default the host name) and its own records
spool (the spool path with `.1`, `.2`... before its suffix).

This process only supervises: a worker that exits while serving is started again (after a
pause that grows while workers keep dying young); SIGTERM or SIGINT is passed on to every
worker, which drains as a single server does (DRAIN_SECONDS), and a second signal is passed
on too (end every call now). It exits once every worker has.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

from callbridge.cli.exit import EXIT_CONFIG
from callbridge.config import Settings
from callbridge.logs import EventLogger

_YOUNG_SECONDS = 10.0  # a worker that dies sooner than this is restarted after a pause
_FIRST_PAUSE_SECONDS = 0.5
_LONGEST_PAUSE_SECONDS = 30.0


def worker_environment(settings: Settings, number: int) -> dict[str, str]:
    """The environment of worker `number` (from 1): this one's, plus what makes it one of
    several on the port."""
    base = settings.callbridge_instance_id or socket.gethostname()
    spool = Path(settings.callbridge_spool_path)
    return {
        **os.environ,
        "CALLBRIDGE_INSTANCE_ID": f"{base}-{number}",
        "CALLBRIDGE_SPOOL_PATH": str(spool.with_name(f"{spool.stem}.{number}{spool.suffix}")),
        "CALLBRIDGE_REUSE_PORT": "1",
    }


class Supervisor:
    def __init__(self, settings: Settings, workers: int, argv: list[str]) -> None:
        self._settings = settings
        self._count = workers
        self._argv = argv  # the worker's command line: `callbridge serve` and its options
        self._stopping = False
        self._stop = asyncio.Event()
        self._signals = 0
        self.status = 0  # the supervisor's exit status
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._log = EventLogger("workers")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        self._log.info(
            "workers.starting",
            workers=self._count,
            host=self._settings.host,
            port=self._settings.port,
        )
        async with asyncio.TaskGroup() as tg:
            for number in range(1, self._count + 1):
                tg.create_task(self._keep(number))
        self._log.info("workers.stopped", status=self.status)
        return self.status

    def _on_signal(self, sig: signal.Signals) -> None:
        self._stopping = True
        self._stop.set()
        self._signals += 1
        self._log.info(
            "workers.stopping", signal=sig.name, workers=len(self._procs), now=self._signals > 1
        )
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    async def _keep(self, number: int) -> None:
        """Run worker `number` until the supervisor stops, starting it again when it dies."""
        loop = asyncio.get_running_loop()
        pause = _FIRST_PAUSE_SECONDS
        while not self._stopping:
            started = loop.time()
            # A session of its own: a terminal's Ctrl-C reaches the supervisor only, which
            # passes it on once (a worker told twice would end its calls at once).
            proc = await asyncio.create_subprocess_exec(
                *self._argv, env=worker_environment(self._settings, number), start_new_session=True
            )
            self._procs[number] = proc
            self._log.info("workers.worker_started", worker=number, pid=proc.pid)
            if self._stopping:  # a signal came while it was being started
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            status = await proc.wait()
            del self._procs[number]
            if self._stopping:
                self._log.info("workers.worker_stopped", worker=number, pid=proc.pid, status=status)
                return
            if status == EXIT_CONFIG:  # it will not start any better next time
                self._log.error("workers.worker_refused_to_start", worker=number, status=status)
                self.status = EXIT_CONFIG
                self._on_signal(signal.SIGTERM)
                return
            lived = loop.time() - started
            pause = pause * 2 if lived < _YOUNG_SECONDS else _FIRST_PAUSE_SECONDS
            pause = min(pause, _LONGEST_PAUSE_SECONDS)
            self._log.error(
                "workers.worker_died",
                worker=number,
                pid=proc.pid,
                status=status,
                restart_in_seconds=round(pause, 1) if lived < _YOUNG_SECONDS else 0,
            )
            if lived < _YOUNG_SECONDS:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), pause)


def worker_command(host: str | None, port: int | None) -> list[str]:
    argv = [sys.executable, "-m", "callbridge.cli", "serve"]
    if host is not None:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    return argv
