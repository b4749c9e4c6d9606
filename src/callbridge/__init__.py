"""callbridge: put AssemblyAI voice agents on the phone through Twilio Media Streams.

A bot is a `Bot` with `@tool` functions; run it with `CALLBRIDGE_BOT=mypkg.mybot:bot`.
These names are the library's public face; `callbridge.testing` holds the test doubles.
"""

from callbridge.bot import Bot
from callbridge.bridge.silence import SilenceRules
from callbridge.call import Call, CallVerbError, SessionUpdateError
from callbridge.call_setup import CallConfig, CallSetup, Forward, Refuse
from callbridge.keypad_input import Keypad, KeypadRules
from callbridge.session_options import SessionOptionError, SessionOptions, TurnDetection
from callbridge.tools import Tool, ToolError, tool
from callbridge.verbs import Transfer, TransferTarget, Voicemail, end_call

__all__ = [
    "Bot",
    "Call",
    "CallConfig",
    "CallSetup",
    "CallVerbError",
    "Forward",
    "Keypad",
    "KeypadRules",
    "Refuse",
    "SessionOptionError",
    "SessionOptions",
    "SessionUpdateError",
    "SilenceRules",
    "Tool",
    "ToolError",
    "Transfer",
    "TransferTarget",
    "TurnDetection",
    "Voicemail",
    "__version__",
    "end_call",
    "tool",
]
__version__ = "0.1.0"
