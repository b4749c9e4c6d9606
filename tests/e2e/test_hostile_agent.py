"""An agent socket that sends text that is not UTF-8: callbridge fails that connection with
close code 1007 (RFC 6455) and resumes the session, as after any broken connection; the
call goes on and nothing crashes."""

from __future__ import annotations

import aiohttp
import pytest

from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_simulator import TwilioSimulator
from tests.conftest import BOTH_AUDIO_PATHS
from tests.helpers.log_events import caught

BOTH_AGENT_SOCKETS = pytest.mark.parametrize(
    "agent_transport", ["picows", "aiohttp"], indirect=True
)

NOT_UTF8 = {
    "transcript": b'{"type":"transcript.user","text":"\xff"}',
    # Looks like reply audio: the compiled fast path's base64 check hands it to the full path.
    "reply-audio": b'{"type":"reply.audio","reply_id":"r","data":"AA\xffA"}',
}


@BOTH_AGENT_SOCKETS
@BOTH_AUDIO_PATHS
@pytest.mark.parametrize("frame", NOT_UTF8.values(), ids=NOT_UTF8.keys())
async def test_agent_text_that_is_not_utf8_fails_that_socket_with_1007(
    simulator: TwilioSimulator, fake_agent: FakeVoiceAgent, frame: bytes
) -> None:
    with caught() as events:
        call = await simulator.place_inbound_call()
        session = await fake_agent.wait_for_session()
        await session.wait_sent("session.ready")
        conn = session._conn  # the fake's side of the socket, to send raw bytes on
        assert conn is not None
        await conn.ws.send_frame(frame, aiohttp.WSMsgType.TEXT)
        resume = await session.wait_for("session.resume", timeout=10)
        assert resume["session_id"] == session.session_id
        assert conn.ws.close_code == 1007
        await call.hangup()
        await session.wait_for("session.end")
        await events.wait_for("call.ended")
    assert "call.crashed" not in events.names
    [dropped] = events.fields_of("agent.dropped")
    assert str(dropped["detail"]).startswith("closed with code 1007: "), dropped
