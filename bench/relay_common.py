"""What both minimal relays share: the few message shapes they parse and write.

The relays decode every frame with typed msgspec structs and encode with msgspec, as
callbridge does, so that the baselines differ from it only in the logic around the relay
(and, for picows, the WebSocket library), not in JSON handling.
"""

from __future__ import annotations

import argparse

import msgspec

# The smallest valid first message: the agent answers session.updated, session.ready.
SESSION_UPDATE = (
    b'{"type":"session.update","session":{"input":{"format":{"encoding":"audio/pcmu"}},'
    b'"output":{"format":{"encoding":"audio/pcmu"}}}}'
)


class _Payload(msgspec.Struct):
    payload: str


class _StartInfo(msgspec.Struct, rename="camel"):
    stream_sid: str


class TwilioFrame(msgspec.Struct):
    event: str
    media: _Payload | None = None
    start: _StartInfo | None = None


class AgentFrame(msgspec.Struct):
    type: str
    data: str | None = None


class _InputAudio(msgspec.Struct, tag_field="type", tag="input.audio"):
    audio: str


class _Media(msgspec.Struct, tag_field="event", tag="media", rename="camel"):
    stream_sid: str
    media: _Payload


decode_twilio = msgspec.json.Decoder(TwilioFrame).decode
decode_agent = msgspec.json.Decoder(AgentFrame).decode
_encode = msgspec.json.Encoder().encode


def encode_input_audio(payload: str) -> bytes:
    return _encode(_InputAudio(payload))


def encode_media(stream_sid: str, payload: str) -> bytes:
    return _encode(_Media(stream_sid, _Payload(payload)))


def parse_args(prog: str, doc: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--agent-url", required=True)
    return p.parse_args()
