"""Several `callbridge serve` processes behind a real nginx, sharing Redis and PostgreSQL, as
a deployment runs them (deploy/docker-compose.yml), all on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import API_TOKEN, PUBLIC_URL, free_port
from tests.helpers.server_process import serve_env

Event = dict[str, Any]


class LoggedProcess:
    """A process whose JSON log lines (stderr) are kept, and awaited by event name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def spawn(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=cwd, stderr=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "stderr", "text": line.decode(errors="replace").rstrip()}
            if isinstance(event, dict):
                self.events.append(event)
                self._changed.set()
        self.events.append({"event": "process.exited"})
        self._changed.set()

    def seen(self, name: str, **fields: Any) -> list[Event]:
        return [
            e
            for e in self.events
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(
        self, name: str, times: int = 1, timeout: float = 30.0, **fields: Any
    ) -> Event:
        async with asyncio.timeout(timeout):
            while len(self.seen(name, **fields)) < times:
                if self.seen("process.exited") and name != "process.exited":
                    tail = [e.get("event") or e.get("text") for e in self.events[-15:]]
                    raise AssertionError(f"{self.name} exited before {name}: {tail}")
                self._changed.clear()
                await self._changed.wait()
        return self.seen(name, **fields)[times - 1]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    def live_calls(self) -> int:
        """Calls whose stream started here and has not ended, as the log says."""
        return len(self.seen("stream.started")) - len(self.seen("call.ended"))

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.signal(signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


def instance_env(
    name: str,
    port: int,
    folder: Path,
    *,
    agent_url: str,
    redis_url: str,
    redis_prefix: str,
    database_url: str,
    **extra: str,
) -> dict[str, str]:
    # What every server process of the tests gets, made one instance of a cluster.
    return serve_env(
        agent_url,
        port,
        folder,
        DATABASE_URL=database_url,
        CALLBRIDGE_SPOOL_PATH=str(folder / f"spool-{name}.jsonl"),
        CALLBRIDGE_INSTANCE_ID=name,
        CALLBRIDGE_API_TOKEN=API_TOKEN,
        REDIS_URL=redis_url,
        CALLBRIDGE_REDIS_PREFIX=redis_prefix,
        LOG_LEVEL="DEBUG",
        # Routed by nginx to this instance alone (`Nginx`), as the public URL's /i/{name}.
        CALLBRIDGE_INSTANCE_URL=instance_url(name),
        **extra,
    )


def instance_url(name: str) -> str:
    return f"{PUBLIC_URL}/i/{name}"


def serve_argv(*options: str) -> list[str]:
    return [sys.executable, "-m", "callbridge.cli", "serve", *options]


@dataclass
class Instance:
    name: str
    port: int
    env: dict[str, str]
    folder: Path
    process: LoggedProcess = field(init=False)

    async def start(self) -> None:
        self.process = LoggedProcess(self.name)
        await self.process.spawn(serve_argv(), self.env, self.folder)
        await self.process.wait_for("server.listening")
        await self.process.wait_for("shared_state.started")


NGINX_CONF = """
{user}
worker_processes 1;
error_log stderr warn;
pid {folder}/nginx.pid;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    upstream callbridge {{
{servers}
    }}
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $connection_upgrade;
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_connect_timeout 2s;
    proxy_read_timeout 3600s;
    proxy_send_timeout 3600s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://callbridge;
            proxy_next_upstream error timeout;
        }}
{locations}
    }}
}}
"""

# Each instance's own path (its CALLBRIDGE_INSTANCE_URL): to it alone, the prefix stripped.
NGINX_INSTANCE = """        location /i/{name}/ {{
            proxy_pass http://127.0.0.1:{port}/;
        }}"""


class Nginx:
    """Debian's nginx in the foreground, round robin over the instances, WebSocket upgrades
    passed through, and `/i/{name}/` to instance `name` alone (the configuration
    deploy/nginx.conf holds, on loopback)."""

    def __init__(self, binary: str, folder: Path, upstream_ports: dict[str, int]) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        servers = "\n".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;"
            for p in upstream_ports.values()
        )
        locations = "\n".join(
            NGINX_INSTANCE.format(name=name, port=p) for name, p in upstream_ports.items()
        )
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf = folder / "nginx.conf"
        self.conf.write_text(
            NGINX_CONF.format(
                user=user, folder=folder, servers=servers, port=self.port, locations=locations
            )
        )
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            "-p",
            str(self.folder),
            "-c",
            str(self.conf),
            "-g",
            "daemon off;",
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(10):
            while True:
                if self.proc.returncode is not None:
                    assert self.proc.stderr is not None
                    raise AssertionError(f"nginx failed: {(await self.proc.stderr.read())!r}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.05)  # nothing to await: nginx says nothing when up
                    continue
                writer.close()
                return

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def spread(instances: list[Instance], event: str = "stream.started") -> dict[str, int]:
    """How many of `event` each instance logged."""
    return {i.name: len(i.process.seen(event)) for i in instances}


Predicate = Callable[[Event], bool]
