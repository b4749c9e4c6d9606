"""`callbridge fake-agent`: the shipped fake on loopback, scripted, driving a real server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callbridge.bot import bot
from callbridge.testing import FakeTwilioRest, FakeVoiceAgent, TwilioSimulator
from callbridge.testing import audio as audio_module
from callbridge.testing.fake_agent import FakeVoiceAgent as FakeVoiceAgentClass
from callbridge.testing.twilio_rest_fake import FakeTwilioRest as FakeTwilioRestClass
from callbridge.testing.twilio_simulator import TwilioSimulator as TwilioSimulatorClass
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, ServerFactory


async def start_fake_agent(folder: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callbridge.cli",
        "fake-agent",
        *args,
        cwd=folder,
        env={"PATH": os.environ.get("PATH", "")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_line_matching(
    proc: asyncio.subprocess.Process, pattern: str, seen: list[str]
) -> re.Match[str]:
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, f"fake-agent exited before printing {pattern!r}:\n" + "".join(seen)
        seen.append(line)
        match = re.search(pattern, line)
        if match is not None:
            return match


@pytest.fixture
async def stop_afterwards() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    processes: list[asyncio.subprocess.Process] = []
    yield processes
    for proc in processes:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_the_doubles_are_exported_where_users_look() -> None:
    assert FakeVoiceAgent is FakeVoiceAgentClass
    assert TwilioSimulator is TwilioSimulatorClass
    assert FakeTwilioRest is FakeTwilioRestClass
    # ...and only on first use: the audio helpers alone pull in no server code.
    code = (
        "import sys, callbridge.testing.audio; "
        "assert 'callbridge.testing.fake_agent' not in sys.modules; "
        "assert 'aiohttp' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert audio_module.SAMPLE_RATE == 8000


async def test_a_scripted_fake_agent_talks_to_a_real_server(
    start_server: ServerFactory,
    tmp_path: Path,
    stop_afterwards: list[asyncio.subprocess.Process],
) -> None:
    script = tmp_path / "turns.json"
    script.write_text(
        json.dumps(
            [
                {
                    "user_text": "Roll a die for me.",
                    "tool_name": "generate_random_number",
                    "tool_arguments": {"minimum": 6, "maximum": 6},
                    "after_tool": "You rolled a {result}.",
                },
                {"user_text": "Thanks, bye!", "reply": "Goodbye!"},
            ]
        )
    )
    proc = await start_fake_agent(tmp_path, "--script", str(script), "--api-key", "k-123")
    stop_afterwards.append(proc)
    seen: list[str] = []
    url = (await read_line_matching(proc, r"^export ASSEMBLYAI_AGENT_URL=(\S+)$", seen))[1]
    key = (await read_line_matching(proc, r"^export ASSEMBLYAI_API_KEY=(\S+)$", seen))[1]
    assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/v1/ws", url)
    assert key == "k-123"
    server = await start_server(assemblyai_agent_url=url, assemblyai_api_key=key)
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        call = await sim.place_inbound_call()
        await call.wait_started()
        assert await call.wait_for_quiet()
        await read_line_matching(proc, re.escape(f"[call 1] agent: {bot.greeting}"), seen)
        call.speak(audio_module.tone(440, 400))
        await read_line_matching(proc, r"\[call 1\] caller: Roll a die for me\.$", seen)
        await read_line_matching(
            proc,
            re.escape('[call 1] agent calls generate_random_number {"minimum": 6, "maximum": 6}'),
            seen,
        )
        await read_line_matching(proc, r"\[call 1\] tool result: 6$", seen)
        await read_line_matching(proc, r"\[call 1\] agent: You rolled a 6\.$", seen)
        call.speak(audio_module.tone(440, 400))
        await read_line_matching(proc, r"\[call 1\] caller: Thanks, bye!$", seen)
        await read_line_matching(proc, r"\[call 1\] agent: Goodbye!$", seen)
        await call.hangup()
        await read_line_matching(proc, r"\[call 1\] session ended$", seen)
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert not [line for line in seen if "violation" in line]


async def test_a_command_runs_against_the_fake_and_its_status_is_returned(
    tmp_path: Path,
) -> None:
    show = "import os, sys; print(os.environ['ASSEMBLYAI_AGENT_URL'], "
    show += "os.environ['ASSEMBLYAI_API_KEY']); sys.exit(3)"
    proc = await start_fake_agent(tmp_path, "--", sys.executable, "-c", show)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 3, err.decode()
    assert re.search(r"^ws://127\.0\.0\.1:\d+/v1/ws fake-agent-key$", out.decode(), re.M)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{", "is not valid JSON"),
        ('{"user_text": "hi"}', "must hold a JSON list of turns"),
        ('[{"user": "hi"}]', "turn 1 has unknown field(s) user"),
        ('[{"reply": 3}]', "Expected `str`, got `int` - at `$[0].reply`"),
    ],
    ids=["not-json", "not-a-list", "unknown-field", "wrong-type"],
)
async def test_a_bad_script_is_refused_with_the_reason(
    tmp_path: Path, content: str, reason: str
) -> None:
    script = tmp_path / "turns.json"
    script.write_text(content)
    proc = await start_fake_agent(tmp_path, "--script", str(script))
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert reason in err.decode()
    assert err.decode().count("\n") == 1
