"""Built-in verb tools: what the agent can do to the call itself. A bot turns one on by
listing it with its own tools: `Bot(..., tools=(end_call, my_tool))`.

The bridge performs a verb tool itself (its function only documents it): `end_call`
lets the agent say goodbye, then hangs up once Twilio has played the goodbye.
"""

from __future__ import annotations

from dataclasses import dataclass

from callbridge.tools import Tool, tool


@dataclass(frozen=True)
class VerbTool(Tool):
    """A tool the bridge performs on the call (`verb` says which) instead of running it."""

    verb: str = ""


@tool
async def _end_call() -> str:
    """End the phone call. Call it when the conversation is over: the caller said goodbye,
    asked to hang up, or has nothing more to ask. Do not say goodbye before calling it;
    you say your goodbye right after, and the line closes once the caller has heard it."""
    return "the call ends after your goodbye"


end_call = VerbTool(
    name="end_call",
    description=_end_call.description,
    function=_end_call.function,
    arguments_model=_end_call.arguments_model,
    verb="hang-up",
)

__all__ = ["VerbTool", "end_call"]
