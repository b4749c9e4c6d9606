"""The Media Streams wire format: each reason a frame from Twilio is refused, and what we send.

Frames are decoded the way the per-frame path does it (`decode_strict`, then `undecodable`
when it raises) and through `decode`, which must agree.
"""

from __future__ import annotations

import base64
import json

import msgspec
import pytest

from callbridge.twilio import media_stream as twilio


def decoded(frame: bytes) -> object:
    """What the per-frame path makes of `frame`, checked against `decode`."""
    try:
        message: object = twilio.decode_strict(frame)
    except twilio.DECODE_ERRORS as exc:
        message = twilio.undecodable(frame, exc)
    assert twilio.decode(frame) == message
    return message


def reason(frame: bytes) -> str:
    message = decoded(frame)
    assert isinstance(message, twilio.InvalidFrame), message
    return message.reason


def test_each_message_twilio_sends_is_typed() -> None:
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "streamSid": "MZ1",
            "callSid": "CA1",
            "accountSid": "AC1",
            "tracks": ["inbound"],
            "customParameters": {"token": "t", "count": 3},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": "MZ1",
    }
    message = decoded(json.dumps(start).encode())
    assert isinstance(message, twilio.Start)
    assert (message.start.stream_sid, message.start.call_sid) == ("MZ1", "CA1")
    assert message.start.custom_parameters == {"token": "t", "count": 3}  # a number kept
    media = {"event": "media", "streamSid": "MZ1", "media": {"payload": "AAEC", "track": "x"}}
    assert decoded(json.dumps(media).encode()) == twilio.Media(
        twilio.MediaInfo(b"\x00\x01\x02"), stream_sid="MZ1"
    )
    mark = decoded(b'{"event":"mark","streamSid":"MZ1","mark":{"name":"m1"}}')
    assert isinstance(mark, twilio.Mark) and mark.mark.name == "m1"
    dtmf = decoded(b'{"event":"dtmf","dtmf":{"digit":"5"}}')
    assert isinstance(dtmf, twilio.Dtmf)
    assert (dtmf.dtmf.digit, dtmf.dtmf.track) == ("5", "inbound_track")
    assert isinstance(decoded(b'{"event":"stop","stop":{"callSid":"CA1"}}'), twilio.Stop)
    assert decoded(b'{"event":"connected","protocol":"Call"}') == twilio.Connected("Call")


@pytest.mark.parametrize("frame", [b"not json", b"", b"{", b"\xff", b'{"event":"stop"'])
def test_a_frame_that_is_not_json_is_invalid_json(frame: bytes) -> None:
    assert reason(frame) == "invalid JSON"


@pytest.mark.parametrize("frame", [b"[1]", b'"media"', b"3", b"null"])
def test_json_that_is_not_an_object(frame: bytes) -> None:
    assert reason(frame) == "JSON frame is not an object"


@pytest.mark.parametrize("frame", [b"{}", b'{"x":1}', b'{"event":5}', b'{"event":null}'])
def test_an_object_without_an_event_name(frame: bytes) -> None:
    assert reason(frame) == "frame has no event"


def test_an_unknown_event_is_named_and_cut_short() -> None:
    assert reason(b'{"event":"bogus"}') == "unknown event 'bogus'"
    long_name = "x" * 100
    assert reason(b'{"event":"%s"}' % long_name.encode()) == f"unknown event {'x' * 40!r}"


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b'{"event":"start"}', "malformed start frame: Object missing required field `start`"),
        (
            b'{"event":"dtmf","dtmf":{}}',
            "malformed dtmf frame: Object missing required field `digit` - at `$.dtmf`",
        ),
        (
            b'{"event":"mark","mark":{"name":5}}',
            "malformed mark frame: Expected `str`, got `int` - at `$.mark.name`",
        ),
        (b'{"event":"media","media":{}}', "malformed media frame: "),
    ],
)
def test_a_known_event_with_bad_fields_says_which(frame: bytes, expected: str) -> None:
    assert reason(frame).startswith(expected)


def test_a_payload_that_is_not_base64_is_refused_without_its_content() -> None:
    frame = b'{"event":"media","media":{"payload":"c2VjcmV0IQ=*"}}'
    why = reason(frame)
    assert why.startswith("malformed media frame: ")
    assert "$.media.payload" in why
    assert "c2VjcmV0" not in why  # safe to log: no payload content


@pytest.mark.parametrize(
    "frame",
    [
        b'{"event":"mark","mark":{"name":"\xff"}}',  # in a field the decoder reads
        b'{"event":"\xff"}',
        b'"\xff"',
        b'{"\xff":1}',  # in a name the typed decoder skips, found by the second look
        b'{"event":"media","x":"\xfe"}',
    ],
)
def test_text_that_is_not_utf8_ends_the_stream(frame: bytes) -> None:
    assert decoded(frame) is twilio.INVALID_TEXT


def test_a_decoder_error_that_is_unicode_is_invalid_text_whatever_the_frame() -> None:
    error = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    assert twilio.undecodable(b'{"event":"stop"}', error) is twilio.INVALID_TEXT


def test_frames_decode_from_str_and_memoryview_alike() -> None:
    frame = '{"event":"mark","mark":{"name":"m1"}}'
    assert twilio.decode(frame) == twilio.decode(memoryview(frame.encode()))
    assert twilio.decode("[") == twilio.InvalidFrame("invalid JSON")


def test_the_relay_decoder_keeps_the_payload_as_it_arrived() -> None:
    frame = b'{"event":"media","media":{"payload":"AAEC"}}'
    relayed = twilio.decode_relay(frame)
    assert isinstance(relayed, twilio.RelayMedia)
    assert bytes(relayed.media.payload) == b'"AAEC"'  # the JSON string, quotes and all
    # Every other message decodes as the full path decodes it.
    mark = b'{"event":"mark","mark":{"name":"m1"}}'
    assert twilio.decode_relay(mark) == twilio.decode_strict(mark)


def test_what_we_send() -> None:
    media = msgspec.json.decode(twilio.encode_media("MZ1", b"\x00\x01\x02"))
    assert media == {"event": "media", "streamSid": "MZ1", "media": {"payload": "AAEC"}}
    assert base64.b64decode(media["media"]["payload"]) == b"\x00\x01\x02"
    assert msgspec.json.decode(twilio.encode_mark("MZ1", "m7")) == {
        "event": "mark",
        "streamSid": "MZ1",
        "mark": {"name": "m7"},
    }
    assert msgspec.json.decode(twilio.encode_clear("MZ1")) == {
        "event": "clear",
        "streamSid": "MZ1",
    }
