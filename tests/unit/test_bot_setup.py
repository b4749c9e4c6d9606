"""A bot's per-call set-up as the webhook runs it (`server/bot_setup.py`), which bot a
call goes to (`bot_routing.py`), and the built-in bot's own set-up."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from callbridge import Bot, CallConfig, CallSetup, Forward, Refuse, SessionOptions
from callbridge.bot import OUTBOUND_GREETING, SYSTEM_PROMPT, BotLoadError, demo_setup
from callbridge.bot_routing import choose_bot, load_bots
from callbridge.config import ConfigError, load_settings, parse_bots, parse_numbers
from callbridge.logs import EventLogger
from callbridge.server.bot_setup import decide
from tests.helpers.log_events import caught

LOG = EventLogger("test")


def setup_for(direction: str = "inbound", **fields: Any) -> CallSetup:
    return CallSetup(
        call_id="call-1",
        direction=direction,  # type: ignore[arg-type]
        call_sid="CA1",
        from_number=fields.pop("from_number", "+15550001111"),
        to_number="+15552223333",
        **fields,
    )


async def test_without_a_set_up_the_call_gets_the_bots_defaults() -> None:
    decision = await decide(Bot(system_prompt="x", greeting="Hi."), setup_for(), None, 1.0, LOG)
    assert decision.outcome == "defaults" and decision.error is None
    assert decision.plan is not None and decision.plan.first_update["greeting"] == "Hi."


async def test_a_sync_set_up_runs_off_the_event_loop() -> None:
    threads: list[int] = []

    def setup(call: CallSetup) -> CallConfig:
        threads.append(threading.get_ident())
        return CallConfig(greeting=f"Hi {call.from_number}")

    decision = await decide(Bot(system_prompt="x", setup=setup), setup_for(), None, 1.0, LOG)
    assert threads and threads[0] != threading.get_ident()
    assert decision.outcome == "configured"
    assert decision.plan is not None
    assert decision.plan.first_update["greeting"] == "Hi +15550001111"


async def test_a_set_up_returning_none_gives_the_defaults() -> None:
    async def setup(call: CallSetup) -> None:
        return None

    decision = await decide(Bot(system_prompt="x", setup=setup), setup_for(), None, 1.0, LOG)
    assert (decision.outcome, decision.error) == ("defaults", None)


@pytest.mark.parametrize(
    ("result", "error"),
    [
        ("not a decision", "the set-up returned a str, not a CallConfig, Refuse or Forward"),
        (Refuse(reason="maybe"), "Refuse: invalid reason or say text"),  # type: ignore[arg-type]
        (Refuse(say=""), "Refuse: invalid reason or say text"),
        (Forward("+15550000000"), "Forward: the number is not in the bot's forward_to list"),
    ],
)
async def test_an_unusable_decision_gives_the_defaults(result: object, error: str) -> None:
    async def setup(call: CallSetup) -> Any:
        return result

    decision = await decide(Bot(system_prompt="x", setup=setup), setup_for(), None, 1.0, LOG)
    assert (decision.outcome, decision.error) == ("failed", error)
    assert decision.plan is not None and decision.twiml is None


async def test_per_call_options_out_of_range_are_replaced_and_logged() -> None:
    async def setup(call: CallSetup) -> CallConfig:
        return CallConfig(options=SessionOptions(volume=400, keyterms=["ok"]))

    bot = Bot(system_prompt="x", setup=setup, options=SessionOptions(volume=30))
    with caught() as events:
        decision = await decide(bot, setup_for(), None, 1.0, LOG)
    assert decision.outcome == "configured" and decision.plan is not None
    first = decision.plan.first_update
    assert (first["output"]["volume"], first["input"]["keyterms"]) == (30, ["ok"])
    [replaced] = events.fields_of("setup.option_replaced")
    assert replaced["field"] == "output.volume" and "0 to 100" in str(replaced["limit"])


def test_the_settings_for_several_bots_are_checked() -> None:
    assert parse_bots("sales=mybots:sales, support=./s.py:bot") == {
        "sales": "mybots:sales",
        "support": "./s.py:bot",
    }
    assert parse_numbers("+15551230001=sales +15551230002=default") == {
        "+15551230001": "sales",
        "+15551230002": "default",
    }
    for text, problem in (
        ("sales", "expected name=module:attribute"),
        ("9x=m:a", "bot name '9x'"),
        ("default=m:a", "is CALLBRIDGE_BOT's"),
        ("a=m:a a=m:b", "named twice"),
        ("a=module", "expected module:attribute"),
    ):
        with pytest.raises(ValueError, match=problem):
            parse_bots(text)
    with pytest.raises(ValueError, match=r"not an E\.164 number"):
        parse_numbers("5551230001=sales")
    with pytest.raises(ConfigError, match="CALLBRIDGE_NUMBERS: \\+15551230001 is given to bot"):
        load_settings(_env_file=None, callbridge_numbers="+15551230001=sales")
    with pytest.raises(ConfigError, match="CALLBRIDGE_BOTS: bot name"):
        load_settings(_env_file=None, callbridge_bots="-=m:a")


def test_a_call_goes_to_the_bot_named_then_its_numbers_then_the_default() -> None:
    bots = {"default": Bot(system_prompt="d"), "sales": Bot(system_prompt="s")}
    numbers = {"+15551230001": "sales"}
    assert choose_bot(bots, numbers, "inbound", "+1555", "+15551230001") == ("sales", None)
    assert choose_bot(bots, numbers, "inbound", "+1555", "+15559999999") == ("default", None)
    # Outbound: our number is the caller ID.
    assert choose_bot(bots, numbers, "outbound", "+15551230001", "+1555") == ("sales", None)
    assert choose_bot(bots, numbers, "inbound", None, None, "sales") == ("sales", None)
    assert choose_bot(bots, numbers, "inbound", "+1", "+15551230001", "nobody") == (
        "sales",
        "no bot named 'nobody'",
    )


async def test_the_built_in_bot_greets_a_called_person_by_name() -> None:
    config = await demo_setup(setup_for("outbound", parameters={"name": "  Alice \n Smith "}))
    assert config is not None
    assert config.greeting is not None and config.greeting.startswith("Hi Alice Smith, ")
    assert config.system_prompt is not None and "Alice Smith" in config.system_prompt
    assert await demo_setup(setup_for("outbound")) is None  # no name: the plain greeting
    assert "Hi, this is" in OUTBOUND_GREETING


async def test_the_built_in_bot_knows_the_callers_number_and_city() -> None:
    config = await demo_setup(setup_for(twilio={"CallerCity": "BERKELEY"}))
    assert config is not None and config.system_prompt is not None
    assert config.system_prompt.startswith(SYSTEM_PROMPT)
    assert "+15550001111" in config.system_prompt and "Berkeley" in config.system_prompt
    withheld = await demo_setup(setup_for(from_number=None))
    assert withheld is not None and withheld.system_prompt is not None
    assert "a withheld number" in withheld.system_prompt


def test_bots_of_one_file_share_one_import_of_it(tmp_path: Path) -> None:
    (tmp_path / "twobots.py").write_text(
        "from pathlib import Path\n"
        "from callbridge import Bot\n"
        "with open(Path(__file__).with_suffix('.log'), 'a') as f:\n"
        "    f.write('imported\\n')\n"
        "a = Bot(system_prompt='a')\n"
        "b = Bot(system_prompt='b')\n"
    )
    bots = load_bots({"default": "./twobots.py:a", "other": "twobots.py:b"}, tmp_path)
    assert [bots["default"].system_prompt, bots["other"].system_prompt] == ["a", "b"]
    assert (tmp_path / "twobots.log").read_text() == "imported\n"
    with pytest.raises(BotLoadError, match="CALLBRIDGE_BOTS: bot 'third' \\(nope:x\\): "):
        load_bots({"third": "nope:x"}, tmp_path)


async def test_a_refused_outbound_call_is_hung_up_not_rejected() -> None:
    async def setup(call: CallSetup) -> Refuse:
        return Refuse()

    bot = Bot(system_prompt="x", setup=setup)
    outbound = await decide(bot, setup_for("outbound"), None, 1.0, LOG)
    assert outbound.outcome == "refused" and "<Hangup />" in str(outbound.twiml)
    inbound = await decide(bot, setup_for("inbound"), None, 1.0, LOG)
    assert '<Reject reason="busy" />' in str(inbound.twiml)
