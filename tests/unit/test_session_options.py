"""Session options: the API's limits, a call's options over its bot's, the wire shape, and
what a call's session is planned from (`session_plan`)."""

from __future__ import annotations

from typing import Any

import pytest

from callbridge import Bot, CallConfig, SessionOptionError, SessionOptions, TurnDetection, tool
from callbridge.session_options import MAX_KEYTERMS
from callbridge.session_plan import plan_session


@pytest.mark.parametrize(
    ("options", "field", "limit"),
    [
        (SessionOptions(keyterms=["x"] * (MAX_KEYTERMS + 1)), "input.keyterms", "at most 100"),
        (SessionOptions(keyterms="Brompton"), "input.keyterms", "a list of strings"),  # type: ignore[arg-type]
        (SessionOptions(transcription_prompt="x" * 1751), "input.transcription_prompt", "1750"),
        (SessionOptions(transcription_mode="fast"), "input.transcription_mode", "one of"),  # type: ignore[arg-type]
        (SessionOptions(voice_focus="near"), "input.voice_focus", "one of"),  # type: ignore[arg-type]
        (SessionOptions(voice_focus_threshold=1.5), "input.voice_focus_threshold", "0 to 1"),
        (SessionOptions(volume=101), "output.volume", "from 0 to 100"),
        (SessionOptions(volume=float("nan")), "output.volume", "from 0 to 100"),
        (SessionOptions(agent_id=""), "agent_id", "non-empty"),
        (
            SessionOptions(turn_detection=TurnDetection(vad_threshold=-0.1)),
            "input.turn_detection.vad_threshold",
            "from 0 to 1",
        ),
        (
            SessionOptions(turn_detection=TurnDetection(min_silence=-5)),
            "input.turn_detection.min_silence",
            "at least 0",
        ),
        (
            SessionOptions(turn_detection=TurnDetection(max_silence=1.5)),  # type: ignore[arg-type]
            "input.turn_detection.max_silence",
            "whole",
        ),
        (
            SessionOptions(turn_detection=TurnDetection(min_silence=2000, max_silence=1000)),
            "input.turn_detection.min_silence",
            "must not exceed max_silence",
        ),
        (
            SessionOptions(turn_detection=TurnDetection(interruption_delay=1001)),
            "input.turn_detection.interruption_delay",
            "0 to 1000",
        ),
    ],
)
def test_a_value_outside_the_apis_limits_is_named_with_its_limit(
    options: SessionOptions, field: str, limit: str
) -> None:
    [problem] = options.problems()
    assert problem.field == field
    assert limit in problem.limit
    with pytest.raises(SessionOptionError, match=field):
        options.check()


def test_a_bot_with_an_option_out_of_range_does_not_build() -> None:
    with pytest.raises(SessionOptionError) as caught:
        Bot(system_prompt="x", options=SessionOptions(volume=150, keyterms=["a"] * 101))
    assert str(caught.value) == (
        "input.keyterms: at most 100 entries (got '101 entries'); "
        "output.volume: a number from 0 to 100 (got 150)"
    )


def test_values_at_the_limits_are_accepted() -> None:
    options = SessionOptions(
        keyterms=["x"] * MAX_KEYTERMS,
        transcription_prompt="x" * 1750,
        volume=0,
        voice_focus_threshold=1,
        turn_detection=TurnDetection(vad_threshold=1.0, min_silence=0, interruption_delay=1000),
    )
    assert options.problems() == []


def test_a_calls_options_go_over_the_bots_and_bad_ones_fall_back() -> None:
    bot_options = SessionOptions(
        keyterms=["bot"],
        volume=40,
        turn_detection=TurnDetection(vad_threshold=0.5, min_silence=500),
        extra={"input": {"continuous_partials": False}},
    )
    call_options = SessionOptions(
        keyterms=["a"] * 101,  # too many: the bot's
        transcription_prompt="A call about bikes.",
        volume=60,
        turn_detection=TurnDetection(vad_threshold=2.0, max_silence=2000),
        extra={"input": {"continuous_partials": True}},
    )
    merged, replaced = call_options.over(bot_options)
    assert merged.keyterms == ["bot"]
    assert merged.transcription_prompt == "A call about bikes."
    assert merged.volume == 60
    assert merged.turn_detection == TurnDetection(
        vad_threshold=0.5, min_silence=500, max_silence=2000
    )
    assert merged.extra == {"input": {"continuous_partials": True}}
    assert [p.field for p in replaced] == [
        "input.keyterms",
        "input.turn_detection.vad_threshold",
    ]


