"""Tools: definitions from type hints, argument validation, every way a tool can fail."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, create_model

from callbridge.bot import Bot, BotLoadError, bot, load_bot
from callbridge.tools import Tool, ToolError, run_tool, tool


class Address(BaseModel):
    street: str
    city: str


@tool(timeout_seconds=5)
async def book(day: Literal["mon", "tue"], party: int = 2, title: str = "") -> dict[str, object]:
    """Book a table.

    Second paragraph is not part of the description.
    """
    return {"day": day, "party": party}


@tool
def ship(address: Address) -> str:
    """Ship to an address."""
    return address.city


def test_definition_is_flat_and_complete() -> None:
    definition = book.definition()
    assert definition["type"] == "function"
    assert definition["name"] == "book"
    assert definition["description"] == "Book a table."
    assert definition["timeout_seconds"] == 5
    params = definition["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["day"]
    assert params["properties"]["day"]["enum"] == ["mon", "tue"]
    assert params["properties"]["party"] == {"type": "integer", "default": 2}
    # A parameter called "title" survives the removal of pydantic's schema titles.
    assert "title" in params["properties"]
    assert "title" not in params["properties"]["party"]


def test_nested_models_work() -> None:
    assert "$defs" in ship.definition()["parameters"]


async def test_async_tool_result_is_json() -> None:
    outcome = await run_tool(book, {"day": "mon"})
    assert not outcome.is_error
    assert json.loads(outcome.result) == {"day": "mon", "party": 2}


async def test_sync_tool_runs_off_the_event_loop() -> None:
    seen: list[str] = []

    @tool
    def where() -> str:
        """Report the thread."""
        seen.append(threading.current_thread().name)
        return "ok"

    outcome = await run_tool(where, {})
    assert outcome.result == '"ok"'
    assert seen and seen[0] != threading.main_thread().name


@pytest.mark.parametrize(
    "arguments",
    [{}, {"day": "sun"}, {"day": "mon", "party": "many"}, {"day": "mon", "extra": 1}],
)
async def test_invalid_arguments_are_an_error_result(arguments: dict[str, object]) -> None:
    outcome = await run_tool(book, arguments)
    assert outcome.is_error
    assert outcome.result.startswith("invalid arguments")


async def test_raising_tool_is_an_error_result_with_the_exception_kept() -> None:
    @tool
    def broken() -> None:
        """Always fails."""
        raise KeyError("secret internals")

    outcome = await run_tool(broken, {})
    assert outcome.is_error
    assert outcome.result == "broken failed"
    assert isinstance(outcome.failure, KeyError)


async def test_tool_error_message_reaches_the_model() -> None:
    @tool
    def closed() -> None:
        """Always closed."""
        raise ToolError("we are closed on Sundays")

    outcome = await run_tool(closed, {})
    assert (outcome.result, outcome.is_error) == ("we are closed on Sundays", True)


async def test_slow_tool_times_out_below_its_declared_timeout() -> None:
    @tool(timeout_seconds=1)
    async def slow() -> None:
        """Never finishes."""
        await asyncio.Event().wait()

    assert slow.run_timeout < 1
    outcome = await run_tool(slow, {})
    assert outcome.is_error and "timed out" in outcome.result


def test_tool_needs_type_hints_and_sane_timeout() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(TypeError, match="needs a type hint"):
        tool(untyped)
    with pytest.raises(ValueError, match="timeout_seconds"):
        tool(timeout_seconds=0)(ship.function)


def test_default_bot_session_config_is_pcmu_both_ways() -> None:
    inbound = bot.session_config("inbound")
    assert inbound["input"] == {"format": {"encoding": "audio/pcmu"}}
    assert inbound["output"]["format"] == {"encoding": "audio/pcmu"}
    assert inbound["greeting"] == bot.greeting
    assert [t["name"] for t in inbound["tools"]] == ["generate_random_number", "end_call"]
    outbound = bot.session_config("outbound", voice="eve")
    assert outbound["system_prompt"] == bot.outbound_prompt
    assert outbound["greeting"] == bot.outbound_greeting
    assert outbound["output"]["voice"] == "eve"


def test_bot_without_greeting_omits_the_field() -> None:
    quiet = Bot(system_prompt="listen")
    assert "greeting" not in quiet.session_config("inbound")


def test_duplicate_tool_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Bot(system_prompt="x", tools=(ship, ship))


def test_load_bot() -> None:
    assert load_bot("callbridge.bot:bot") is bot
    for spec, message in [
        ("callbridge.bot", "expected"),
        ("no.such.module:bot", "no module named 'no.such.module'"),
        ("callbridge.bot:nothing", "no attribute"),
        ("callbridge.bot:SYSTEM_PROMPT", "is a str, not a callbridge.Bot"),
        ("callbridge.bot:Bot", "the Bot class itself"),
        ("callbridge.bot:bot:", "expected"),
    ]:
        with pytest.raises(BotLoadError, match=message):
            load_bot(spec)


class Basket:  # a plain class: pydantic cannot validate it, the agent cannot be asked for it
    pass


@pytest.mark.parametrize(
    ("hint", "shown"),
    [
        (Callable[[str], None], "Callable[[str], None]"),
        (Basket, "Basket"),
        (list[Basket], "list[Basket]"),
        (Basket | None, "Basket | None"),
    ],
)
def test_a_parameter_type_without_json_schema_fails_when_the_tool_is_made(
    hint: Any, shown: str
) -> None:
    def notify(when: str, target: Any = None) -> None:
        """Notify."""

    notify.__annotations__["target"] = hint
    with pytest.raises(TypeError) as caught:
        tool(notify)
    message = str(caught.value)
    assert message.startswith(f"tool notify: parameter 'target' has type {shown}, which cannot")
    assert "arbitrary_types_allowed" not in message


def test_a_tool_made_by_hand_builds_its_schema_at_once() -> None:
    model = create_model("notify_arguments", callback=(Callable[[str], None], ...))
    with pytest.raises(TypeError, match="tool notify: its parameters cannot be described"):
        Tool(name="notify", description="Notify.", function=print, arguments_model=model)


def test_definition_hands_out_a_copy_of_the_schema() -> None:
    book.definition()["parameters"]["properties"].clear()
    assert "day" in book.definition()["parameters"]["properties"]


def test_bot_tools_must_be_tools() -> None:
    def opening_hours(day: str) -> str:
        return day

    with pytest.raises(TypeError, match="opening_hours is a plain function; put @tool"):
        Bot(system_prompt="x", tools=(book, opening_hours))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected @tool functions, got str 'book'"):
        Bot(system_prompt="x", tools=("book",))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tuple or list of tools"):
        Bot(system_prompt="x", tools=book)  # type: ignore[arg-type]
    assert Bot(system_prompt="x", tools=[book, ship]).tools == (book, ship)


def test_load_bot_from_a_folder_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    source = "from callbridge import Bot\nbot = Bot(system_prompt='from a file')\n"
    (tmp_path / "own_bot_in_folder.py").write_text(source)
    (tmp_path / "json.py").write_text(source)  # named like a module already imported
    try:
        assert load_bot("own_bot_in_folder:bot", tmp_path).system_prompt == "from a file"
        assert load_bot("json.py:bot", tmp_path).system_prompt == "from a file"
        assert load_bot(f"{tmp_path}/json.py:bot").system_prompt == "from a file"
        assert sys.modules["json"] is json  # not replaced by the bot file
    finally:
        sys.modules.pop("own_bot_in_folder", None)


def test_a_bot_file_that_fails_leaves_no_half_imported_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "broken_bot_file.py").write_text("raise RuntimeError('no database')\n")
    before = set(sys.modules)
    with pytest.raises(BotLoadError, match=r"broken_bot_file.py, line 1: RuntimeError: no da"):
        load_bot("broken_bot_file.py:bot", tmp_path)
    assert set(sys.modules) == before
