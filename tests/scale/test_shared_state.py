"""Two instances in this process sharing live state through a real Redis: a call's webhook
and its stream on different instances, the guards and the cap across them, commands to the
instance holding a call, and what happens while Redis is away."""

from __future__ import annotations

import time

import aiohttp
import pytest

from callbridge import Bot, CallConfig, CallSetup, SessionOptions, tool
from callbridge.server.state import APP_STATE
from callbridge.testing.fake_agent import FakeSession, FakeVoiceAgent
from callbridge.testing.twilio_simulator import SimulatedCall, TwilioSimulator
from callbridge.twilio import call_parameters
from tests.conftest import (
    API_TOKEN,
    AUTH_TOKEN,
    BOTH_STREAM_SERVERS,
    PUBLIC_URL,
    RunningServer,
    ServerFactory,
)
from tests.helpers.log_events import caught
from tests.helpers.raw_twilio import (
    CALL_SID,
    announce,
    connect_stream,
    hang_up,
    sign,
    start_frame,
    twilio_session,
)
from tests.helpers.records import fetch_record
from tests.records.conftest import TcpProxy
from tests.scale.conftest import REDIS_HOST, REDIS_PORT, redis_keys

BUSY = "all our lines are busy"


async def _pair(
    start_server: ServerFactory,
    fake_agent: FakeVoiceAgent,
    redis_url: str,
    prefix: str,
    **overrides: object,
) -> tuple[RunningServer, RunningServer]:
    servers = []
    for name in ("a", "b"):
        servers.append(
            await start_server(
                assemblyai_agent_url=fake_agent.url,
                redis_url=redis_url,
                callbridge_redis_prefix=prefix,
                callbridge_instance_id=name,
                **overrides,
            )
        )
    return servers[0], servers[1]


async def test_a_stream_on_another_instance_is_admitted_once(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, redis_server: str, redis_prefix: str
) -> None:
    a, b = await _pair(start_server, fake_agent, redis_server, redis_prefix)
    async with twilio_session() as http:
        call = await announce(http, a)
        first = await connect_stream(http, b, call)
        await first.send_str(start_frame(call.token))
        session = await fake_agent.wait_for_session()
        await session.wait_sent("session.ready")
        call_id = call.stream_path.rsplit("/", 1)[1]
        assert redis_keys(redis_server, f"{redis_prefix}:live:*") == [
            f"{redis_prefix}:live:{call_id}"
        ]
        # The same stream again, on the instance that answered the webhook: refused.
        with caught() as events:
            again = await connect_stream(http, a, call)
            await again.send_str(start_frame(call.token))
            closed = await again.receive()
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert again.close_code == 1008
        reasons = [f["reason"] for f in events.fields_of("stream.refused")]
        assert reasons == ["a stream for this call is already live"]
        assert len(fake_agent.sessions) == 1
        await first.close()


@tool
async def order_status(order: str) -> str:
    """Where an order is."""
    return "shipped"


@tool
async def refund(order: str) -> str:
    """Refund an order."""
    return "refunded"


async def _greet_the_caller(call: CallSetup) -> CallConfig:
    return CallConfig(
        greeting=f"Hi {call.parameters['name']}, calling from {call.from_number}.",
        tools=[order_status],  # of the bot's two
        options=SessionOptions(keyterms=["Brompton", call.parameters["order"]]),
    )


SALES = Bot(
    system_prompt="Sales.",
    greeting="Sales, hello.",
    tools=(order_status, refund),
    setup=_greet_the_caller,
)


