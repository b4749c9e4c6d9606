"""The `testing` extra (jsonschema, pyyaml) is for the fake agent only: the server and
`callbridge simulate` run without it, and `callbridge fake-agent` says how to install it.

Each command runs as a real process in which importing those modules fails as it does
when they are not installed (a `sitecustomize` on PYTHONPATH blocks them).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from callbridge.testing.fake_agent import FakeVoiceAgent
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, free_port
from tests.helpers.server_process import serve_env, start_serve

TESTING_EXTRA = ("jsonschema", "yaml")

BLOCKER = """\
import sys


class _NotInstalled:
    names = frozenset({names!r})

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in cls.names:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled)
"""


def without(folder: Path, *modules: str) -> dict[str, str]:
    """An environment in which importing `modules` fails as if they were not installed."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(BLOCKER.format(names=set(modules)))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(folder)}
    for module in modules:  # the blocker works: the test cannot pass with them importable
        check = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, check=False)
        assert check.returncode != 0, f"{module} is still importable"
    return env


@pytest.mark.parametrize("missing", [*TESTING_EXTRA, TESTING_EXTRA])
def test_fake_agent_without_the_testing_extra_says_how_to_install_it(
    tmp_path: Path, missing: str | tuple[str, ...]
) -> None:
    modules = (missing,) if isinstance(missing, str) else missing
    ran = subprocess.run(
        [sys.executable, "-m", "callbridge.cli", "fake-agent"],
        cwd=tmp_path,
        env=without(tmp_path / "blocked", *modules),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 2, ran.stderr
    assert ran.stdout == ""
    assert ran.stderr.count("\n") == 1, ran.stderr  # one line, no traceback
    assert ran.stderr.startswith("callbridge: the fake agent needs callbridge's testing extra")
    assert "pip install 'callbridge[testing]'" in ran.stderr
    assert f"no module {modules[0]!r}" in ran.stderr


def test_importing_the_fake_agent_without_the_testing_extra_says_how_to_install_it(
    tmp_path: Path,
) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", "from callbridge.testing import FakeVoiceAgent"],
        cwd=tmp_path,
        env=without(tmp_path / "blocked", *TESTING_EXTRA),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 1
    assert (
        ran.stderr.strip()
        .splitlines()[-1]
        .startswith("ImportError: callbridge's fake Voice Agent API needs the testing extra")
    ), ran.stderr
    assert "pip install 'callbridge[testing]'" in ran.stderr


async def test_the_server_and_simulate_run_without_the_testing_extra(
    tmp_path: Path, fake_agent: FakeVoiceAgent
) -> None:
    env = without(tmp_path / "blocked", *TESTING_EXTRA)
    port = free_port()
    server = await start_serve(
        serve_env(fake_agent.url, port, tmp_path, PYTHONPATH=env["PYTHONPATH"]), tmp_path
    )
    try:
        simulate = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "callbridge.cli",
            "simulate",
            "--beep",
            "0.5",
            "--server",
            f"http://127.0.0.1:{port}",
            "--seconds",
            "8",
            cwd=tmp_path,
            env={**env, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_URL": PUBLIC_URL},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(simulate.communicate(), 60)
        assert simulate.returncode == 0, err.decode()
        assert "webhook HTTP 200" in out.decode()
        # A whole call went through the server: the agent heard the caller and answered.
        session = await fake_agent.wait_for_session()
        await session.wait_sent(lambda e: e.get("text") == "I heard you.")
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 30)
    assert server.returncode == 0
