"""callbridge: put AssemblyAI voice agents on the phone through Twilio Media Streams.

A bot is a `Bot` with `@tool` functions; run it with `CALLBRIDGE_BOT=mypkg.mybot:bot`.
These names are the library's public face; `callbridge.testing` holds the test doubles.
"""

from callbridge.bot import Bot
from callbridge.bridge.silence import SilenceRules
from callbridge.keypad_input import Keypad, KeypadRules
from callbridge.tools import Tool, ToolError, tool
from callbridge.verbs import end_call

__all__ = [
    "Bot",
    "Keypad",
    "KeypadRules",
    "SilenceRules",
    "Tool",
    "ToolError",
    "__version__",
    "end_call",
    "tool",
]
__version__ = "0.1.0"
