"""The fake agent checks every session option against the API's schema, in the first
`session.update` (fatal, as on the live service) and in a later one (an error, the session
stays open), so a client that sends one out of range fails its tests."""

from __future__ import annotations

from typing import Any

import pytest

from callbridge.testing.fake_agent import FakeVoiceAgent
from tests.testing.test_fake_agent import TELEPHONY, Connect, connect, fake, make_fake

__all__ = ["connect", "fake", "make_fake"]  # the fixtures, shared with test_fake_agent

BAD_OPTIONS: dict[str, dict[str, Any]] = {
    "keyterms-over-100": {"input": {"keyterms": ["x"] * 101}},
    "keyterms-not-strings": {"input": {"keyterms": [1, 2]}},
    "transcription-prompt-too-long": {"input": {"transcription_prompt": "x" * 1751}},
    "transcription-mode": {"input": {"transcription_mode": "fast"}},
    "voice-focus": {"input": {"voice_focus": "near"}},
    "voice-focus-threshold": {"input": {"voice_focus_threshold": 2}},
    "vad-threshold": {"input": {"turn_detection": {"vad_threshold": 1.5}}},
    "min-silence-negative": {"input": {"turn_detection": {"min_silence": -1}}},
    "max-silence-fraction": {"input": {"turn_detection": {"max_silence": 1.5}}},
    "interrupt-response": {"input": {"turn_detection": {"interrupt_response": "no"}}},
    "interruption-delay": {"input": {"turn_detection": {"interruption_delay": 1001}}},
    "volume": {"output": {"volume": 101}},
    "agent-id": {"agent_id": 7},
}


def _with(option: dict[str, Any]) -> dict[str, Any]:
    session = {k: dict(v) for k, v in TELEPHONY.items()}
    for side, fields in option.items():
        if isinstance(fields, dict):
            session.setdefault(side, {}).update(fields)
        else:
            session[side] = fields
    return session


@pytest.mark.parametrize("option", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
async def test_an_option_out_of_range_in_the_first_update_is_refused(
    fake: FakeVoiceAgent, connect: Connect, option: dict[str, Any]
) -> None:
    client = await connect(fake)
    await client.send({"type": "session.update", "session": _with(option)})
    error = await client.recv()
    assert (error["type"], error["code"]) == ("session.error", "invalid_format")
    assert await client.expect_close() == 1008
    assert fake.sessions == [] and fake.violations


@pytest.mark.parametrize(
    "option",
    [v for k, v in BAD_OPTIONS.items() if k != "agent-id"],
    ids=[k for k in BAD_OPTIONS if k != "agent-id"],
)
async def test_an_option_out_of_range_in_a_later_update_is_an_error(
    fake: FakeVoiceAgent, connect: Connect, option: dict[str, Any]
) -> None:
    client = await connect(fake)
    await client.send({"type": "session.update", "session": TELEPHONY})
    await client.recv_until("session.ready")
    await client.send({"type": "session.update", "session": option})
    error = await client.recv_until("session.error")
    assert error["code"] == "invalid_format"
    assert len(fake.sessions) == 1 and fake.violations  # the session stays open


async def test_every_option_within_range_is_accepted_and_echoed(
    fake: FakeVoiceAgent, connect: Connect
) -> None:
    options = {
        "input": {
            "keyterms": ["x"] * 100,
            "transcription_prompt": "x" * 1750,
            "transcription_mode": "min_latency",
            "language_codes": ["en"],
            "voice_focus": "far-field",
            "voice_focus_threshold": 1,
            "turn_detection": {
                "vad_threshold": 0,
                "min_silence": 0,
                "max_silence": 3000,
                "interrupt_response": True,
                "interruption_delay": 0,
            },
        },
        "output": {"volume": 100},
    }
    client = await connect(fake)
    await client.send({"type": "session.update", "session": _with(options)})
    ready = await client.recv_until("session.ready")
    assert ready["config"]["input"]["turn_detection"]["max_silence"] == 3000
    assert ready["config"]["output"]["volume"] == 100
    assert fake.violations == []
