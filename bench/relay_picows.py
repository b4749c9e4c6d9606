"""Baseline 2: the minimal relay on picows with raw callbacks: the practical floor for
Python. Same relay as `relay_aiohttp` (media payload -> input.audio, reply.audio ->
media, msgspec both ways), but frames are handled in picows's frame callbacks with no
coroutine, task or queue on the audio path.

    python -m bench.relay_picows --port 3100 --agent-url ws://127.0.0.1:3200/v1/ws
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import msgspec
import uvloop
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_connect,
    ws_create_server,
)

from bench.relay_common import (
    SESSION_UPDATE,
    decode_agent,
    decode_twilio,
    encode_input_audio,
    encode_media,
    parse_args,
)

_TEXT = WSMsgType.TEXT
_tasks: set[asyncio.Task[None]] = set()


class _Upstream(WSListener):
    def __init__(self, twilio: _TwilioSide) -> None:
        self.twilio = twilio

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is _TEXT:
            try:
                msg = decode_agent(frame.get_payload_as_memoryview())
            except msgspec.DecodeError:
                return
            tw = self.twilio
            if msg.type == "reply.audio" and msg.data is not None and tw.transport is not None:
                tw.transport.send(_TEXT, encode_media(tw.stream_sid, msg.data))
        elif frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.twilio.upstream = None


class _TwilioSide(WSListener):
    def __init__(self, agent_url: str) -> None:
        self.agent_url = agent_url
        self.transport: WSTransport | None = None
        self.upstream: WSTransport | None = None
        self.stream_sid = ""
        self.connecting = False
        self.closed = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is _TEXT:
            try:
                msg = decode_twilio(frame.get_payload_as_memoryview())
            except msgspec.DecodeError:
                return
            if msg.event == "media":
                if self.upstream is not None and msg.media is not None:
                    self.upstream.send(_TEXT, encode_input_audio(msg.media.payload))
            elif msg.event == "start" and msg.start is not None and not self.connecting:
                self.stream_sid = msg.start.stream_sid
                self.connecting = True
                task = asyncio.get_running_loop().create_task(self._connect())
                _tasks.add(task)
                task.add_done_callback(_tasks.discard)
            elif msg.event == "stop":
                self._close_upstream()
        elif frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.transport = None
        self._close_upstream()

    def _close_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.send_close(WSCloseCode.OK)
            upstream.disconnect()

    async def _connect(self) -> None:
        upstream, _ = await ws_connect(
            lambda: _Upstream(self),
            self.agent_url,
            extra_headers={"Authorization": "Bearer bench"},
        )
        if self.closed:
            upstream.disconnect()
            return
        self.upstream = upstream
        upstream.send(_TEXT, SESSION_UPDATE)


async def _serve(port: int, agent_url: str) -> None:
    def listener(request: WSUpgradeRequest) -> _TwilioSide:
        return _TwilioSide(agent_url)

    server = await ws_create_server(listener, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 2.0)


def main() -> None:
    args = parse_args("python -m bench.relay_picows", __doc__)
    uvloop.run(_serve(args.port, args.agent_url))


if __name__ == "__main__":
    main()
