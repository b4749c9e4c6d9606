"""Call records end to end: a simulated call produces the record the API and CLI show, with
what the caller actually heard measured by the playout ledger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from callbridge.bot import Bot, bot, generate_random_number
from callbridge.server.call_runner import CallRunner
from callbridge.server.state import APP_STATE
from callbridge.testing.audio import silence, tone
from callbridge.testing.fake_agent import FakeVoiceAgent, ScriptedTurn
from callbridge.testing.twilio_simulator import TwilioSimulator
from tests.conftest import (
    AUTH_TOKEN,
    PUBLIC_URL,
    RunningServer,
    ServerFactory,
    free_port,
)
from tests.helpers.records import fetch_record
from tests.helpers.server_process import serve_env, start_serve

GREETING = "Hello, records test."
BOT = Bot(system_prompt="x", greeting=GREETING, tools=(generate_random_number,))


def agent_line_on_disk(folder: Path, text: str) -> bool:
    """The agent's transcript line `text` is in the spool or the database (not merely
    the greeting in the session's configuration, which comes first)."""
    needle = msgspec.json.encode({"role": "agent", "text": text})[1:-1]
    if any(needle in f.read_bytes() for f in folder.glob("spool.jsonl*") if f.is_file()):
        return True
    try:
        with contextlib.closing(sqlite3.connect(f"file:{folder}/calls.db?mode=ro", uri=True)) as db:
            row = db.execute(
                "SELECT 1 FROM callbridge_transcript_entries WHERE text = ?", (text,)
            ).fetchone()
    except sqlite3.Error:
        return False
    return row is not None


async def until_agent_line_on_disk(folder: Path, text: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if agent_line_on_disk(folder, text):
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"the agent's line {text!r} never reached the spool or the database")


def live_runner(server: RunningServer) -> CallRunner:
    [runner] = server.app[APP_STATE].registry.live.values()
    return runner