def test_options_take_their_places_in_the_session_object() -> None:
    session: dict[str, Any] = {"input": {"format": {"encoding": "audio/pcmu"}}, "output": {}}
    SessionOptions(
        keyterms=("a", "b"),
        turn_detection=TurnDetection(interrupt_response=False),
        volume=10,
        extra={"input": {"format": {"sample_rate": 8000}}, "webhook": {"url": "u", "events": []}},
    ).apply_to(session)
    assert session == {
        "input": {
            "format": {"encoding": "audio/pcmu", "sample_rate": 8000},
            "keyterms": ["a", "b"],
            "turn_detection": {"interrupt_response": False},
        },
        "output": {"volume": 10},
        "webhook": {"url": "u", "events": []},
    }


@tool
def lookup() -> str:
    """Look something up."""
    return "x"


@tool
def other() -> str:
    """Another."""
    return "y"


BOT = Bot(
    system_prompt="Inbound prompt.",
    greeting="Inbound hi.",
    outbound_prompt="Outbound prompt.",
    outbound_greeting="Outbound hi.",
    voice="eve",
    tools=(lookup,),
    options=SessionOptions(keyterms=["bot"]),
)


def test_a_calls_config_wins_over_agent_voice_and_the_bot() -> None:
    plan = plan_session(
        BOT,
        "outbound",
        "george",
        CallConfig(system_prompt="Call prompt.", voice="iris", tools=(other,)),
    )
    first = plan.first_update
    assert first["system_prompt"] == "Call prompt."
    assert first["greeting"] == "Outbound hi."
    assert first["output"]["voice"] == "iris"
    assert [t["name"] for t in first["tools"]] == ["other"]
    assert plan.tools == (other,)
    assert first["input"]["keyterms"] == ["bot"]
    assert plan.follow_up is None and plan.replaced == ()
    # Without a call's own: AGENT_VOICE over the bot's voice.
    assert plan_session(BOT, "inbound", "george").first_update["output"]["voice"] == "george"


def test_an_empty_greeting_makes_the_agent_listen_first() -> None:
    plan = plan_session(BOT, "inbound", None, CallConfig(greeting=""))
    assert "greeting" not in plan.first_update


def test_bad_per_call_values_are_replaced_by_the_bots() -> None:
    plan = plan_session(
        BOT,
        "inbound",
        None,
        CallConfig(
            voice="Not A Voice",
            tools=(lookup, lookup),
            options=SessionOptions(volume=500),
            system_prompt=42,  # type: ignore[arg-type]
        ),
    )
    first = plan.first_update
    assert first["output"]["voice"] == "eve"
    assert [t["name"] for t in first["tools"]] == ["lookup"]
    assert first["system_prompt"] == "Inbound prompt."
    assert "volume" not in first["output"]
    assert sorted(p.field for p in plan.replaced) == [
        "output.voice",
        "output.volume",
        "system_prompt",
        "tools",
    ]


def test_a_stored_agent_is_named_alone_and_the_mutable_fields_follow() -> None:
    bot = Bot(
        system_prompt="",
        tools=(lookup,),
        options=SessionOptions(agent_id="agent_1", keyterms=["k"], volume=20),
    )
    plan = plan_session(bot, "inbound")
    assert plan.first_update == {"agent_id": "agent_1"}
    assert plan.follow_up == {
        "tools": [lookup.definition()],
        "input": {"keyterms": ["k"]},
        "output": {"volume": 20},
    }
    bare = plan_session(
        Bot(system_prompt="", options=SessionOptions(agent_id="agent_1")), "inbound"
    )
    assert bare.follow_up is None


def test_a_bot_with_list_options_stays_hashable() -> None:
    options = SessionOptions(keyterms=["a"], language_codes=["en"], extra={"x": {"y": 1}})
    bot = Bot(system_prompt="x", options=options)
    assert {bot: 1}[bot] == 1
