"""Hand-driven Twilio for tests that need to misbehave: signed (or not) webhooks and a raw
Media Streams socket, without the simulator's good manners."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import aiohttp
from twilio.request_validator import RequestValidator

from tests.conftest import AUTH_TOKEN, PUBLIC_URL, RunningServer

CALL_SID = "CA" + "1" * 32
STREAM_SID = "MZ" + "ab" * 16
validator = RequestValidator(AUTH_TOKEN)


def sign(url: str, params: dict[str, str]) -> str:
    return validator.compute_signature(url, params)


@dataclass
class Announced:
    stream_path: str  # /media-stream/{call_id}
    token: str
    twiml: str

    @property
    def wss_url(self) -> str:
        return PUBLIC_URL.replace("https://", "wss://") + self.stream_path


async def announce(
    http: aiohttp.ClientSession, server: RunningServer, call_sid: str = CALL_SID
) -> Announced:
    """POST a correctly signed /twiml and pull the stream path and token out of the TwiML."""
    params = {"CallSid": call_sid, "From": "+15550001111", "To": "+15552223333"}
    headers = {"X-Twilio-Signature": sign(f"{PUBLIC_URL}/twiml", params)}
    async with http.post(f"{server.url}/twiml", data=params, headers=headers) as resp:
        twiml = await resp.text()
        assert resp.status == 200, twiml
    path = re.search(r'url="wss://[^/]+(/media-stream/[^"]+)"', twiml)
    token = re.search(r'<Parameter name="token" value="([^"]+)"', twiml)
    assert path and token, twiml
    return Announced(path.group(1), token.group(1), twiml)


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
    ws_url = server.url.replace("http://", "ws://") + call.stream_path
    return await http.ws_connect(ws_url, headers=headers)


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
