"""What users import from `callbridge.testing` resolves, to the doubles' own classes."""

from __future__ import annotations

import importlib

import callbridge.testing
from callbridge.testing import fake_agent, twilio_rest_fake, twilio_simulator


def test_every_public_name_resolves_to_the_class_its_module_defines() -> None:
    homes = {
        "CallEndedError": twilio_simulator,
        "ConnectFailure": fake_agent,
        "FakeSession": fake_agent,
        "FakeTwilioRest": twilio_rest_fake,
        "FakeVoiceAgent": fake_agent,
        "ScriptedTurn": fake_agent,
        "SimulatedCall": twilio_simulator,
        "TwilioSimulator": twilio_simulator,
    }
    assert sorted(callbridge.testing.__all__) == sorted(homes)
    for name, module in homes.items():
        assert getattr(callbridge.testing, name) is getattr(module, name), name


def test_the_split_packages_keep_every_name_they_exported() -> None:
    names = {
        "callbridge.testing.fake_agent": [
            "DEFAULT_VOICES",
            "REPLY_CREATE_TEXT",
            "TOOL_TIMEOUT_APOLOGY",
            "ConnectFailure",
            "Event",
            "FakeSession",
            "FakeVoiceAgent",
            "Observer",
            "ScriptedTurn",
        ],
        "callbridge.testing.twilio_simulator": [
            "API_VERSION",
            "DEFAULT_ACCOUNT_SID",
            "CallEndedError",
            "HttpExchange",
            "SimulatedCall",
            "StatusHook",
            "TwilioSimulator",
        ],
    }
    for module_name, expected in names.items():
        module = importlib.import_module(module_name)
        missing = [name for name in expected if not hasattr(module, name)]
        assert missing == [], (module_name, missing)
        assert set(module.__all__) <= set(expected), module_name
