"""Which calls this instance knows about: announced by a webhook, or live on a stream."""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from callbridge.twilio.signatures import TOKEN_TTL_SECONDS, new_stream_token, tokens_match

if TYPE_CHECKING:
    from callbridge.server.call_runner import CallRunner
    from callbridge.session_plan import SessionPlan

# Twilio opens the stream within seconds of our TwiML; anything older is abandoned.
PENDING_TTL_SECONDS = 300.0


@dataclass
class CallInfo:
    call_id: str
    direction: str
    call_sid: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    stream_token: str | None = None  # single use: cleared once a stream presents it
    created: float = field(default_factory=time.monotonic)
    # The custom parameters given when the call was placed, and the bot chosen for it.
    parameters: Mapping[str, str] = field(default_factory=dict)
    bot_name: str | None = None
    # What the bot's set-up decided: the agent's session, and why it failed (if it did).
    plan: SessionPlan | None = None
    setup_error: str | None = None


_LETTERS_AND_DIGITS = string.ascii_letters + string.digits


def new_call_id() -> str:
    """Unguessable (128 random bits): the id is part of the stream URL. A random letter or
    digit goes first, so an id never starts with '-' (which a command line reads as an
    option, as in `callbridge calls show`) nor '_'."""
    return secrets.choice(_LETTERS_AND_DIGITS) + secrets.token_urlsafe(16)


class CallRegistry:
    def __init__(self) -> None:
        self._known: dict[str, CallInfo] = {}
        self._by_call_sid: dict[str, str] = {}
        self.live: dict[str, CallRunner] = {}

    def announce(self, info: CallInfo) -> None:
        self._prune()
        self._known[info.call_id] = info
        if info.call_sid:
            self._by_call_sid[info.call_sid] = info.call_id

    def info(self, call_id: str) -> CallInfo | None:
        """What the webhook learnt and decided about a call it announced."""
        return self._known.get(call_id)

    def call_id_for_sid(self, call_sid: str) -> str | None:
        return self._by_call_sid.get(call_sid)

    def pending_count(self, within: float = 60.0) -> int:
        """Calls announced recently whose stream has not arrived yet (they will need a slot)."""
        horizon = time.monotonic() - within
        return sum(
            1
            for call_id, info in self._known.items()
            if call_id not in self.live and info.created >= horizon and info.stream_token
        )

    def redeem_token(self, call_id: str, token: str | None, call_sid: str | None) -> str | None:
        """Check a stream's token against its call; None if admitted, else why not."""
        info = self._known.get(call_id)
        if info is None:
            return "unknown call id"
        if info.stream_token is None:
            return "stream token already used"
        if time.monotonic() - info.created > TOKEN_TTL_SECONDS:
            return "stream token expired"
        if not tokens_match(info.stream_token, token):
            return "wrong stream token"
        if info.call_sid and call_sid != info.call_sid:
            return "stream is for another CallSid"
        info.stream_token = None
        return None

    def know(self, call_id: str, direction: str, call_sid: str | None) -> None:
        """A call admitted here whose webhook another instance may have answered."""
        if call_id not in self._known:
            self.announce(CallInfo(call_id=call_id, direction=direction, call_sid=call_sid))

    def reissue_token(self, call_id: str) -> str | None:
        """A new single-use stream token for a known call (its next stream presents it);
        None for a call this instance does not know."""
        info = self._known.get(call_id)
        if info is None:
            return None
        info.stream_token = new_stream_token()
        info.created = time.monotonic()  # the token's lifetime starts now
        return info.stream_token

    def forget(self, call_id: str) -> None:
        info = self._known.pop(call_id, None)
        if info is not None and info.call_sid:
            self._by_call_sid.pop(info.call_sid, None)
        self.live.pop(call_id, None)

    def _prune(self) -> None:
        horizon = time.monotonic() - PENDING_TTL_SECONDS
        for call_id, info in list(self._known.items()):
            if info.created < horizon and call_id not in self.live:
                self.forget(call_id)
