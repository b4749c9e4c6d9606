"""One Media Streams WebSocket of a call: the caller's frames out, the server's in.

The sender sends a 160-byte ``media`` frame per ``frame_interval`` on an absolute
schedule, so the cadence never drifts and no frame is skipped; the caller's queued speech
goes out instead of silence until it is used up. The reader checks every frame the
server sends (protocol: https://www.twilio.com/docs/voice/media-streams/websocket-messages)
and records Twilio's 31950/31951 warnings instead of failing; ``media``, ``mark`` and
``clear`` go to the call's `Loudspeaker`.

Per-frame work is kept cheap on purpose: the load benchmark runs hundreds of simulated
calls in one process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec

from callbridge.testing.audio import FRAME_BYTES, SAMPLE_RATE, SILENCE_BYTE
from callbridge.testing.twilio_simulator.loudspeaker import Loudspeaker
from callbridge.testing.twilio_simulator.timeline import place

if TYPE_CHECKING:
    from callbridge.testing.twilio_simulator.call import SimulatedCall

__all__ = ["MediaStream"]

_FRAME_MS = 20  # each media frame carries 20 ms of audio, whatever the simulated cadence
_SILENCE_FRAME = bytes([SILENCE_BYTE]) * FRAME_BYTES
_SILENCE_PAYLOAD = base64.b64encode(_SILENCE_FRAME).decode("ascii")
# The hot path: one media frame per frame interval per call, formatted without a JSON
# encoder.
_MEDIA_TEMPLATE = (
    '{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
    '"timestamp":"%d","payload":"%s"},"streamSid":"%s"}'
)
_MEDIA_KEYS = frozenset(("event", "streamSid", "media"))
_MARK_KEYS = frozenset(("event", "streamSid", "mark"))
_CLEAR_KEYS = frozenset(("event", "streamSid"))
_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode


def _dumps(obj: object) -> str:
    return _json_encode(obj).decode("utf-8")


class MediaStream:
    """One Media Streams WebSocket: the sender, the reader and the loudspeaker of a call."""

    def __init__(
        self, call: SimulatedCall, ws: aiohttp.ClientWebSocketResponse, stream_sid: str
    ) -> None:
        self.call = call
        self.ws = ws
        self.stream_sid = stream_sid
        self.seq = 0  # one sequenceNumber counter for start, media, mark, dtmf and stop
        self.closing = False  # set before `stop`: nothing numbered may follow it
        self.close_started = False
        self.broken = False  # the connection was cut under it (`break_off`)
        self.loudspeaker = Loudspeaker(call, self._echo_mark)
        self.t0 = 0.0  # loop time the stream started; frame n is sent at t0 + n * interval
        self._sender: asyncio.Task[None] | None = None
        self._player: asyncio.Task[None] | None = None

    def tasks(self) -> tuple[asyncio.Task[None], ...]:
        return tuple(t for t in (self._sender, self._player) if t is not None)

    async def send_numbered(
        self, message: dict[str, Any], key: str | None = None, body: object = None
    ) -> bool:
        """Send a frame carrying the next sequenceNumber; False once the socket is gone."""
        if self.closing:
            return False
        self.seq += 1
        message["sequenceNumber"] = str(self.seq)
        if key is not None:
            message[key] = body
        # aiohttp writes an uncompressed frame synchronously on the first step of send_str,
        # so frames hit the wire in the order their sequence numbers were assigned.
        try:
            await self.ws.send_str(_dumps(message))
        except (ConnectionError, aiohttp.ClientError):
            return False
        return True

    async def run(self) -> str:
        call = self.call
        sim = call.simulator
        sid = self.stream_sid
        try:
            await self.ws.send_str('{"event":"connected","protocol":"Call","version":"1.0.0"}')
            start = {
                "streamSid": sid,
                "accountSid": sim.account_sid,
                "callSid": call.call_sid,
                "tracks": ["inbound"],
                "customParameters": call.custom_parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            }
            await self.send_numbered({"event": "start", "streamSid": sid}, "start", start)
        except (ConnectionError, aiohttp.ClientError):
            pass  # the reader below sees the closed socket
        call.stream_sid = sid
        call.streams_opened += 1
        call._notify()
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        if call.timeline_start is None:
            call.timeline_start = self.t0
        self._sender = loop.create_task(self._send_loop())
        self._player = loop.create_task(self.loudspeaker.run())
        try:
            return await self._read_loop()
        finally:
            self.closing = True
            # What the caller never got to hear: the server closed before it played.
            call.unplayed_at_stream_end = self.loudspeaker.unplayed
            for task in (self._sender, self._player):
                task.cancel()
            await asyncio.wait([self._sender, self._player])
            if not self.close_started and not self.ws.closed:
                self.close_started = True
                await self.ws.close()

    async def stop_and_close(self) -> None:
        """Caller hangup or redirect: ``stop``, then close the socket."""
        if self.close_started:
            return
        self.close_started = True
        if not self.closing:
            call = self.call
            self.seq += 1
            stop = {
                "event": "stop",
                "sequenceNumber": str(self.seq),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": call.simulator.account_sid, "callSid": call.call_sid},
            }
            self.closing = True  # before the await: no media may follow the stop
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await self.ws.send_str(_dumps(stop))
        await self.ws.close()

    def break_off(self) -> None:
        """A network blip: the connection is cut, no `stop`, no close frame. Twilio then
        runs the TwiML after `</Connect>` (error 31903 in its debugger)."""
        if self.close_started:
            return
        self.close_started = self.closing = self.broken = True
        self.call.errors.append("31903 stream broken (simulated network blip)")
        transport = self.ws._writer.transport  # aiohttp's own: no public way to abort
        transport.abort()

    # -- caller -> server ------------------------------------------------------------------

    async def _send_loop(self) -> None:
        """One 160-byte frame per frame_interval against a monotonic clock, never skipping."""
        loop = asyncio.get_running_loop()
        interval = self.call.simulator.frame_interval
        call = self.call
        speech = call._speech
        ws = self.ws
        sid = self.stream_sid
        begin = self.t0
        timeline = call.simulator.record_timeline
        # Where this stream's frame 1 sits on the call's timeline (a later stream's later).
        offset = round((begin - (call.timeline_start or begin)) * SAMPLE_RATE)
        speaking_since: float | None = None
        chunk = 0
        try:
            while True:
                chunk += 1
                delay = begin + chunk * interval - loop.time()
                # Late (loop busy): send at once but still yield; the cadence is kept by the
                # absolute schedule, so there is no drift and no frame is skipped.
                await asyncio.sleep(delay if delay > 0 else 0)
                if speech:
                    frame = bytes(speech[:FRAME_BYTES])
                    del speech[:FRAME_BYTES]
                    if len(frame) < FRAME_BYTES:
                        frame += _SILENCE_FRAME[len(frame) :]
                    payload = base64.b64encode(frame).decode("ascii")
                    if timeline:
                        if speaking_since is None:
                            speaking_since = (offset + (chunk - 1) * FRAME_BYTES) / SAMPLE_RATE
                        if not speech:
                            spoken = (offset + chunk * FRAME_BYTES) / SAMPLE_RATE
                            call.spoken_spans.append((speaking_since, spoken))
                            speaking_since = None
                else:
                    frame = _SILENCE_FRAME
                    payload = _SILENCE_PAYLOAD
                if self.closing:
                    return
                if timeline:
                    place(call.caller_track, offset + (chunk - 1) * FRAME_BYTES, frame)
                self.seq += 1
                await ws.send_str(
                    _MEDIA_TEMPLATE % (self.seq, chunk, chunk * _FRAME_MS, payload, sid)
                )
                call.media_sent += 1
        except (ConnectionError, aiohttp.ClientError):
            return

    # -- server -> caller ------------------------------------------------------------------

    async def _read_loop(self) -> str:
        ws = self.ws
        call = self.call
        text, binary = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is text:
                await self._on_text(msg.data)
            elif kind is binary:
                call.warnings.append(f"31950 binary frame of {len(msg.data)} bytes ignored")
            elif kind is aiohttp.WSMsgType.ERROR:
                call.errors.append(f"31903 stream broken: {msg.data!r}")
                break
            else:  # CLOSE (server closed), CLOSING (we close), CLOSED
                break
        self.closing = True
        if call._interrupting is not None:
            return call._interrupting
        if self.broken:
            return "stream-broken"
        call.close_code = ws.close_code
        return "server-closed"

    def _warn(self, reason: str) -> None:
        self.call.warnings.append("31951 " + reason)

    async def _on_text(self, data: str) -> None:
        call = self.call
        try:
            frame = _json_decode(data)
        except msgspec.DecodeError as exc:
            self._warn(f"invalid JSON: {exc}")
            return
        if not isinstance(frame, dict):
            self._warn(f"frame is not a JSON object: {data[:80]!r}")
            return
        if call.simulator.record_received:
            call.received.append(frame)
            call._notify()
        event = frame.get("event")
        if event == "media":
            if frame.keys() != _MEDIA_KEYS:
                self._warn(f"media frame fields {sorted(frame)}")
                return
            media = frame["media"]
            if not isinstance(media, dict) or media.keys() != {"payload"}:
                self._warn(f"media.* must be exactly {{payload}}: {media!r:.80}")
                return
            payload = media["payload"]
            if not isinstance(payload, str):
                self._warn("media.payload is not a string")
                return
            if frame["streamSid"] != self.stream_sid:
                self._warn(f"wrong streamSid {frame['streamSid']!r}")
                return
            try:
                audio = binascii.a2b_base64(payload, strict_mode=True)
            except (binascii.Error, ValueError):
                self._warn("media.payload is not valid base64")
                return
            if audio:
                self.loudspeaker.play(audio)
        elif event == "mark":
            if frame.keys() != _MARK_KEYS:
                self._warn(f"mark frame fields {sorted(frame)}")
                return
            mark = frame["mark"]
            if not isinstance(mark, dict) or mark.keys() != {"name"}:
                self._warn(f"mark.* must be exactly {{name}}: {mark!r:.80}")
                return
            name = mark["name"]
            if not isinstance(name, str):
                self._warn("mark.name is not a string")
                return
            if frame["streamSid"] != self.stream_sid:
                self._warn(f"wrong streamSid {frame['streamSid']!r}")
                return
            await self.loudspeaker.mark(name)
        elif event == "clear":
            if frame.keys() != _CLEAR_KEYS:
                self._warn(f"clear frame fields {sorted(frame)}")
                return
            if frame["streamSid"] != self.stream_sid:
                self._warn(f"wrong streamSid {frame['streamSid']!r}")
                return
            call.clears += 1
            if call.simulator.record_timeline and call.timeline_start is not None:
                call.clear_times.append(asyncio.get_running_loop().time() - call.timeline_start)
            await self.loudspeaker.clear()
            call._notify()
        else:
            self._warn(f"unknown event {event!r}")

    async def _echo_mark(self, name: str, played: bool) -> None:
        self.call.marks.append((name, played))
        await self.send_numbered(
            {"event": "mark", "streamSid": self.stream_sid}, "mark", {"name": name}
        )
        self.call._notify()
