"""A Media Stream served by aiohttp's stream routes: with
CALLBRIDGE_MEDIA_STREAM_TRANSPORT=aiohttp, or a stream on a reused keep-alive connection."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from callbridge.transport.aiohttp import AiohttpSocket, describe_error
from callbridge.twilio import media_stream as twilio
from callbridge.twilio.media_stream import TwilioProtocolError
from callbridge.twilio.socket import ControlFrames, EventHandler, TextHandler, stalled

_AIOHTTP_TEXT = aiohttp.WSMsgType.TEXT
_AIOHTTP_ENDS = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


class AiohttpTwilioSocket(AiohttpSocket[web.WebSocketResponse]):
    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        max_messages_per_second: int = 200,
    ) -> None:
        """`ws` without autoping: pings come here, to be counted and answered."""
        super().__init__(ws, transport)
        self._fail_code: int | None = None
        self._controls = ControlFrames(max_messages_per_second)
        self._ended_here = False

    def fail(self, code: int) -> None:
        # on_text returns False next, and serve() returns: the runner's close says `code`.
        if self._fail_code is None:
            self._fail_code = code

    @property
    def ended_here(self) -> bool:
        return self._ended_here or self._fail_code is not None or bool(self._gave_up)

    def _why_stalled(self, unsent: int) -> str:
        return stalled(unsent)

    async def serve(self, on_text: TextHandler, on_event: EventHandler) -> None:
        ws = self._ws
        receive = ws.receive  # not `async for`: one coroutine less per frame
        while True:
            msg = await receive()
            kind = msg.type
            if kind is _AIOHTTP_TEXT:
                if not on_text(msg.data):
                    self._ended_here = True
                    break
            elif kind in _AIOHTTP_ENDS:
                break
            elif kind is aiohttp.WSMsgType.PING or kind is aiohttp.WSMsgType.PONG:
                flood = self._controls.over_limit()
                if flood is not None:
                    self._ended_here = True
                    on_event(flood)
                    await self.close(aiohttp.WSCloseCode.POLICY_VIOLATION)
                    break
                if kind is aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
            elif kind is aiohttp.WSMsgType.BINARY:
                on_event(twilio.InvalidFrame("binary frame"))
            elif kind is aiohttp.WSMsgType.ERROR:
                self._ended_here = True  # aiohttp refused what it read (too big, malformed)
                on_event(TwilioProtocolError(describe_error(msg)))
        if self._gave_up:
            on_event(TwilioProtocolError(self._gave_up))

    async def close(self, code: int) -> None:
        if not self._ws.closed:
            await self._ws.close(code=self._fail_code or code)
