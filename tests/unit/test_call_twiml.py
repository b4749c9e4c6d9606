"""The TwiML that moves a live call on (`twilio/call_twiml.py`), read back as Twilio would."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from callbridge.twilio.call_twiml import dial_twiml, digits_twiml, stream_twiml


def test_a_dial_rings_the_number_with_our_callbacks() -> None:
    root = ET.fromstring(
        dial_twiml(
            "+15551234567",
            action_url="https://x.test/calls/c1/dial-ended",
            answered_url="https://x.test/calls/c1/transfer-answered",
            caller_id="+15550001111",
            ring_seconds=25,
            record=True,
        )
    )
    [dial] = root
    assert dial.tag == "Dial"
    assert dial.attrib == {
        "action": "https://x.test/calls/c1/dial-ended",
        "method": "POST",
        "timeout": "25",
        "callerId": "+15550001111",
        "record": "record-from-answer-dual",
    }
    [number] = dial
    assert (number.tag, number.text) == ("Number", "+15551234567")
    assert number.attrib == {"url": "https://x.test/calls/c1/transfer-answered", "method": "POST"}


def test_a_sip_address_is_dialled_as_sip_without_recording_by_default() -> None:
    root = ET.fromstring(dial_twiml("sip:desk@pbx.test", action_url="a", answered_url="b"))
    [dial] = root
    assert "record" not in dial.attrib and "callerId" not in dial.attrib
    assert [(c.tag, c.text) for c in dial] == [("Sip", "sip:desk@pbx.test")]


def test_digits_then_a_new_stream_with_its_parameters() -> None:
    root = ET.fromstring(digits_twiml("1w2#", "wss://x.test/media-stream/c1/ab", {"token": "t"}))
    play, connect = root
    assert (play.tag, play.attrib) == ("Play", {"digits": "1w2#"})
    [stream] = connect
    assert stream.attrib == {"url": "wss://x.test/media-stream/c1/ab"}
    assert [p.attrib for p in stream] == [{"name": "token", "value": "t"}]
    assert ET.fromstring(stream_twiml("wss://x", {})).find("Connect/Stream") is not None
