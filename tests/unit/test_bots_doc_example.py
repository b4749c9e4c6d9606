"""The complete example bot in docs/bots.md loads and does what the page says."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from callbridge import Bot, Call, CallSetup
from callbridge.bot import load_bot
from callbridge.logs import EventLogger
from callbridge.server.bot_setup import decide
from callbridge.tools import run_tool

DOC = Path(__file__).parents[2] / "docs" / "bots.md"


@pytest.fixture(scope="module")
def shop_bot(tmp_path_factory: pytest.TempPathFactory) -> Bot:
    text = DOC.read_text()
    match = re.search(r"<!-- example: crm-bot -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, "docs/bots.md lost its example bot"
    folder = tmp_path_factory.mktemp("docbot")
    (folder / "shopbot_doc.py").write_text(match[1])
    return load_bot("shopbot_doc.py:bot", folder)


def call_from(number: str, **parameters: str) -> CallSetup:
    return CallSetup("c1", "inbound", "CA1", number, "+15552220000", parameters=parameters)


async def test_the_example_bot_decides_each_call(shop_bot: Bot) -> None:
    log = EventLogger("test")
    blocked = await decide(shop_bot, call_from("+15550009999"), None, 2.0, log)
    assert (blocked.outcome, blocked.detail) == ("refused", "rejected")
    stranger = await decide(shop_bot, call_from("+15550002222"), None, 2.0, log)
    assert stranger.outcome == "defaults"
    alice = await decide(shop_bot, call_from("+15550001111"), None, 2.0, log)
    assert alice.outcome == "configured" and alice.plan is not None
    assert alice.plan.first_update["greeting"].startswith("Hi Alice, ")
    assert alice.plan.first_update["input"]["keyterms"][0] == "Brompton"
    human = await decide(shop_bot, call_from("+15550001111", route="human"), None, 2.0, log)
    assert (human.outcome, human.detail) == ("forwarded", "+15557770000")


class Control:
    def __init__(self) -> None:
        self.changes: list[Mapping[str, Any]] = []

    def update_session(self, changes: Mapping[str, Any]) -> None:
        self.changes.append(changes)


async def test_the_example_tools_use_the_call(shop_bot: Bot) -> None:
    order_status, repairs = shop_bot.tools
    control = Control()
    call = Call("c1", "outbound", "CA1", "+1555", "+1666", {"order": "A-1234"}, control)
    outcome = await run_tool(order_status, {}, call)
    assert outcome.result == '"order A-1234 was shipped on Monday"'
    assert call.state["order"] == "A-1234"
    assert "call" not in order_status.definition()["parameters"]["properties"]
    await run_tool(repairs, {}, call)
    assert "keyterms" in control.changes[0] and "derailleur" in control.changes[0]["keyterms"]