@BOTH_STREAM_SERVERS
async def test_a_calls_set_up_reaches_the_instance_its_stream_lands_on(
    start_server: ServerFactory,
    fake_agent: FakeVoiceAgent,
    redis_server: str,
    redis_prefix: str,
    pg_database_url: str,
) -> None:
    a, b = await _pair(
        start_server,
        fake_agent,
        redis_server,
        redis_prefix,
        bots={"sales": SALES},
        callbridge_bots="sales=unused:sales",  # the bots are given directly here
        database_url=pg_database_url,
    )
    caller, callee = "+15550004444", "+15552223333"
    parameters = {"name": "Alice", "order": "A-1234"}
    query = call_parameters.encode(
        call_id="placed-on-a-1",
        to=callee,
        key=call_parameters.parameters_key(AUTH_TOKEN),
        now=time.time(),
        parameters=parameters,
        bot="sales",
    )
    async with TwilioSimulator(
        a.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL, stream_server_url=b.url
    ) as sim:
        call = await sim.place_inbound_call(
            from_=caller, to=callee, webhook_path=f"/outbound-twiml?{query}"
        )
        session = await fake_agent.wait_for_session()
        await session.wait_sent("session.ready")
        # b planned the session from what a's set-up decided.
        assert "placed-on-a-1" not in a.app[APP_STATE].registry.live
        first = session.received[0]["session"]
        assert first["greeting"] == f"Hi Alice, calling from {caller}."
        assert first["system_prompt"] == "Sales."
        assert [t["name"] for t in first["tools"]] == ["order_status"]
        assert first["input"]["keyterms"] == ["Brompton", "A-1234"]
        # The call its tools see on b knows its bot, numbers and parameters.
        held = b.app[APP_STATE].registry.live["placed-on-a-1"].call
        assert held is not None
        assert (held.bot_name, held.from_number, held.to_number) == ("sales", caller, callee)
        assert dict(held.parameters) == parameters
        [key] = redis_keys(redis_server, f"{redis_prefix}:setup:*")
        assert key == f"{redis_prefix}:setup:placed-on-a-1"
        await call.hangup()
        await call.wait_ended(timeout=10)
    await a.app[APP_STATE].records.flush()  # a recorded the set-up, b the call
    record = await fetch_record(b, "placed-on-a-1")
    assert (record["bot"], record["parameters"]) == ("sales", parameters)
    assert record["setup"]["outcome"] == "configured"


@tool
async def not_on_the_bot(order: str) -> str:
    """A tool the set-up made up, not one of the bot's."""
    return "?"


async def _a_tool_of_its_own(call: CallSetup) -> CallConfig:
    return CallConfig(greeting="Made up.", tools=[order_status, not_on_the_bot])


async def test_a_tool_the_bot_does_not_have_gives_the_bots_tools_on_another_instance(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, redis_server: str, redis_prefix: str
) -> None:
    bot = Bot(system_prompt="Sales.", tools=(order_status, refund), setup=_a_tool_of_its_own)
    a, b = await _pair(start_server, fake_agent, redis_server, redis_prefix, bot=bot)
    with caught() as events:
        async with TwilioSimulator(
            a.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL, stream_server_url=b.url
        ) as sim:
            call = await sim.place_inbound_call()
            session = await fake_agent.wait_for_session()
            first = session.received[0]["session"]
            await call.hangup()
    assert first["greeting"] == "Made up."  # the rest of the set-up still holds
    assert [t["name"] for t in first["tools"]] == ["order_status", "refund"]
    [logged] = events.fields_of("setup.tools_not_shared")
    assert logged["tools"] == ["not_on_the_bot"]


async def test_a_replayed_webhook_is_refused_by_the_other_instance(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, redis_server: str, redis_prefix: str
) -> None:
    a, b = await _pair(start_server, fake_agent, redis_server, redis_prefix)
    params = {"CallSid": CALL_SID, "From": "+15550001111", "To": "+15552223333"}
    headers = {"X-Twilio-Signature": sign(f"{PUBLIC_URL}/twiml", params)}
    async with twilio_session() as http:
        async with http.post(f"{a.url}/twiml", data=params, headers=headers) as resp:
            assert resp.status == 200
        with caught() as events:
            async with http.post(f"{b.url}/twiml", data=params, headers=headers) as resp:
                assert resp.status == 403
    assert [f["reason"] for f in events.fields_of("webhook.refused")] == ["replayed request"]


async def test_the_global_cap_holds_across_instances(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, redis_server: str, redis_prefix: str
) -> None:
    a, b = await _pair(
        start_server, fake_agent, redis_server, redis_prefix, max_calls=50, max_calls_global=2
    )
    async with twilio_session() as http:
        first = await announce(http, a, call_sid="CA" + "1" * 32)
        await announce(http, b, call_sid="CA" + "2" * 32)
        with caught() as events:
            params = {"CallSid": "CA" + "3" * 32, "From": "+15550001111", "To": "+15552223333"}
            headers = {"X-Twilio-Signature": sign(f"{PUBLIC_URL}/twiml", params)}
            async with http.post(f"{a.url}/twiml", data=params, headers=headers) as resp:
                assert BUSY in await resp.text()
        assert events.fields_of("call.refused_busy")[0]["why"] == "global call limit reached"
        # The first call's stream comes and goes (on the other instance): its slot is free.
        with caught() as events:
            ws = await connect_stream(http, b, first)
            await ws.send_str(start_frame(first.token, call_sid="CA" + "1" * 32))
            await fake_agent.wait_for_session()
            await hang_up(ws)
            await events.wait_for("shared_state.call_released")
        third = await announce(http, a, call_sid="CA" + "4" * 32)
        assert "<Connect>" in third.twiml


