"""Test doubles shipped with callbridge, for testing your own bot the way callbridge is
tested: a fake Voice Agent API, a Twilio simulator and a fake of Twilio's Calls REST API.

    from callbridge.testing import FakeTwilioRest, FakeVoiceAgent, TwilioSimulator

They are imported on first use, so `callbridge.testing.audio` alone stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callbridge.testing.fake_agent import FakeVoiceAgent, ScriptedTurn
    from callbridge.testing.twilio_rest_fake import FakeTwilioRest
    from callbridge.testing.twilio_simulator import SimulatedCall, TwilioSimulator

__all__ = [
    "FakeTwilioRest",
    "FakeVoiceAgent",
    "ScriptedTurn",
    "SimulatedCall",
    "TwilioSimulator",
]

_MODULES = {
    "FakeVoiceAgent": "callbridge.testing.fake_agent",
    "ScriptedTurn": "callbridge.testing.fake_agent",
    "FakeTwilioRest": "callbridge.testing.twilio_rest_fake",
    "SimulatedCall": "callbridge.testing.twilio_simulator",
    "TwilioSimulator": "callbridge.testing.twilio_simulator",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
