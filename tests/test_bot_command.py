"""`CALLBRIDGE_BOT` as a user sets it: the installed `callbridge` command, run in a folder
that holds the user's bot, starts with it or stops with one line saying what is wrong."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port
from tests.test_cli import clean_env

# The console script, as `make serve` runs it: unlike `python -m`, it does not put the
# current folder on the import path by itself.
CALLBRIDGE = Path(sys.executable).parent / "callbridge"

SHOP_BOT = '''\
import sys

from callbridge import Bot, tool


@tool
def opening_hours(day: str) -> str:
    """Tell the caller when the shop is open."""
    return "9 to 5"


bot = Bot(system_prompt="You answer the phone of a bike shop.", tools=(opening_hours,))
'''
SAYS_WHERE = 'print(f"shop bot imported from {__file__}", file=sys.stderr, flush=True)\n'


def serve_env(folder: Path, bot: str) -> dict[str, str]:
    return clean_env(folder, CALLBRIDGE_BOT=bot, HOST="127.0.0.1", PORT=str(free_port()))


async def serve_until_listening(folder: Path, bot: str) -> str:
    """Start `callbridge serve` in `folder`, wait until it listens and answers /healthz,
    stop it, and return what it logged up to listening."""
    assert CALLBRIDGE.is_file(), f"{CALLBRIDGE} is missing: run make install"
    env = serve_env(folder, bot)
    proc = await asyncio.create_subprocess_exec(
        CALLBRIDGE, "serve", cwd=folder, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    logged = ""
    try:
        while '"server.listening"' not in logged:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, f"server exited before listening: {logged}"
            logged += line
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{env['PORT']}/healthz") as response,
        ):
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        await proc.stderr.read()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return logged


def refusal(folder: Path, bot: str) -> str:
    """Run `callbridge serve` in `folder`; it must exit 2 with one line, returned here."""
    assert CALLBRIDGE.is_file(), f"{CALLBRIDGE} is missing: run make install"
    result = subprocess.run(
        [CALLBRIDGE, "serve"],
        cwd=folder,
        env=serve_env(folder, bot),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("callbridge: configuration error: CALLBRIDGE_BOT: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("where", "spec"),
    [
        ("mybot.py", "mybot:bot"),  # the README's form, run from the bot's folder
        ("bots/shop.py", "./bots/shop.py:bot"),
        ("bots/shop.py", "bots/shop.py:bot"),
        ("bots/shop.py", "{folder}/bots/shop.py:bot"),  # an absolute path
    ],
)
async def test_own_bot_starts_from_the_folder_the_command_runs_in(
    tmp_path: Path, where: str, spec: str
) -> None:
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).write_text(SHOP_BOT + SAYS_WHERE)
    logged = await serve_until_listening(tmp_path, spec.format(folder=tmp_path))
    assert f"shop bot imported from {tmp_path / where}" in logged


def test_a_bot_file_imports_the_modules_beside_it(tmp_path: Path) -> None:
    (tmp_path / "bots").mkdir()
    (tmp_path / "bots" / "hours.py").write_text("raise RuntimeError('hours module imported')\n")
    (tmp_path / "bots" / "shop.py").write_text("import hours\n")
    line = refusal(tmp_path, "bots/shop.py:bot")
    assert "hours.py, line 1: RuntimeError: hours module imported" in line


def test_a_syntax_error_in_the_bot_names_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "mybot.py").write_text("from callbridge import Bot\n\nbot = Bot(\n")
    line = refusal(tmp_path, "mybot:bot")
    assert "mybot.py, line 3: SyntaxError: '(' was never closed" in line
    assert "No module named" not in line
    line = refusal(tmp_path, "./mybot.py:bot")
    assert "mybot.py, line 3: SyntaxError: '(' was never closed" in line


def test_an_exception_raised_by_the_bot_at_import_is_shown(tmp_path: Path) -> None:
    (tmp_path / "mybot.py").write_text("import os\n\nSHOP_DB = os.environ['SHOP_DB_URL']\n")
    line = refusal(tmp_path, "mybot:bot")
    assert "cannot import 'mybot': mybot.py, line 3: KeyError: 'SHOP_DB_URL'" in line


def test_a_missing_dependency_of_the_bot_is_not_mistaken_for_the_bot(tmp_path: Path) -> None:
    (tmp_path / "mybot.py").write_text("import shop_backend_client\n")
    line = refusal(tmp_path, "mybot:bot")
    assert "mybot.py, line 1: ModuleNotFoundError: No module named 'shop_backend_client'" in line


@pytest.mark.parametrize("spec", ["nosuchbot:bot", "./nosuchbot.py:bot"])
def test_a_bot_that_does_not_exist_says_so(tmp_path: Path, spec: str) -> None:
    line = refusal(tmp_path, spec)
    if spec.endswith(".py:bot"):
        assert f"no such file: {tmp_path.resolve() / 'nosuchbot.py'}" in line
    else:
        assert f"no module named 'nosuchbot' in {tmp_path}" in line
        assert "path/to/nosuchbot.py:bot" in line


def test_a_missing_attribute_or_one_that_is_not_a_bot_is_named(tmp_path: Path) -> None:
    (tmp_path / "mybot.py").write_text(SHOP_BOT)
    line = refusal(tmp_path, "mybot:shop")
    assert "module 'mybot' (mybot.py) has no attribute 'shop'; its Bots: bot" in line
    line = refusal(tmp_path, "mybot:opening_hours")
    assert "mybot:opening_hours is a Tool, not a callbridge.Bot" in line


BAD_TOOLS = {
    "callable": (
        "from collections.abc import Callable",
        "def notify(when: str, callback: Callable[[str], None]) -> str:",
        "tool notify: parameter 'callback' has type Callable[[str], None], which cannot be "
        "described to the agent as JSON Schema",
    ),
    "custom class": (
        "class Basket:\n    pass",
        "def checkout(basket: Basket) -> str:",
        "tool checkout: parameter 'basket' has type Basket, which cannot be described",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TOOLS))
def test_a_tool_parameter_without_json_schema_stops_start_up(tmp_path: Path, case: str) -> None:
    prelude, signature, expected = BAD_TOOLS[case]
    (tmp_path / "mybot.py").write_text(
        f"from callbridge import Bot, tool\n{prelude}\n\n\n"
        f"@tool\n{signature}\n    return 'ok'\n\n\n"
        f"bot = Bot(system_prompt='x', tools=({signature.split()[1].split('(')[0]},))\n"
    )
    line = refusal(tmp_path, "mybot:bot")
    assert expected in line
    assert "mybot.py, line " in line  # the line of the @tool
    assert "arbitrary_types_allowed" not in line  # pydantic's advice is for pydantic users


def test_an_undecorated_function_in_tools_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "mybot.py").write_text(
        "from callbridge import Bot\n\n\n"
        "def opening_hours(day: str) -> str:\n    return '9 to 5'\n\n\n"
        "bot = Bot(system_prompt='x', tools=(opening_hours,))\n"
    )
    line = refusal(tmp_path, "mybot:bot")
    assert (
        "mybot.py, line 8: TypeError: Bot(tools=...): opening_hours is a plain function; "
        "put @tool on the line above its def"
    ) in line