async def _call_held_by(
    server: RunningServer, sim: TwilioSimulator, fake_agent: FakeVoiceAgent
) -> tuple[SimulatedCall, FakeSession, str]:
    """An inbound call whose stream `sim` sends to `server`, with its agent session ready."""
    call = await sim.place_inbound_call()
    session = await fake_agent.wait_for_session()
    await session.wait_sent("session.ready")
    assert call.stream_url is not None
    call_id = call.stream_url.rsplit("/", 1)[1]
    assert call_id in server.app[APP_STATE].registry.live
    return call, session, call_id


async def test_twilios_callbacks_reach_the_instance_that_holds_the_call(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, redis_server: str, redis_prefix: str
) -> None:
    # The answering-machine verdict reaches a; the call's stream is on b.
    a, b = await _pair(start_server, fake_agent, redis_server, redis_prefix)
    async with TwilioSimulator(
        a.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL, stream_server_url=b.url
    ) as sim:
        call, session, call_id = await _call_held_by(b, sim, fake_agent)
        with caught() as events:
            form = {"CallSid": call.call_sid, "AnsweredBy": "fax"}
            status, _ = await sim.request(PUBLIC_URL + "/amd-status", "POST", form)
            assert status == 204
            await events.wait_for("callback.forwarded")
        [forwarded] = events.fields_of("callback.forwarded")
        assert (forwarded["call_id"], forwarded["instance_id"]) == (call_id, "b")
        await call.wait_ended(timeout=10)  # b hung up on the fax
        await session.wait_for("session.end")
    assert call.end_reason == "hangup-verb"  # a answered the <Redirect> after </Connect>


async def test_a_hang_up_sent_through_one_instance_ends_a_call_held_by_another(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, redis_server: str, redis_prefix: str
) -> None:
    a, b = await _pair(start_server, fake_agent, redis_server, redis_prefix)
    async with TwilioSimulator(
        a.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL, stream_server_url=b.url
    ) as sim:
        call, session, call_id = await _call_held_by(b, sim, fake_agent)
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        async with aiohttp.ClientSession() as http:
            with caught() as events:
                async with http.post(f"{a.url}/api/calls/{call_id}/hangup", headers=auth) as resp:
                    assert resp.status == 202
                    assert (await resp.json())["instance_id"] == "b"
                await call.wait_ended(timeout=10)
                await events.wait_for("shared_state.call_released")  # b is through with it
            async with http.post(f"{a.url}/api/calls/{call_id}/hangup", headers=auth) as resp:
                # Ended: 409 once its record is written, 404 (no live call) before.
                answer = (resp.status, (await resp.json())["error"])
                assert answer in {(404, "not_found"), (409, "call_ended")}
        await session.wait_for("session.end")


@pytest.mark.parametrize("when_down", ["local", "refuse"])
async def test_with_redis_away_calls_go_on_by_the_operators_choice(
    start_server: ServerFactory,
    fake_agent: FakeVoiceAgent,
    redis_server: str,
    redis_prefix: str,
    when_down: str,
) -> None:
    proxy = TcpProxy(REDIS_HOST, REDIS_PORT)
    await proxy.start()
    try:
        server = await start_server(
            assemblyai_agent_url=fake_agent.url,
            redis_url=f"redis://127.0.0.1:{proxy.port}/0",
            callbridge_redis_prefix=redis_prefix,
            callbridge_redis_down=when_down,
        )
        async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
            live = await sim.place_inbound_call()
            session = await fake_agent.wait_for_session()
            await session.wait_sent("session.ready")
            with caught() as events:
                await proxy.stop()
                second = await sim.place_inbound_call()
                await events.wait_for("shared_state.unavailable")
                if when_down == "local":
                    await second.wait_started()
                    await fake_agent.wait_for_session(1)
                else:
                    assert "<Connect>" not in second.twiml
                    async with (
                        aiohttp.ClientSession() as http,
                        http.get(f"{server.url}/readyz") as resp,
                    ):
                        assert resp.status == 503
            assert not live.ended.is_set()  # the call in progress went on
            metrics = await _metrics(server)
            assert _value(metrics, "callbridge_shared_state_up") == 0
            assert _value(metrics, "callbridge_shared_state_degraded_total") >= 1
            with caught() as events:
                await proxy.start()
                third = await sim.place_inbound_call()
                await events.wait_for("shared_state.restored")
            await third.wait_started()
            assert _value(await _metrics(server), "callbridge_shared_state_up") == 1
    finally:
        await proxy.stop()


