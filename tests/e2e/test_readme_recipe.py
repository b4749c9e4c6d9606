"""The README's offline recipe, run as written: it must keep giving a real conversation.

The commands are read from the fenced block after `<!-- recipe: offline-call -->` in
README.md and run by a shell in a fresh folder laid out like a checkout (the Makefile and
what `make install` depends on, with this checkout's `.venv`), with a fresh environment
(only PATH, HOME, and the port to use). All but the last run in the background until the
server they start is listening; the last is the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from pathlib import Path

from callbridge.bot import bot
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- recipe: offline-call -->"
# Copied with their times kept, so `make install` sees the checkout's .venv as up to date.
CHECKOUT_FILES = (
    "Makefile",
    "pyproject.toml",
    "requirements.lock",
    "setup.py",
    "src/callbridge/fast_path/_compiled.pyx",
)


def recipe_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme.split(MARKER, 1)[1]
    block = re.match(r"\s*```(?:sh|bash|shell)\n(.*?)```", after, re.DOTALL)
    assert block is not None, f"no ```sh block right after {MARKER} in README.md"
    commands = [line.strip() for line in block.group(1).splitlines()]
    return [c for c in commands if c and not c.startswith("#")]


def fake_checkout(folder: Path) -> None:
    for name in CHECKOUT_FILES:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    (folder / ".venv").symlink_to(ROOT / ".venv")


async def read_until_listening(proc: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert proc.stdout is not None
    while "server.listening" not in (line := (await proc.stdout.readline()).decode()):
        assert line, "the background command exited before the server listened:\n" + "".join(lines)
        lines.append(line)
    lines.append(line)


async def read_rest(proc: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        lines.append(line.decode())


def test_the_recipe_is_short() -> None:
    assert 1 <= len(recipe_commands()) <= 3


async def test_the_offline_recipe_gives_a_conversation_with_a_tool_call(tmp_path: Path) -> None:
    *background, call = recipe_commands()
    fake_checkout(tmp_path)
    # `make install` in the recipe must find the .venv up to date: were it to reinstall,
    # it would install from this folder, which holds no source.
    stale = await asyncio.create_subprocess_exec("make", "-q", "install", cwd=tmp_path)
    assert await stale.wait() == 0, "this checkout's .venv is out of date: run `make install`"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PORT": str(free_port()),
        "HOST": "127.0.0.1",
    }
    started: list[tuple[asyncio.subprocess.Process, list[str]]] = []
    readers: list[asyncio.Task[None]] = []
    try:
        for command in background:
            proc = await asyncio.create_subprocess_shell(
                command,
                cwd=tmp_path,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped like Ctrl-C below
            )
            lines: list[str] = []
            started.append((proc, lines))
            await asyncio.wait_for(read_until_listening(proc, lines), 120)
            readers.append(asyncio.create_task(read_rest(proc, lines)))
        caller = await asyncio.create_subprocess_shell(
            call,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(caller.communicate(), 90)
        assert caller.returncode == 0, err.decode()
    finally:
        for proc, _ in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
        for proc, _ in started:
            await asyncio.wait_for(proc.wait(), 30)
        if readers:
            await asyncio.wait(readers)
    conversation = "".join(line for _, lines in started for line in lines)
    # The agent greeted, the caller's turn came, the agent called the demo bot's tool and
    # read its result out.
    assert f"agent: {bot.greeting}" in conversation
    assert "caller: Can you pick a random number between 1 and 10?" in conversation
    assert 'agent calls generate_random_number {"minimum": 1, "maximum": 10}' in conversation
    result = re.search(r"tool result: (\d+)", conversation)
    assert result is not None, conversation
    assert 1 <= int(result.group(1)) <= 10
    assert f"agent: Your number is {result.group(1)}." in conversation
    assert "cut off" not in conversation  # the caller let the greeting finish
    # What the caller heard: the greeting, then their turn, then the answer.
    summary = out.decode()
    order: list[str] = []
    for line in summary.splitlines():
        for what in ("Twilio played the agent's audio", "the caller speaks"):
            if line.endswith(what) and (not order or order[-1] != what):
                order.append(what)
    assert order == [
        "Twilio played the agent's audio",
        "the caller speaks",
        "Twilio played the agent's audio",
    ], summary
