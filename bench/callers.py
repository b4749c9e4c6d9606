"""The Twilio side of the benchmark: lean Media Streams clients on picows.

Call set-up goes exactly the way `callbridge.testing.TwilioSimulator` does it (and through
it: its signed webhook request and its `RequestValidator`): a signed POST /twiml, the
stream URL and `<Parameter>`s (the per-call token) taken from the TwiML, a WebSocket
upgrade signed over the wss:// stream URL, then `connected` and `start`. After that the
per-frame work is kept minimal, because one harness process on one core plays every
caller: a 160-byte frame every 20 ms (on the shared tick), stamped with its send time and
sequence number; received media is only checked for its stamp; marks are echoed when a
playback clock reaches them and at once on `clear`, as Twilio does.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msgspec
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench import stamp
from callbridge.testing.audio import FRAME_BYTES, SILENCE_BYTE, tone

if TYPE_CHECKING:
    from bench.agent import AgentSession
    from bench.harness import Harness
    from callbridge.testing.twilio_simulator import TwilioSimulator

SPEECH_PERIOD_FRAMES = 200  # a burst of speech every 4 s...
SPEECH_FRAMES = 30  # ...lasting 0.6 s
_QUIET_FILL = bytes([SILENCE_BYTE]) * (FRAME_BYTES - stamp.HEADER_BYTES)
_SPEECH_FILL = tone(440, 20)[: FRAME_BYTES - stamp.HEADER_BYTES]
_MEDIA = (
    b'{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
    b'"timestamp":"%d","payload":"%s"},"streamSid":"%s"}'
)
_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2


class _Payload(msgspec.Struct):
    payload: str = ""


class _Name(msgspec.Struct):
    name: str = ""


class _ServerFrame(msgspec.Struct):
    event: str
    media: _Payload | None = None
    mark: _Name | None = None


_decode = msgspec.json.Decoder(_ServerFrame).decode
_encode = msgspec.json.Encoder().encode


class Caller(WSListener):
    """One call's Media Streams socket, as Twilio's side of it."""

    def __init__(self, harness: Harness, index: int, speech_phase: int) -> None:
        self.h = harness
        self.index = index
        self.call_sid = "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self._sid = self.stream_sid.encode()
        self.parameters: dict[str, str] = {}
        self.transport: WSTransport | None = None
        self.session: AgentSession | None = None  # linked by the agent from our stamps
        self.sending = False
        self.hanging_up = False
        self.closed = False
        self.closed_by_server = False
        self.speech_phase = speech_phase
        self.twilio_seq = 0  # Twilio's sequenceNumber: start, media, mark, stop
        self.chunk = 0
        # Agent -> caller: what arrived.
        self.rx_last = 0
        self.rx_count = 0
        self.rx_reordered = 0
        self.late_rx = 0
        self.clears = 0
        self.marks = 0
        self._play_until = 0.0  # when the audio Twilio holds for this call has played out
        self._pending_marks: list[tuple[str, asyncio.TimerHandle]] = []
        self._disconnected: asyncio.Future[None] | None = None

    # --- picows callbacks ----------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self._disconnected = asyncio.get_running_loop().create_future()
        transport.send(WSMsgType.TEXT, b'{"event":"connected","protocol":"Call","version":"1.0.0"}')
        self.twilio_seq += 1
        start = {
            "event": "start",
            "sequenceNumber": str(self.twilio_seq),
            "start": {
                "accountSid": _ACCOUNT_SID,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "customParameters": self.parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": self.stream_sid,
        }
        transport.send(WSMsgType.TEXT, _encode(start))
        self.sending = True

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.sending = False
        if not self.hanging_up:
            self.closed_by_server = True
        for _, handle in self._pending_marks:
            handle.cancel()
        self._pending_marks.clear()
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT:
            try:
                msg = _decode(frame.get_payload_as_memoryview())
            except msgspec.DecodeError:
                self.h.errors.append("caller: undecodable frame")
                return
            event = msg.event
            if event == "media" and msg.media is not None:
                self._on_media(msg.media.payload)
            elif event == "mark" and msg.mark is not None:
                self._on_mark(msg.mark.name)
            elif event == "clear":
                self._on_clear()
        elif kind is WSMsgType.CLOSE:
            if not self.hanging_up:
                self.closed_by_server = True
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    # --- caller -> server ----------------------------------------------------------------

    def send_media(self) -> None:
        """One 20 ms frame; called by the shared tick."""
        if not self.sending or self.h.quiet:
            return
        self.chunk += 1
        self.twilio_seq += 1
        chunk = self.chunk
        speaking = (chunk + self.speech_phase) % SPEECH_PERIOD_FRAMES < SPEECH_FRAMES
        kind, fill = (
            (stamp.KIND_SPEECH, _SPEECH_FILL) if speaking else (stamp.KIND_QUIET, _QUIET_FILL)
        )
        # The stamped seq is the chunk number: one per media frame, gaps mean loss.
        audio = stamp.header(kind, self.index, chunk, time.monotonic_ns()) + fill
        assert self.transport is not None
        self.transport.send(
            WSMsgType.TEXT,
            _MEDIA % (self.twilio_seq, chunk, chunk * 20, stamp.b64(audio), self._sid),
        )

    # --- server -> caller ----------------------------------------------------------------

    def _on_media(self, payload: str) -> None:
        h = self.h
        now = time.monotonic_ns()
        header = stamp.read(payload)
        # Twilio plays what it is given: 4 base64 characters are 3 bytes of 8 kHz audio.
        loop_now = time.monotonic()
        self._play_until = max(self._play_until, loop_now) + len(payload) * 3 / 4 / 8000
        if header is None:
            h.errors.append("caller: media without a stamp")
            return
        kind, _, seq, sent = header
        h.rx_down += 1
        if kind == stamp.KIND_LATE:
            self.late_rx += 1  # audio of an interrupted reply: the bridge should drop it
            return
        if h.recording and sent >= h.window_start_ns:
            h.lat_down.samples.append((now - sent) // 1000)
        if seq > self.rx_last:
            self.rx_last = seq
        else:
            self.rx_reordered += 1
        self.rx_count += 1

    def _on_mark(self, name: str) -> None:
        delay = self._play_until - time.monotonic()
        if delay <= 0:
            self._echo_mark(name)
            return
        handle = asyncio.get_running_loop().call_later(delay, self._played, name)
        self._pending_marks.append((name, handle))

    def _played(self, name: str) -> None:
        self._pending_marks = [(n, t) for n, t in self._pending_marks if n != name]
        self._echo_mark(name)

    def _on_clear(self) -> None:
        self.clears += 1
        self._play_until = 0.0
        pending, self._pending_marks = self._pending_marks, []
        for name, handle in pending:
            handle.cancel()
            self._echo_mark(name)

    def _echo_mark(self, name: str) -> None:
        if self.closed or self.transport is None:
            return
        self.marks += 1
        self.twilio_seq += 1
        mark = {
            "event": "mark",
            "sequenceNumber": str(self.twilio_seq),
            "streamSid": self.stream_sid,
            "mark": {"name": name},
        }
        self.transport.send(WSMsgType.TEXT, _encode(mark))

    # --- hanging up ----------------------------------------------------------------------

    async def hang_up(self, timeout: float = 5.0) -> None:
        """`stop`, then close the socket, as Twilio does when the caller hangs up."""
        self.hanging_up = True
        self.sending = False
        transport = self.transport
        if transport is None or self.closed:
            return
        self.twilio_seq += 1
        stop = {
            "event": "stop",
            "sequenceNumber": str(self.twilio_seq),
            "streamSid": self.stream_sid,
            "stop": {"accountSid": _ACCOUNT_SID, "callSid": self.call_sid},
        }
        transport.send(WSMsgType.TEXT, _encode(stop))
        transport.send_close(WSCloseCode.OK)
        assert self._disconnected is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._disconnected), timeout)
        except TimeoutError:
            transport.disconnect()


def parse_twiml(body: str) -> tuple[str, dict[str, str]]:
    """The <Connect><Stream> URL and its <Parameter>s; ValueError if there is none."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ValueError(f"TwiML does not parse: {exc}") from None
    for element in root.iter():
        if element.tag.rpartition("}")[2] == "Stream":
            url = element.get("url") or ""
            params = {
                p.get("name") or "": p.get("value") or ""
                for p in element
                if p.tag.rpartition("}")[2] == "Parameter"
            }
            return url, params
    raise ValueError(f"no <Stream> in the TwiML: {body[:200]!r}")


