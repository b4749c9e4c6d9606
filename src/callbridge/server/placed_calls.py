"""The signed query of `/outbound-twiml`: a placed call's id, bot and custom parameters.

`callbridge call` and `POST /api/calls` put them in the URL Twilio fetches when the callee
answers (`twilio.call_parameters`). Here the webhook checks them: a tampered, expired,
oversized or malformed query, one for another number, or a call id already used by
another call gets 403 and one throttled `webhook.refused` line. A URL without a query
(`callbridge simulate --outbound`, a call placed by other software) stays valid: the call
gets a new id and no parameters.

Without TWILIO_AUTH_TOKEN (the local demo mode, where no signature is checked at all)
there is no key: the parameters are taken unverified, every other check still applies,
and each such call logs `call.parameters_unverified`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

from callbridge.server.log_throttle import refused
from callbridge.server.state import APP_STATE
from callbridge.twilio import call_parameters
from callbridge.twilio.call_parameters import CallParameters, Refusal

# Call ids remembered until their URL expires; bounded so that a flood cannot grow it.
_MAX_REMEMBERED = 100_000

REUSED = Refusal("call id already used by another call")


class PlacedCalls:
    """Checks signed queries, and that no call id serves two calls."""

    def __init__(self, auth_token: str | None, clock: Callable[[], float] = time.time) -> None:
        self.key = call_parameters.parameters_key(auth_token) if auth_token else None
        self._clock = clock
        # call id -> (the CallSid it went to, when its URL expires)
        self._used: OrderedDict[str, tuple[str | None, int]] = OrderedDict()

    def check(
        self, query: str, *, to: str | None, call_sid: str | None
    ) -> CallParameters | Refusal | None:
        """The values of `query` (None: there is none), or why it is refused."""
        if not query:
            return None
        now = self._clock()
        result = call_parameters.decode(query, key=self.key, to=to, now=now)
        if isinstance(result, Refusal):
            return result
        self._forget_expired(now)
        used = self._used.get(result.call_id)
        if used is not None and used[0] != call_sid:
            # The same signed URL for a second call (Twilio asking again for one call is
            # fine): two calls would share one id, and one record.
            return REUSED
        self._used[result.call_id] = (call_sid, result.expires_at)
        while len(self._used) > _MAX_REMEMBERED:
            self._used.popitem(last=False)
        return result

    def _forget_expired(self, now: float) -> None:
        # Calls are answered in about the order they were placed, with one lifetime for
        # all: the oldest entries expire first (one that does not only waits a little).
        while self._used and next(iter(self._used.values()))[1] < now:
            self._used.popitem(last=False)


PLACED_CALLS = web.AppKey("callbridge_placed_calls", PlacedCalls)


def placed_call(
    request: web.Request, *, to: str | None, call_sid: str | None
) -> CallParameters | None:
    """The checked values of this outbound webhook's query, or None if it has none;
    HTTPForbidden (logged, throttled per client and reason) if they are refused."""
    state = request.app[APP_STATE]
    result = request.app[PLACED_CALLS].check(
        request.rel_url.raw_query_string, to=to, call_sid=call_sid
    )
    if isinstance(result, Refusal):
        refused(
            state.refusals,
            state.log,
            "webhook.refused",
            client=request.remote,
            reason=f"call parameters {result.reason}",
            path=request.path,
        )
        raise web.HTTPForbidden(text="forbidden\n")
    if result is not None and request.app[PLACED_CALLS].key is None:
        state.log.warning(
            "call.parameters_unverified",
            call_id=result.call_id,
            why="TWILIO_AUTH_TOKEN is not set, so their signature cannot be checked",
        )
    return result
