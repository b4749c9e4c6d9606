"""Test doubles shipped with callbridge, for testing your own bot the way callbridge is
tested: a fake Voice Agent API, a Twilio simulator and a fake of Twilio's Calls REST API.

    from callbridge.testing import FakeTwilioRest, FakeVoiceAgent, TwilioSimulator

The names below are the public surface: the three doubles, what their methods return
(`FakeSession`, `SimulatedCall`), what you give them (`ScriptedTurn`, the turns a fake
agent plays; `ConnectFailure`, a fault to inject) and `CallEndedError`, raised by a wait
on a call that is over. `callbridge.testing.audio` makes and reads the audio (tones,
synthetic speech, WAV files). Everything else in the package is internal.

They are imported on first use, so `callbridge.testing.audio` alone stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callbridge.testing.fake_agent import (
        ConnectFailure,
        FakeSession,
        FakeVoiceAgent,
        ScriptedTurn,
    )
    from callbridge.testing.twilio_rest_fake import FakeTwilioRest
    from callbridge.testing.twilio_simulator import (
        CallEndedError,
        SimulatedCall,
        TwilioSimulator,
    )

__all__ = [
    "CallEndedError",
    "ConnectFailure",
    "FakeSession",
    "FakeTwilioRest",
    "FakeVoiceAgent",
    "ScriptedTurn",
    "SimulatedCall",
    "TwilioSimulator",
]

_MODULES = {
    "ConnectFailure": "callbridge.testing.fake_agent",
    "FakeSession": "callbridge.testing.fake_agent",
    "FakeVoiceAgent": "callbridge.testing.fake_agent",
    "ScriptedTurn": "callbridge.testing.fake_agent",
    "FakeTwilioRest": "callbridge.testing.twilio_rest_fake",
    "CallEndedError": "callbridge.testing.twilio_simulator",
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
