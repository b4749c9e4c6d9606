"""The `callbridge` command as a user runs it: a real process, real exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from tests.conftest import free_port

CALLBRIDGE = [sys.executable, "-m", "callbridge.cli"]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    configured = {"TWILIO_AUTH_TOKEN": "t" * 32, "PUBLIC_URL": "https://bridge.example"}
    return {**keep, "LOG_FORMAT": "json", **configured, **extra}


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CALLBRIDGE, *args],
        cwd=tmp_path,  # no stray .env from the developer's checkout
        env=clean_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"ASSEMBLYAI_AGENT_URL": "http://agents.example"}, "ASSEMBLYAI_AGENT_URL"),
        ({"PUBLIC_URL": "example.ngrok.app"}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "http://example.ngrok.app"}, "PUBLIC_URL"),  # Twilio needs wss://
        ({"TWILIO_PHONE_NUMBER": "555-1234"}, "TWILIO_PHONE_NUMBER"),
        ({"AGENT_VOICE": "Alba"}, "AGENT_VOICE"),
        ({"CALLBRIDGE_BOT": "no.such.module:bot"}, "CALLBRIDGE_BOT"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({"CALLBRIDGE_AGENT_TRANSPORT": "websockets"}, "CALLBRIDGE_AGENT_TRANSPORT"),
        ({"CALLBRIDGE_MEDIA_STREAM_TRANSPORT": "ws"}, "CALLBRIDGE_MEDIA_STREAM_TRANSPORT"),
    ],
)
def test_invalid_configuration_exits_2_naming_the_variable(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    result = run_cli(tmp_path, "serve", **env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("callbridge: configuration error:")
    assert variable in lines[0]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CALLBRIDGE_SPOOL_PATH": "no-such-folder/spool.jsonl"}, "CALLBRIDGE_SPOOL_PATH"),
        ({"DATABASE_URL": "sqlite:///no-such-folder/calls.db"}, "DATABASE_URL"),
    ],
)
def test_unusable_record_paths_stop_start_up_cleanly(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    result = run_cli(tmp_path, "serve", PORT=str(free_port()), **env)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"callbridge: configuration error: {variable}:"), result.stderr
    assert "no-such-folder" in last
    # What had started before the failure was closed: no warnings from the interpreter.
    assert "Unclosed" not in result.stderr and "Traceback" not in result.stderr


def test_server_refuses_to_start_without_auth_token(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "serve", TWILIO_AUTH_TOKEN="")
    assert result.returncode == 2
    assert "TWILIO_AUTH_TOKEN" in result.stderr
    assert "CALLBRIDGE_INSECURE_SKIP_SIGNATURES" in result.stderr
    result = run_cli(tmp_path, "serve", PUBLIC_URL="")
    assert result.returncode == 2
    assert "PUBLIC_URL" in result.stderr


def test_config_command_masks_secrets(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        "config",
        "--json",
        ASSEMBLYAI_API_KEY="aai-secret-value",
        TWILIO_AUTH_TOKEN="twilio-secret-value",
        DATABASE_URL="postgresql://app:db-secret-value@db.internal/calls",
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["ASSEMBLYAI_API_KEY"] == "<set, hidden>"
    assert shown["DATABASE_URL"] == "postgresql://app:***@db.internal/calls"
    assert shown["SIGNATURES_CHECKED"] is True
    assert "secret-value" not in result.stdout + result.stderr


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PORT=not-a-port\n")
    result = run_cli(tmp_path, "serve")
    assert result.returncode == 2
    assert "PORT" in result.stderr


def test_container_hostname_is_not_mistaken_for_a_url(tmp_path: Path) -> None:
    from callbridge.config import Settings

    assert Settings(_env_file=None, hostname="3f2a9c1d7e4b").public_url is None  # type: ignore[call-arg]
    from_url = Settings(_env_file=None, hostname="https://x.ngrok.app/")  # type: ignore[call-arg]
    assert from_url.public_url == "https://x.ngrok.app"


@pytest.fixture
def server_without_key(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    proc = subprocess.Popen(
        [*CALLBRIDGE, "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(tmp_path, PUBLIC_URL="https://bridge.example"),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if '"server.listening"' in line:
            assert json.loads(line)["media_streams"] == "picows", line  # the default
            break
    else:
        pytest.fail(f"server did not start: {''.join(lines)}")
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_server_without_api_key_starts_unready_and_apologises(
    server_without_key: tuple[subprocess.Popen[str], str],
) -> None:
    proc, base = server_without_key
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 503
            body = await response.json()
            assert body["ready"] is False
            assert "ASSEMBLYAI_API_KEY is not set" in body["reasons"]
        async with http.post(f"{base}/twiml", data={"CallSid": "CA1"}) as response:
            assert response.status == 403  # unsigned
        signature = RequestValidator("t" * 32).compute_signature(
            "https://bridge.example/twiml", {"CallSid": "CA1"}
        )
        async with http.post(
            f"{base}/twiml", data={"CallSid": "CA1"}, headers={"X-Twilio-Signature": signature}
        ) as response:
            twiml = await response.text()
    assert "<Say>" in twiml and "<Hangup />" in twiml and "<Stream" not in twiml
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert proc.stderr is not None
    rest = proc.stderr.read()
    events = [json.loads(line)["event"] for line in rest.splitlines() if line.startswith("{")]
    assert "call.refused" in events
    assert "webhook.refused" in events
    assert "t" * 32 not in rest


def test_a_taken_port_stops_start_up_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(tmp_path, "serve", HOST="127.0.0.1", PORT=str(port))
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr, (
        result.stderr
    )


def test_misspelt_variables_get_one_warning_line_each(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CALLBRIDGE_SPOL_PATH=spool.jsonl\nTWILIO_EDGE=dublin\n")
    result = run_cli(tmp_path, "config", "--json", TWILIO_AUTH_TOKN="x", TWILIO_REGION="ie1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "callbridge: warning: CALLBRIDGE_SPOL_PATH (in .env) is not a callbridge setting and "
        "is ignored; did you mean CALLBRIDGE_SPOOL_PATH?",
        "callbridge: warning: TWILIO_AUTH_TOKN (in environment) is not a callbridge setting "
        "and is ignored; did you mean TWILIO_AUTH_TOKEN?",
    ]
    assert json.loads(result.stdout)["CALLBRIDGE_SPOOL_PATH"] == "callbridge-spool.jsonl"


def test_a_refused_start_shows_the_misspelt_name_before_the_reason(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "serve", TWILIO_AUTH_TOKEN="", TWILIO_AUTH_TOKN="t" * 32)
    assert result.returncode == 2
    warning, refusal = result.stderr.splitlines()
    assert warning.startswith("callbridge: warning: TWILIO_AUTH_TOKN (in environment)")
    assert warning.endswith("did you mean TWILIO_AUTH_TOKEN?")
    assert refusal.startswith("callbridge: configuration error: TWILIO_AUTH_TOKEN: not set")


@contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`callbridge serve` in tmp_path, with the lines it logged until it listened."""
    proc = subprocess.Popen(
        [*CALLBRIDGE, "serve"],
        cwd=tmp_path,
        env=clean_env(tmp_path, HOST="127.0.0.1", PORT=str(free_port()), **env),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            lines.append(line)
            if '"server.listening"' in line:
                break
        else:
            pytest.fail(f"server did not start: {''.join(lines)}")
        yield proc, lines
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def test_a_running_server_logs_each_misspelt_variable_once(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CALLBRIDGE_IDLE_SECS=30\n")
    with serving(tmp_path, CALLBRIDGE_IDLE_SECS="30", TWILIO_REGION="ie1") as (_, lines):
        pass
    assert all(line.startswith("{") for line in lines), lines  # JSON lines only
    logged = [json.loads(line) for line in lines]
    unknown = [entry for entry in logged if entry["event"] == "config.unknown_variable"]
    assert [(u["level"], u["variable"], u["source"], u["hint"]) for u in unknown] == [
        ("warning", "CALLBRIDGE_IDLE_SECS", "environment", "did you mean CALLBRIDGE_IDLE_SECONDS?")
    ]


def test_a_second_server_in_the_same_folder_is_told_what_to_do(tmp_path: Path) -> None:
    with serving(tmp_path):
        second = run_cli(tmp_path, "serve", HOST="127.0.0.1", PORT=str(free_port()))
    assert second.returncode == 2, second.stderr
    last = second.stderr.strip().splitlines()[-1]
    spool = tmp_path / "callbridge-spool.jsonl"
    assert last.startswith(
        f"callbridge: configuration error: CALLBRIDGE_SPOOL_PATH: {spool} is in use"
    )
    assert "start this one from another folder or set its own CALLBRIDGE_SPOOL_PATH" in last
    assert "if the two share a DATABASE_URL, give each its own CALLBRIDGE_INSTANCE_ID" in last
