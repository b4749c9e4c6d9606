"""Several bots as a user configures them (CALLBRIDGE_BOTS, CALLBRIDGE_NUMBERS): the
installed `callbridge` command starts with all of them, or stops with one line naming
the bot, the field and the limit of an option outside the API's limits."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.test_bot_command import CALLBRIDGE, serve_env, serve_until_listening

BOTS = """\
from callbridge import Bot, SessionOptions, TurnDetection

sales = Bot(system_prompt="You sell bikes.", options=SessionOptions(keyterms=["Brompton"]))
support = Bot(
    system_prompt="You fix bikes.",
    options=SessionOptions(turn_detection=TurnDetection(vad_threshold={vad})),
)
"""


def refusal(folder: Path, **env: str) -> str:
    """`callbridge serve` must exit 2 with one line, returned here."""
    result = subprocess.run(
        [CALLBRIDGE, "serve"],
        cwd=folder,
        env={**serve_env(folder, "callbridge.bot:bot"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_an_option_out_of_range_stops_start_up_naming_bot_field_and_limit(
    tmp_path: Path,
) -> None:
    (tmp_path / "shopbots.py").write_text(BOTS.format(vad=1.5))
    line = refusal(
        tmp_path,
        CALLBRIDGE_BOTS="sales=shopbots:sales support=shopbots:support",
        CALLBRIDGE_NUMBERS="+15551230001=sales",
    )
    assert line.startswith("callbridge: configuration error: CALLBRIDGE_BOTS: bot 'sales' ")
    assert "shopbots.py, line 4: SessionOptionError: " in line
    assert "input.turn_detection.vad_threshold: a number from 0 to 1 (got 1.5)" in line


def test_the_default_bots_option_out_of_range_names_callbridge_bot(tmp_path: Path) -> None:
    (tmp_path / "shopbots.py").write_text(BOTS.format(vad=-1))
    line = refusal(tmp_path, CALLBRIDGE_BOT="shopbots:support")
    assert line.startswith("callbridge: configuration error: CALLBRIDGE_BOT: ")
    assert "input.turn_detection.vad_threshold: a number from 0 to 1 (got -1)" in line


def test_a_number_given_to_a_bot_not_named_stops_start_up(tmp_path: Path) -> None:
    line = refusal(tmp_path, CALLBRIDGE_NUMBERS="+15551230001=sales")
    assert line == (
        "callbridge: configuration error: CALLBRIDGE_NUMBERS: +15551230001 is given to bot "
        "'sales', which CALLBRIDGE_BOTS does not name (named: default)"
    )


async def test_the_server_starts_with_every_bot(tmp_path: Path) -> None:
    (tmp_path / "shopbots.py").write_text(BOTS.format(vad=0.4))
    (tmp_path / ".env").write_text(
        "CALLBRIDGE_BOTS=sales=shopbots:sales support=./shopbots.py:support\n"
        "CALLBRIDGE_NUMBERS=+15551230001=sales,+15551230002=support\n"
    )
    logged = await serve_until_listening(tmp_path, "callbridge.bot:bot")
    assert '"bots":["default","sales","support"]' in logged.replace(" ", "")
    assert '"numbers":2' in logged.replace(" ", "")