async def connect_via_webhook(
    caller: Caller, simulator: TwilioSimulator, ws_base: str, *, timeout: float = 15.0
) -> None:
    """The real server: signed webhook, TwiML, signed upgrade; raises with a reason."""
    params = {
        "AccountSid": _ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "CallSid": caller.call_sid,
        "CallStatus": "ringing",
        "Called": "+15552223333",
        "Caller": "+15550001111",
        "Direction": "inbound",
        "From": "+15550001111",
        "To": "+15552223333",
    }
    status, body = await simulator.request(simulator.public_url + "/twiml", "POST", params)
    if status != 200:
        raise RuntimeError(f"webhook answered HTTP {status}: {body[:120]!r}")
    url, parameters = parse_twiml(body)
    caller.parameters = parameters
    signature = simulator.validator.compute_signature(url, {})
    target = ws_base + urlsplit(url).path  # the TwiML's path, on the server's real address
    await _connect(caller, target, {"X-Twilio-Signature": signature})


async def connect_direct(caller: Caller, ws_base: str) -> None:
    """The baselines: no webhook, no signatures; straight to the stream socket."""
    await _connect(caller, f"{ws_base}/media-stream/bench{caller.index}", {})


async def _connect(caller: Caller, url: str, headers: dict[str, str]) -> None:
    await ws_connect(
        lambda: caller,
        url,
        extra_headers=headers,
        websocket_handshake_timeout=15.0,
        logger_name="bench.caller",
    )