async def test_a_full_call_produces_the_expected_record(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    server = await start_server(bot=BOT, assemblyai_agent_url=fake_agent.url)
    fake_agent.turns.append(
        ScriptedTurn(
            user_text="a number please",
            tool_name="generate_random_number",
            tool_arguments={"minimum": 7, "maximum": 7},
            after_tool="It is {result}.",
        )
    )
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        call = await sim.place_inbound_call(from_="+15550004444")
        session = await fake_agent.wait_for_session()
        greeting = fake_agent.reply_audio_for(GREETING)
        await call.wait_heard(len(greeting))
        call.speak(tone(300, 300) + silence(500))
        await session.wait_sent(
            lambda e: e["type"] == "transcript.agent" and e.get("text") == "It is 7.", timeout=10
        )
        runner = live_runner(server)
        # Three replies (greeting, the tool's silent pre-amble, the answer) each end with a
        # mark; once the third is sent and everything queued has played, all are settled.
        end_marks: list[dict[str, Any]] = []
        await call.wait_received(
            lambda f: (
                f["event"] == "mark"
                and f["mark"]["name"].endswith(":end")
                and (end_marks.append(f) or len(end_marks) == 3)
            ),
            timeout=10,
        )
        await call.wait_playback_idle(timeout=10)
        await call.hangup()
        await asyncio.wait_for(runner.done.wait(), 10)
    record = await fetch_record(server, call.call_sid)

    assert record["direction"] == "inbound"
    assert record["from_number"] == "+15550004444"
    assert record["ended_by"] == "caller"
    assert record["end_reason"] == "stream-stopped"
    assert [s["session_id"] for s in record["agent_sessions"]] == [session.session_id]
    lines = [(t["role"], t["text"]) for t in record["transcript"]]
    # The tool's silent pre-amble said nothing: no (empty) line of its own.
    assert lines == [("agent", GREETING), ("caller", "a number please"), ("agent", "It is 7.")]
    assert lines[0] == ("agent", GREETING)
    assert ("caller", "a number please") in lines
    assert lines[-1] == ("agent", "It is 7.")
    first = record["transcript"][0]
    # The whole greeting was played, as Twilio's marks confirmed.
    assert first["heard_seconds"] == first["generated_seconds"] == len(greeting) / 8000
    assert first["interrupted"] is False
    [tool] = record["tool_calls"]
    assert (tool["name"], tool["arguments"], tool["result"]) == (
        "generate_random_number",
        {"minimum": 7, "maximum": 7},
        "7",
    )
    assert tool["is_error"] is False and tool["duration_ms"] is not None
    latencies = record["turn_latencies"]
    assert latencies, "no turn latency recorded"
    sent, played = latencies[0]["to_first_audio_sent_ms"], latencies[0]["to_first_audio_played_ms"]
    assert sent is not None and played is not None and 0 <= sent <= played
    # The turn's first audio was the pre-amble's silence; its first words, the answer's.
    assert latencies[0]["to_first_audible_sent_ms"] is None
    [words] = [lat for lat in latencies if lat["to_first_audible_sent_ms"] is not None]
    assert words["reply_id"] == record["transcript"][-1]["reply_id"]
    audible_played = words["to_first_audible_played_ms"]
    assert audible_played is not None and sent < words["to_first_audible_sent_ms"] <= audible_played
    audio = record["audio"]
    assert audio["frames_from_twilio"] > 0 and audio["frames_to_twilio"] > 0
    assert audio["frames_to_agent"] > 0


async def test_barge_in_record_has_the_heard_duration_of_what_was_played(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    long_greeting = "This greeting is long enough to be interrupted well before it ends."
    server = await start_server(
        bot=Bot(system_prompt="x", greeting=long_greeting), assemblyai_agent_url=fake_agent.url
    )
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        call = await sim.place_inbound_call()
        session = await fake_agent.wait_for_session()
        await call.wait_heard(8000)  # a second of the greeting
        call.speak(tone(440, 400) + silence(600))
        await call.wait_received("clear")
        await call.wait_playback_idle()
        played_before_clear = len(call.heard)
        runner = live_runner(server)
        await session.wait_sent(lambda e: e["type"] == "reply.done")
        await call.hangup()
        await asyncio.wait_for(runner.done.wait(), 10)
    record = await fetch_record(server, call.call_sid)
    assert record["ended_by"] == "caller"
    greeting = record["transcript"][0]
    assert greeting["role"] == "agent" and greeting["interrupted"] is True
    assert greeting["generated_seconds"] > greeting["heard_seconds"]
    # Marks every quarter second plus the time since the last one: within 100 ms.
    assert abs(greeting["heard_seconds"] - played_before_clear / 8000) < 0.1


@pytest.mark.slow
async def test_server_killed_mid_call_closes_the_call_as_interrupted_on_restart(
    fake_agent: FakeVoiceAgent, tmp_path: Path
) -> None:
    port = free_port()
    env = serve_env(fake_agent.url, port, tmp_path, CALLBRIDGE_INSTANCE_ID="instance-a")
    first = await start_serve(env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    sim = TwilioSimulator(url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)
    call = await sim.place_inbound_call()
    session = await fake_agent.wait_for_session()
    await session.wait_sent("reply.done", timeout=10)  # the greeting: entries were made
    # Killed only once the greeting's transcript is on disk (spool, or already in the database).
    await until_agent_line_on_disk(tmp_path, bot.greeting or "")
    first.send_signal(signal.SIGKILL)
    await first.wait()
    await sim.close()

    second = await start_serve(env, tmp_path)
    try:
        shown = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "callbridge.cli",
            "calls",
            "show",
            call.call_sid,
            "--json",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await shown.communicate()
        assert shown.returncode == 0
        record = json.loads(out)
        assert record["ended_by"] == "restart"
        assert record["end_reason"] == "interrupted by restart"
        assert record["transcript"][0]["text"] == bot.greeting
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
