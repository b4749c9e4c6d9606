"""Performs the verbs that replace a live call's TwiML (`RedirectCall`) through Twilio's
REST API, and builds the TwiML that brings a call's next stream back to it.

A redirect ends the call's current stream (Twilio sends `stop`); the bridge knows to
expect that (`bridge/reattach.py`). Every stream that re-attaches presents a fresh
single-use token bound to the call's id and CallSid, as the first stream did. The URLs a
call comes back by (the next stream, the dial's action and answer) are this instance's own
(`server/instance_urls.py`): behind a load balancer they must reach the instance that holds
the call's bridge.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING

from twilio.base.exceptions import TwilioException, TwilioRestException

from callbridge.bridge.actions import RedirectCall
from callbridge.bridge.call_verbs import CALL_ENDED
from callbridge.server.instance_urls import own_base_url, ws_base
from callbridge.server.state import AppState
from callbridge.twilio import call_twiml
from callbridge.twilio.rest import OutboundCallError, twilio_client

if TYPE_CHECKING:
    from callbridge.server.call_runner import CallRunner

_STREAM_PATHS = {"inbound": "media-stream", "outbound": "outbound-stream"}
# Twilio's codes for a call that is over (or was never ours): the verb has nothing to act on.
_CALL_GONE = frozenset({20404, 21220})


def dial_ended_path(call_id: str) -> str:
    return f"/calls/{call_id}/dial-ended"


def transfer_answered_path(call_id: str) -> str:
    return f"/calls/{call_id}/transfer-answered"


def stream_ended_path(call_id: str, nonce: str | None = None) -> str:
    """The `<Redirect>` after a call's `</Connect>`. A segment of its own each time (as for
    stream URLs): Twilio's request to it carries the same parameters every time, and a
    repeated signature is refused as a replay."""
    return f"/calls/{call_id}/stream-ended/{secrets.token_hex(8) if nonce is None else nonce}"


AMD_STATUS_PATH = "/amd-status"


class CallControl:
    def __init__(self, state: AppState) -> None:
        self._state = state

    def reattach_twiml(self, runner: CallRunner, line_url: str) -> str | None:
        """`<Connect><Stream>` for the call's next stream, with a fresh token (None: the
        call is not known here). `line_url`: the line's public base, as the call's first
        TwiML had it (PUBLIC_URL, or the Host Twilio called for a quick trial)."""
        parameters = self._stream_parameters(runner)
        if parameters is None:
            return None
        own = own_base_url(self._state.settings) or line_url
        url = self._stream_url(runner, ws_base(own))
        return call_twiml.stream_twiml(url, parameters, self._ended_url(runner, line_url))

    async def redirect(self, runner: CallRunner, action: RedirectCall) -> str | None:
        """Replace the call's TwiML; None if Twilio took it, else why not (one line)."""
        own = own_base_url(self._state.settings)
        call_sid = runner.bridge.call_sid
        if own is None:
            return "PUBLIC_URL is not set: Twilio could not reach us after the redirect"
        if call_sid is None:
            return "the call's CallSid is not known"
        if action.verb == "transfer":
            twiml = self._dial(runner, action.to, own)
        else:
            parameters = self._stream_parameters(runner)
            if parameters is None:
                return "the call is not known here"
            url = self._stream_url(runner, ws_base(own))
            ended = self._ended_url(runner, self._state.settings.public_url)
            twiml = call_twiml.digits_twiml(action.digits, url, parameters, ended)
        return await asyncio.to_thread(self._update, call_sid, twiml)

    def _dial(self, runner: CallRunner, to: str, own: str) -> str:
        """The dial's callbacks come to this instance (`own`), which holds the bridge the
        caller returns to when nobody answers."""
        transfer = self._state.bot.verbs.transfer
        assert transfer is not None  # the bridge only dials an allow-listed target
        return call_twiml.dial_twiml(
            to,
            action_url=own + dial_ended_path(runner.call_id),
            answered_url=own + transfer_answered_path(runner.call_id),
            caller_id=transfer.caller_id,
            ring_seconds=transfer.ring_seconds,
            record=transfer.record,
        )

    def _update(self, call_sid: str, twiml: str) -> str | None:
        try:
            client = twilio_client(self._state.settings)
            client.calls(call_sid).update(twiml=twiml)
        except OutboundCallError as exc:
            return str(exc)
        except TwilioRestException as exc:
            if exc.code in _CALL_GONE:
                return CALL_ENDED
            message = (exc.msg or "").removeprefix("Unable to update record: ")
            return f"Twilio error {exc.code}: {message}"
        except TwilioException as exc:
            return f"Twilio request failed: {exc}"
        except OSError as exc:
            return f"could not reach Twilio: {exc}"
        return None

    def _ended_url(self, runner: CallRunner, public: str | None) -> str | None:
        """Where Twilio goes if the new stream breaks (None: calls end with their stream).
        On the line's URL: the `<Redirect>` is followed whichever instance holds the call
        then, and an instance that does not hold it sends Twilio on."""
        if public is None or not self._state.settings.callbridge_stream_lost_seconds:
            return None
        return public.rstrip("/") + stream_ended_path(runner.call_id)

    def _stream_url(self, runner: CallRunner, base: str) -> str:
        path = _STREAM_PATHS.get(runner.bridge.direction, "media-stream")
        # A segment of its own: Twilio signs the same URL the same way every time, and a
        # repeated signature is refused as a replay.
        return f"{base}/{path}/{runner.call_id}/{secrets.token_hex(8)}"

    def _stream_parameters(self, runner: CallRunner) -> dict[str, str] | None:
        """The first stream's parameters, with a new token in place of the used one."""
        token = self._state.registry.reissue_token(runner.call_id)
        if token is None:
            return None
        parameters = {k: v for k, v in runner.bridge.custom_parameters.items() if k != "token"}
        return {"token": token, **parameters}
