"""Hand-driven Twilio for tests that need to misbehave: signed (or not) webhooks and a raw
Media Streams socket, without the simulator's good manners."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from twilio.request_validator import RequestValidator

from callbridge.testing.fake_agent import FakeSession, FakeVoiceAgent
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, RunningServer

CALL_SID = "CA" + "1" * 32
STREAM_SID = "MZ" + "ab" * 16
validator = RequestValidator(AUTH_TOKEN)


def twilio_session() -> aiohttp.ClientSession:
    """An HTTP client that, like Twilio, opens a new connection for each request and stream:
    the main port routes each connection once, by its first request."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


def sign(url: str, params: dict[str, str]) -> str:
    return validator.compute_signature(url, params)


@dataclass
class Announced:
    wss_url: str  # what the TwiML says, which is what Twilio signs
    token: str
    twiml: str

    @property
    def stream_path(self) -> str:  # /media-stream/{call_id}
        return urlsplit(self.wss_url).path


async def announce(
    http: aiohttp.ClientSession, server: RunningServer, call_sid: str = CALL_SID
) -> Announced:
    """POST a correctly signed /twiml and pull the stream path and token out of the TwiML."""
    params = {"CallSid": call_sid, "From": "+15550001111", "To": "+15552223333"}
    headers = {"X-Twilio-Signature": sign(f"{PUBLIC_URL}/twiml", params)}
    async with http.post(f"{server.url}/twiml", data=params, headers=headers) as resp:
        twiml = await resp.text()
        assert resp.status == 200, twiml
    url = re.search(r'url="(wss://[^/]+/media-stream/[^"]+)"', twiml)
    token = re.search(r'<Parameter name="token" value="([^"]+)"', twiml)
    assert url and token, twiml
    return Announced(url.group(1), token.group(1), twiml)


async def connect_stream(
    http: aiohttp.ClientSession,
    server: RunningServer,
    call: Announced,
    signature: str | None = None,
) -> aiohttp.ClientWebSocketResponse:
    """Open the stream with Twilio's upgrade signature (or the one given; "" for none)."""
    if signature is None:
        signature = sign(call.wss_url, {})
    headers = {"X-Twilio-Signature": signature} if signature else {}
    return await http.ws_connect(local_stream_url(server, call), headers=headers)


async def open_live_stream(
    http: aiohttp.ClientSession,
    server: RunningServer,
    fake_agent: FakeVoiceAgent,
    call_sid: str = CALL_SID,
    session_index: int = 0,
) -> tuple[aiohttp.ClientWebSocketResponse, Announced, FakeSession]:
    """A signed stream, past its `start`, once the agent's session is ready for audio."""
    call = await announce(http, server, call_sid)
    ws = await connect_stream(http, server, call)
    await ws.send_str(start_frame(call.token, call_sid=call_sid))
    session = await fake_agent.wait_for_session(session_index)
    await session.wait_sent("session.ready")
    return ws, call, session


def local_stream_url(server: RunningServer, call: Announced) -> str:
    """Where the stream really is: the TwiML's path on the server's real address."""
    return f"ws://{urlsplit(server.url).netloc}{call.stream_path}"


def start_frame(token: str | None, call_sid: str = CALL_SID, stream_sid: str = STREAM_SID) -> str:
    params = {"token": token} if token is not None else {}
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": stream_sid,
            "start": {
                "streamSid": stream_sid,
                "accountSid": "AC" + "0" * 32,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def media_frame(payload: str, seq: int = 2, stream_sid: str = STREAM_SID) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": payload},
        }
    )


def stop_frame(seq: int = 3, stream_sid: str = STREAM_SID, call_sid: str = CALL_SID) -> str:
    return json.dumps(
        {
            "event": "stop",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "stop": {"accountSid": "AC" + "0" * 32, "callSid": call_sid},
        }
    )


async def hang_up(ws: aiohttp.ClientWebSocketResponse, seq: int = 3) -> None:
    """The caller hangs up: `stop`, then the socket closes (a close without `stop` is a
    broken stream, which the call waits out for Twilio's next one)."""
    await ws.send_str(stop_frame(seq))
    await ws.close()
