"""callbridge: put AssemblyAI voice agents on the phone through Twilio Media Streams.

A bot is a `Bot` with `@tool` functions; run it with `CALLBRIDGE_BOT=mypkg.mybot:bot`.
These names are the library's public face; `callbridge.testing` holds the test doubles.
"""

from callbridge.bot import Bot
from callbridge.call import Call, SessionUpdateError
from callbridge.call_setup import CallConfig, CallSetup, Forward, Refuse
from callbridge.session_options import SessionOptionError, SessionOptions, TurnDetection
from callbridge.tools import Tool, ToolError, tool

__all__ = [
    "Bot",
    "Call",
    "CallConfig",
    "CallSetup",
    "Forward",
    "Refuse",
    "SessionOptionError",
    "SessionOptions",
    "SessionUpdateError",
    "Tool",
    "ToolError",
    "TurnDetection",
    "__version__",
    "tool",
]
__version__ = "0.1.0"