async def _metrics(server: RunningServer) -> str:
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with http.get(f"{server.url}/metrics", headers=headers) as resp:
            return await resp.text()


def _value(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_the_calls_of_an_instance_whose_heartbeat_stopped_are_closed(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, redis_server: str, redis_prefix: str
) -> None:
    import redis.asyncio as aioredis

    # What an instance that died mid-call leaves in Redis: its calls, and no heartbeat.
    client = aioredis.Redis.from_url(redis_server, decode_responses=True)
    try:
        await client.sadd(f"{redis_prefix}:instances", "ghost")
        await client.sadd(f"{redis_prefix}:calls:ghost", "call-of-ghost")
        await client.set(f"{redis_prefix}:live:call-of-ghost", "ghost")
        with caught() as events:
            server = await start_server(
                assemblyai_agent_url=fake_agent.url,
                redis_url=redis_server,
                callbridge_redis_prefix=redis_prefix,
                callbridge_instance_id="survivor",
                callbridge_instance_timeout_seconds=0.6,
            )
            await events.wait_for("call.instance_lost")
        lost = events.fields_of("call.instance_lost")
        assert lost == [{"call_id": "call-of-ghost", "lost_instance": "ghost"}]
        assert await client.smembers(f"{redis_prefix}:instances") == {"survivor"}
        assert await client.get(f"{redis_prefix}:live:call-of-ghost") is None
        await server.app[APP_STATE].records.flush()
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{server.url}/api/calls/call-of-ghost", headers=auth) as resp,
        ):
            record = await resp.json()
        assert (record["ended_by"], record["end_reason"]) == ("instance_lost", "instance lost")
    finally:
        await client.aclose()


async def test_two_processes_with_one_instance_id_are_pointed_out(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, redis_server: str, redis_prefix: str
) -> None:
    with caught() as events:
        for _ in range(2):
            await start_server(
                assemblyai_agent_url=fake_agent.url,
                redis_url=redis_server,
                callbridge_redis_prefix=redis_prefix,
                callbridge_instance_id="same",
                callbridge_instance_timeout_seconds=0.6,
            )
        await events.wait_for("shared_state.instance_id_in_use")
    assert "CALLBRIDGE_INSTANCE_ID" in str(events.fields_of("shared_state.instance_id_in_use"))


async def test_each_instance_publishes_the_url_that_reaches_it_alone(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, redis_server: str, redis_prefix: str
) -> None:
    own_a = PUBLIC_URL + "/i/a"
    a = await start_server(
        assemblyai_agent_url=fake_agent.url,
        redis_url=redis_server,
        callbridge_redis_prefix=redis_prefix,
        callbridge_instance_id="a",
        callbridge_instance_url=own_a,
        callbridge_instance_timeout_seconds=5,
    )
    b = await start_server(  # no instance URL: not addressable
        assemblyai_agent_url=fake_agent.url,
        redis_url=redis_server,
        callbridge_redis_prefix=redis_prefix,
        callbridge_instance_id="b",
    )
    shared_a, shared_b = a.app[APP_STATE].shared, b.app[APP_STATE].shared
    assert await shared_b.instance_url("a") == own_a
    assert await shared_a.instance_url("b") is None
    assert await shared_b.instance_url("nobody") is None
    # Its own is known without asking Redis.
    before = shared_a.operations
    assert await shared_a.instance_url("a") == own_a
    assert shared_a.operations == before
    # Kept beside the heartbeat, expiring with it.
    assert redis_keys(redis_server, f"{redis_prefix}:url:*") == [f"{redis_prefix}:url:a"]
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        ttl = client.pttl(f"{redis_prefix}:url:a")
        beat = client.pttl(f"{redis_prefix}:instance:a")
    finally:
        client.close()
    assert 0 < ttl <= 5000 and abs(ttl - beat) < 1000
