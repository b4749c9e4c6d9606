"""`callbridge fake-agent`: the fake Voice Agent API on loopback, for calls with no account.

The fake speaks in beeps (one short tone per character of what it "says"), detects the
caller's turns from the energy of their audio, and takes what the caller "said" and how
it answers from a script. It prints a transcript of each call as it goes: what the agent
says, what the script says the caller said, the tool calls and their results.

Without a script it plays `DEMO_SCRIPT`, made for the built-in bot: the caller's first
turn asks for a random number, and the agent calls `generate_random_number` and reads the
result out. Every later turn is answered with "I heard you."
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from callbridge.testing.fake_agent import Event, FakeSession, FakeVoiceAgent, ScriptedTurn

__all__ = [
    "DEFAULT_API_KEY",
    "DEMO_SCRIPT",
    "FakeAgentCommandError",
    "load_script",
    "run_fake_agent",
]

DEFAULT_API_KEY = "fake-agent-key"

DEMO_SCRIPT: tuple[ScriptedTurn, ...] = (
    ScriptedTurn(
        user_text="Can you pick a random number between 1 and 10?",
        tool_name="generate_random_number",
        tool_arguments={"minimum": 1, "maximum": 10},
        after_tool="Your number is {result}.",
    ),
)

_TURN_FIELDS = frozenset(f.name for f in dataclasses.fields(ScriptedTurn))


class FakeAgentCommandError(Exception):
    """The fake agent cannot run as asked (a bad script, a port in use, no such command).

    `usage` is true when what was asked is wrong (the script), not the running of it.
    """

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def load_script(path: Path) -> tuple[ScriptedTurn, ...]:
    """Turns from a JSON file: a list of objects with `ScriptedTurn`'s fields."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FakeAgentCommandError(
            f"cannot read {path}: {exc.strerror or exc}", usage=True
        ) from None
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise FakeAgentCommandError(f"{path} is not valid JSON: {exc}", usage=True) from None
    if not isinstance(data, list):
        raise FakeAgentCommandError(f"{path} must hold a JSON list of turns", usage=True)
    for index, turn in enumerate(data):
        unknown = sorted(set(turn) - _TURN_FIELDS) if isinstance(turn, dict) else []
        if unknown:
            known = ", ".join(sorted(_TURN_FIELDS))
            raise FakeAgentCommandError(
                f"{path}: turn {index + 1} has unknown field(s) {', '.join(unknown)} "
                f"(known: {known})",
                usage=True,
            )
    try:
        return tuple(msgspec.convert(data, list[ScriptedTurn]))
    except msgspec.ValidationError as exc:
        raise FakeAgentCommandError(f"{path}: {exc}", usage=True) from None


class _Transcript:
    """Turns the fake's events into one printed line each, for people watching a call."""

    def __init__(self, agent: FakeVoiceAgent, echo: Callable[[str], None]) -> None:
        self._agent = agent
        self._echo = echo
        self._seen: set[str] = set()

    def __call__(self, session: FakeSession, direction: str, event: Event) -> None:
        line = self._line(session, direction, event)
        if line is not None:
            number = self._agent.sessions.index(session) + 1
            self._echo(f"[call {number}] {line}")

    def _line(self, session: FakeSession, direction: str, event: Event) -> str | None:
        kind = event.get("type")
        if direction == "received":
            if kind == "tool.result":
                return f"tool result: {event.get('result')}"
            if kind == "session.end":
                return "the caller's side ended the session"
            return None
        if kind == "session.ready":
            if session.session_id in self._seen:
                return "session resumed"
            self._seen.add(session.session_id)
            config = session.config
            tools = ", ".join(t["name"] for t in config["tools"]) or "none"
            return f"session started (voice {config['output']['voice']}; tools: {tools})"
        if kind == "transcript.user":
            return f"caller: {event['text']}"
        if kind == "transcript.agent":
            if event.get("interrupted"):
                said = f'"{event["text"]}…"' if event["text"] else "before its first word"
                return f"agent (cut off by the caller): {said}"
            return f"agent: {event['text']}"
        if kind == "tool.call":
            arguments = event.get("arguments", event.get("args"))
            shown = arguments if isinstance(arguments, str) else json.dumps(arguments)
            return f"agent calls {event['name']} {shown}"
        if kind == "session.error":
            return f"error sent to the client: {event['code']}: {event['message']}"
        if kind == "session.ended":
            return "session ended"
        return None


async def run_fake_agent(
    *,
    port: int,
    api_key: str,
    script: Sequence[ScriptedTurn],
    command: Sequence[str],
    echo: Callable[[str], None],
) -> int:
    """Serve the fake until a signal (or, given a command, until that command exits).

    The command runs with ASSEMBLYAI_AGENT_URL and ASSEMBLYAI_API_KEY pointing at the
    fake; its exit status is returned.
    """
    agent = FakeVoiceAgent(api_key=api_key, script=script)
    agent.observer = _Transcript(agent, echo)
    try:
        await agent.start(port=port)
    except OSError as exc:
        raise FakeAgentCommandError(
            f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}"
        ) from None
    try:
        settings = {"ASSEMBLYAI_AGENT_URL": agent.url, "ASSEMBLYAI_API_KEY": api_key}
        if not command:
            echo("fake Voice Agent API listening; point the server at it with:")
            for name, value in settings.items():
                echo(f"export {name}={value}")
            await _until_signal()
            return 0
        echo(f"fake Voice Agent API listening at {agent.url}; running {' '.join(command)} with")
        for name, value in settings.items():
            echo(f"  {name}={value}")
        return await _run_command(command, {**os.environ, **settings})
    finally:
        await agent.stop()
        for violation in agent.violations:
            echo(f"protocol violation by the client: {violation}")


async def _until_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _run_command(command: Sequence[str], env: dict[str, str]) -> int:
    # The command gets a process group of its own, and every SIGINT (Ctrl-C) or SIGTERM
    # sent here is passed on to that whole group: `make serve` is make, a shell and the
    # server, and make does not pass a signal on to the server by itself.
    try:
        child = await asyncio.create_subprocess_exec(*command, env=env, process_group=0)
    except OSError as exc:
        raise FakeAgentCommandError(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    loop = asyncio.get_running_loop()

    def forward(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, forward, signum)
    try:
        status = await child.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if child.returncode is None:  # cancelled while the command still runs
            forward(signal.SIGKILL)
            await child.wait()
    return status if status >= 0 else 128 - status
