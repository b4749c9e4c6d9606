"""callbridge: put AssemblyAI voice agents on the phone through Twilio Media Streams.

A bot is a `Bot` with `@tool` functions; run it with `CALLBRIDGE_BOT=mypkg.mybot:bot`.
"""

from callbridge.bot import Bot
from callbridge.tools import ToolError, tool

__all__ = ["Bot", "ToolError", "__version__", "tool"]
__version__ = "0.1.0"
