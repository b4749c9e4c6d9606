"""FakeTwilioRest driven by the real ``twilio`` package (synchronous, so run in a thread)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from callbridge.testing.audio import tone
from callbridge.testing.twilio_rest_fake import FakeTwilioRest
from callbridge.testing.twilio_simulator import TwilioSimulator

from .test_twilio_simulator import PUBLIC, STREAM_TWIML, TOKEN, FakeBridge

OWNED = "+15550001111"
CALLEE = "+15557654321"


@pytest.fixture
async def bridge() -> AsyncIterator[FakeBridge]:
    server = FakeBridge()
    server.documents["/outbound"] = STREAM_TWIML
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def sim(bridge: FakeBridge) -> AsyncIterator[TwilioSimulator]:
    simulator = TwilioSimulator(
        bridge.url, auth_token=TOKEN, public_url=PUBLIC, playback_rate=80_000
    )
    yield simulator
    await simulator.close()


@pytest.fixture
async def fake(sim: TwilioSimulator) -> AsyncIterator[FakeTwilioRest]:
    async with FakeTwilioRest(sim, auth_token=TOKEN, callee_audio=tone(440, 40)) as rest:
        yield rest


def client_for(fake: FakeTwilioRest, token: str = TOKEN) -> Client:
    # environment={}: no TWILIO_EDGE/REGION from the environment rewriting the host (§6).
    client = Client(fake.account_sid, token, environment={})
    client.api.base_url = fake.base_url
    return client


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(fn)


async def test_create_is_answered_by_the_simulator_with_signed_callbacks(
    bridge: FakeBridge, fake: FakeTwilioRest
) -> None:
    client = client_for(fake)
    events = ["initiated", "ringing", "answered", "completed"]
    created = await in_thread(
        lambda: client.calls.create(
            to=CALLEE,
            from_=OWNED,
            url=PUBLIC + "/outbound",
            status_callback=PUBLIC + "/status",
            status_callback_event=events,
        )
    )
    assert created.sid.startswith("CA") and len(created.sid) == 34
    assert created.status == "queued"
    assert created.direction == "outbound-api"
    assert created.to == CALLEE and created._from == OWNED
    assert fake.created[0]["StatusCallbackEvent"] == events
    assert fake.created[0]["Url"] == [PUBLIC + "/outbound"]

    call = await fake.wait_for_call(0)
    assert call.call_sid == created.sid
    conn = await bridge.next_conn()
    answer = next(r for r in bridge.requests if r[0] == "/outbound")
    assert answer[2] is True  # signed over the public URL
    assert answer[1]["Direction"] == "outbound-api"
    assert answer[1]["CallStatus"] == "in-progress"
    assert answer[1]["To"] == CALLEE and answer[1]["From"] == OWNED
    # The callee's audio reaches the bridge.
    await conn.count("media", 2)
    first = base64.b64decode(conn.frames[2]["media"]["payload"])
    assert first == tone(440, 40)[:160]

    await conn.ws.close()
    await call.wait_ended()
    done = await fake.wait_status_callback(call.call_sid, "completed")
    assert done["CallDuration"].isdigit() and done["Duration"].isdigit()
    callbacks = [r for r in bridge.requests if r[0] == "/status"]
    assert [p["CallStatus"] for _, p, _ in callbacks] == [
        "initiated",
        "ringing",
        "in-progress",
        "completed",
    ]
    assert all(signed for _, _, signed in callbacks)
    assert [p["SequenceNumber"] for _, p, _ in callbacks] == ["0", "1", "2", "3"]
    for _, params, _ in callbacks:
        assert params["CallbackSource"] == "call-progress-events"
        assert params["CallSid"] == call.call_sid
        assert parsedate_to_datetime(params["Timestamp"]).utcoffset() is not None
    fetched = await in_thread(lambda: client.calls(call.call_sid).fetch())
    assert fetched.status == "completed"


async def test_default_status_callback_is_completed_only(
    bridge: FakeBridge, fake: FakeTwilioRest
) -> None:
    client = client_for(fake)
    created = await in_thread(
        lambda: client.calls.create(
            to=CALLEE,
            from_=OWNED,
            twiml="<Response><Say>Hi</Say></Response>",
            status_callback=PUBLIC + "/status",
        )
    )
    call = await fake.wait_for_call(0)
    await call.wait_ended()
    assert call.said == ["Hi"]
    assert not any(r[0] == "/outbound" for r in bridge.requests)
    await fake.wait_status_callback(created.sid, "completed")
    assert [p["CallStatus"] for p in fake.status_callbacks_sent] == ["completed"]


@pytest.mark.parametrize(
    ("kwargs", "token", "code", "status"),
    [
        ({}, "wrong-token", 20003, 401),
        ({"to": "12345"}, TOKEN, 21211, 400),
        ({"from_": "+15559990000"}, TOKEN, 21212, 400),
        ({"to": "+15550009999"}, TOKEN, 21219, 400),
        ({"url": None}, TOKEN, 21205, 400),
    ],
)
async def test_create_errors_raise_twilio_rest_exception(
    sim: TwilioSimulator, kwargs: dict[str, Any], token: str, code: int, status: int
) -> None:
    async with FakeTwilioRest(sim, verified_numbers=[CALLEE]) as fake:
        client = client_for(fake, token)
        args: dict[str, Any] = {"to": CALLEE, "from_": OWNED, "url": PUBLIC + "/outbound"}
        args.update(kwargs)
        args = {k: v for k, v in args.items() if v is not None}
        with pytest.raises(TwilioRestException) as caught:
            await in_thread(lambda: client.calls.create(**args))
        assert caught.value.code == code
        assert caught.value.status == status
        assert fake.created == []
        assert sim.calls == []


async def test_update_completed_hangs_up_an_inbound_call(
    bridge: FakeBridge, sim: TwilioSimulator, fake: FakeTwilioRest
) -> None:
    call = await sim.place_inbound_call()
    conn = await bridge.next_conn()
    client = client_for(fake)
    updated = await in_thread(lambda: client.calls(call.call_sid).update(status="completed"))
    assert updated.status == "completed"
    await call.wait_ended()
    assert call.end_reason == "caller-hangup"
    stop = await conn.wait_frame("stop")
    assert stop["stop"]["callSid"] == call.call_sid
    assert fake.updated == [(call.call_sid, {"Status": ["completed"]})]
    # The call is over now: Twilio answers 21220.
    with pytest.raises(TwilioRestException) as caught:
        await in_thread(lambda: client.calls(call.call_sid).update(status="completed"))
    assert caught.value.code == 21220


async def test_update_twiml_redirects_the_live_call(
    bridge: FakeBridge, fake: FakeTwilioRest
) -> None:
    client = client_for(fake)
    await in_thread(lambda: client.calls.create(to=CALLEE, from_=OWNED, url=PUBLIC + "/outbound"))
    call = await fake.wait_for_call(0)
    conn = await bridge.next_conn()
    transfer = "<Response><Say>Transferring</Say><Dial>+15558887777</Dial></Response>"
    await in_thread(lambda: client.calls(call.call_sid).update(twiml=transfer))
    await call.wait_ended()
    stop = await conn.wait_frame("stop")  # the stream learns of the redirect by `stop`
    assert stop["streamSid"] == conn.stream_sid
    assert call.said == ["Transferring"]
    assert call.dialed == ["+15558887777"]
    assert call.end_reason == "redirected"


async def test_update_unknown_call_is_20404(fake: FakeTwilioRest) -> None:
    client = client_for(fake)
    with pytest.raises(TwilioRestException) as caught:
        await in_thread(lambda: client.calls("CA" + "0" * 32).update(status="completed"))
    assert caught.value.code == 20404
    assert caught.value.status == 404


async def test_stop_cancels_background_work(sim: TwilioSimulator) -> None:
    fake = FakeTwilioRest(sim)
    await fake.start()
    client = client_for(fake)
    await in_thread(
        lambda: client.calls.create(
            to=CALLEE, from_=OWNED, url=PUBLIC + "/outbound", status_callback=PUBLIC + "/status"
        )
    )
    await fake.wait_for_call(0)
    await fake.stop()
    assert fake._tasks == set()
