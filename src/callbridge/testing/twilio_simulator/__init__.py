"""An offline Twilio: places calls into a callbridge server the way Twilio's edge would.

`TwilioSimulator` plays the carrier side of a phone call against a real server listening
on loopback:

* it POSTs the signed voice webhook and executes the TwiML it gets back (``<Say>``,
  ``<Pause>``, ``<Play>``, ``<Hangup>``, ``<Reject>``, ``<Redirect>``, ``<Dial>``,
  ``<Connect><Stream>`` with ``<Parameter>`` and ``action``);
* it opens the Media Stream WebSocket with a signed upgrade and speaks the Media Streams
  protocol: ``connected``, ``start``, 20 ms ``media`` frames on a drift-free clock,
  ``dtmf``, ``stop``;
* it emulates the caller's loudspeaker: server ``media`` is queued and "played" at
  ``playback_rate`` bytes/s into `SimulatedCall.heard`, ``mark`` is echoed when playback
  reaches it (or at once when nothing is queued), ``clear`` flushes the queue and echoes
  every pending mark;
* it validates every frame the server sends and records Twilio's 31950/31951 warnings
  instead of failing, so tests can assert a server speaks the protocol exactly;
* with ``record_timeline``, it keeps the call as it was heard, on one clock: what the
  caller sent and what the loudspeaker played (clears applied), each at the time it
  happened, for a stereo recording (`SimulatedCall.caller_track`, ``played_track``).

The protocols are Twilio's: webhooks and request signing
(https://www.twilio.com/docs/usage/webhooks/webhooks-security), TwiML
(https://www.twilio.com/docs/voice/twiml) and Media Streams
(https://www.twilio.com/docs/voice/media-streams/websocket-messages). The simulator is
also the engine behind `FakeTwilioRest` (outbound calls, live-call updates).

The package, one concept a module: ``simulator`` (placing calls, signed requests),
``call`` (one call: the caller's actions, waits, TwiML execution), ``twiml`` (reading
documents), ``stream`` (the Media Streams WebSocket: the frame clock and the reader),
``loudspeaker`` (playback, marks and clears) and ``timeline`` (the call as heard).
"""

from callbridge.testing.twilio_simulator.call import API_VERSION as API_VERSION
from callbridge.testing.twilio_simulator.call import (
    CallEndedError,
    HttpExchange,
    SimulatedCall,
    StatusHook,
)
from callbridge.testing.twilio_simulator.simulator import DEFAULT_ACCOUNT_SID, TwilioSimulator

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "CallEndedError",
    "HttpExchange",
    "SimulatedCall",
    "StatusHook",
    "TwilioSimulator",
]
