"""Three `callbridge serve` processes behind a real nginx, sharing Redis and PostgreSQL on
loopback: one phone line, answered by whichever instance a request reaches."""

from __future__ import annotations

import asyncio
import base64
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callbridge.bot import bot as default_bot
from callbridge.testing.audio import FRAME_BYTES
from callbridge.testing.fake_agent import FakeSession, FakeVoiceAgent
from callbridge.testing.twilio_rest_fake import FakeTwilioRest
from callbridge.testing.twilio_simulator import TwilioSimulator
from callbridge.testing.twilio_simulator.call import SimulatedCall
from callbridge.testing.twilio_simulator.simulator import DEFAULT_ACCOUNT_SID
from tests.conftest import API_TOKEN, AUTH_TOKEN, PUBLIC_URL, free_port
from tests.e2e.test_inbound_call import frame_indices, indexed_frames
from tests.scale.cluster import Instance, Nginx, instance_env, instance_url, spread

# Several processes start and stop in each: more than the default minute on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

GREETING = default_bot.greeting or ""
BUSY = "all our lines are busy"


@dataclass
class Cluster:
    instances: list[Instance]
    nginx: Nginx
    agent: FakeVoiceAgent

    @property
    def url(self) -> str:
        return self.nginx.url

    def simulator(self) -> TwilioSimulator:
        return TwilioSimulator(self.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)

    async def holder(self, call: SimulatedCall) -> Instance:
        """The instance whose stream for `call` is live (once it has said so)."""
        call_id = call_id_of(call)
        waits = [
            asyncio.ensure_future(i.process.wait_for("stream.started", call_id=call_id))
            for i in self.instances
        ]
        await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
        holders = [i for i in self.instances if i.process.seen("stream.started", call_id=call_id)]
        assert len(holders) == 1, [i.name for i in holders]
        return holders[0]

    async def api(self, method: str, path: str, base: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, (base or self.url) + path, headers=headers) as resp,
        ):
            return resp.status, await resp.json()

    async def record(self, call_id: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The call's record, read through nginx, once `done` holds for it (the records are
        committed in batches, a second or so after the fact)."""
        async with asyncio.timeout(20):
            while True:
                status, body = await self.api("GET", f"/api/calls/{call_id}")
                if status == 200 and done(body):
                    return body
                await asyncio.sleep(0.2)  # the database has no event to wait on


def call_id_of(call: SimulatedCall) -> str:
    assert call.stream_url is not None
    return call.stream_url.rsplit("/", 1)[1]


ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def start_cluster(
    tmp_path: Path,
    fake_agent: FakeVoiceAgent,
    redis_server: str,
    redis_prefix: str,
    pg_database_url: str,
    nginx_binary: str,
) -> AsyncIterator[ClusterFactory]:
    started: list[Cluster] = []

    async def start(count: int = 3, **extra: str) -> Cluster:
        instances = []
        for n in range(1, count + 1):
            name = f"cb{n}"
            port = free_port()
            env = instance_env(
                name,
                port,
                tmp_path,
                agent_url=fake_agent.url,
                redis_url=redis_server,
                redis_prefix=redis_prefix,
                database_url=pg_database_url,
                **extra,
            )
            instances.append(Instance(name, port, env, tmp_path))
        nginx = Nginx(nginx_binary, tmp_path, {i.name: i.port for i in instances})
        cluster = Cluster(instances, nginx, fake_agent)
        started.append(cluster)
        await asyncio.gather(*(i.start() for i in instances))
        await nginx.start()
        return cluster

    yield start
    for cluster in started:
        await cluster.nginx.stop()
        for instance in cluster.instances:
            await instance.process.stop()


async def _placed(sim: TwilioSimulator) -> SimulatedCall:
    """A call whose stream has started: nginx's round robin then sends the next call's
    webhook and stream on, so that three calls in a row reach all three instances."""
    call = await sim.place_inbound_call()
    await call.wait_started(timeout=10)
    return call


async def _heard_greeting(agent: FakeVoiceAgent, call: SimulatedCall) -> None:
    expected = agent.reply_audio_for(GREETING)
    await call.wait_heard(len(expected), timeout=15)
    await call.wait_playback_idle(timeout=15)
    assert bytes(call.heard) == expected


async def test_three_instances_answer_one_line(start_cluster: ClusterFactory) -> None:
    cluster = await start_cluster(MAX_CALLS_GLOBAL="3")
    async with cluster.simulator() as sim:
        calls = [await _placed(sim) for _ in range(3)]
        for call in calls:
            await cluster.holder(call)
            assert call.webhook_status == 200 and "<Connect>" in call.twiml
            await _heard_greeting(cluster.agent, call)
        # Spread over the instances, and each call's stream admitted once, wherever it went.
        assert sorted(spread(cluster.instances).values()) == [1, 1, 1]
        assert len(cluster.agent.sessions) == 3
        crossed = [
            call
            for call in calls
            if not (await cluster.holder(call)).process.seen(
                "call.announced", call_id=call_id_of(call)
            )
        ]
        assert crossed, "no call had its webhook and its stream on different instances"

        # The global cap holds, whichever instance the fourth webhook reaches.
        fourth = await sim.place_inbound_call()
        assert BUSY in fourth.twiml

        # A hang-up sent through an instance that does not hold the call ends it.
        target = calls[0]
        holder = await cluster.holder(target)
        other = next(i for i in cluster.instances if i is not holder)
        status, body = await cluster.api(
            "POST", f"/api/calls/{call_id_of(target)}/hangup", f"http://127.0.0.1:{other.port}"
        )
        assert (status, body["instance_id"]) == (202, holder.name)
        await target.wait_ended(timeout=10)
        await holder.process.wait_for("shared_state.call_released", call_id=call_id_of(target))
        fifth = await sim.place_inbound_call()
        await _heard_greeting(cluster.agent, fifth)

        # The records and /metrics from any instance.
        record = await cluster.record(call_id_of(target), lambda r: r["ended_at"] is not None)
        assert record["ended_by"] == "operator"
        for instance in cluster.instances:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"http://127.0.0.1:{instance.port}/metrics",
                    headers={"Authorization": f"Bearer {API_TOKEN}"},
                ) as resp,
            ):
                text = await resp.text()
            assert f'callbridge_instance{{instance_id="{instance.name}"' in text


async def test_a_killed_instance_s_calls_are_closed_and_the_others_go_on(
    start_cluster: ClusterFactory,
) -> None:
    cluster = await start_cluster(CALLBRIDGE_INSTANCE_TIMEOUT_SECONDS="1.5")
    async with cluster.simulator() as sim:
        calls = [await _placed(sim) for _ in range(3)]
        for call in calls:
            await cluster.holder(call)
        assert sorted(spread(cluster.instances).values()) == [1, 1, 1]
        for call in calls:
            await _heard_greeting(cluster.agent, call)
        doomed_call = calls[1]
        doomed = await cluster.holder(doomed_call)
        doomed.process.signal(signal.SIGKILL)
        survivors = [i for i in cluster.instances if i is not doomed]
        # A survivor notices within the heartbeat timeout and closes the call's record.
        lost = await asyncio.wait_for(_first_lost(survivors, call_id_of(doomed_call)), 15)
        assert lost["lost_instance"] == doomed.name
        record = await cluster.record(call_id_of(doomed_call), lambda r: r["ended_at"] is not None)
        assert record["ended_by"] == "instance_lost"
        # The calls on the other instances go on, every frame of the caller's audio in order.
        for marker, call in enumerate((c for c in calls if c is not doomed_call), start=1):
            audio = indexed_frames(50, marker)
            call.speak(audio)
            last = base64.b64encode(audio[-FRAME_BYTES:]).decode()
            session = await _session_receiving(cluster.agent, last)
            assert frame_indices(bytes(session.input_audio), marker) == list(range(50))
            assert not call.ended.is_set()


async def _first_lost(instances: list[Instance], call_id: str) -> dict[str, Any]:
    while True:
        for instance in instances:
            found = instance.process.seen("call.instance_lost", call_id=call_id)
            if found:
                return found[0]
        waits = [asyncio.ensure_future(i.process.wait_for("call.instance_lost")) for i in instances]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()


async def _session_receiving(agent: FakeVoiceAgent, audio: str) -> FakeSession:
    """The agent session that receives this caller audio (sessions carry no call id)."""
    waits = {
        asyncio.ensure_future(s.wait_for(lambda m: m.get("audio") == audio, timeout=10)): s
        for s in agent.sessions
    }
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for waiting in pending:
        waiting.cancel()
    first = done.pop()
    first.result()  # a timeout fails the test here
    return waits[first]


async def test_a_rolling_restart_under_load_drops_no_call(start_cluster: ClusterFactory) -> None:
    cluster = await start_cluster(DRAIN_SECONDS="20")
    placed: list[SimulatedCall] = []
    drained: list[dict[str, Any]] = []
    stop = asyncio.Event()

    async def one_call(sim: TwilioSimulator) -> None:
        call = await sim.place_inbound_call()
        placed.append(call)
        await _heard_greeting(cluster.agent, call)
        await call.hangup()

    async def steady_load(sim: TwilioSimulator) -> None:
        async with asyncio.TaskGroup() as tg:
            while not stop.is_set():
                tg.create_task(one_call(sim))
                await asyncio.sleep(0.4)  # the load's pace, not a synchronisation

    async with cluster.simulator() as sim:
        load = asyncio.create_task(steady_load(sim))
        try:
            for instance in cluster.instances:
                process = instance.process
                await process.wait_until(lambda p=process: p.live_calls() > 0)  # one to drain
                instance.process.signal(signal.SIGTERM)
                drained.append(await instance.process.wait_for("server.draining"))
                await instance.process.wait_for("server.stopped_listening")
                await instance.process.wait_for("server.stopped", timeout=40)
                await instance.start()
            stop.set()
            await asyncio.wait_for(load, 60)
        finally:
            stop.set()
            load.cancel()
    assert len(placed) >= 10
    for call in placed:
        assert call.webhook_status == 200 and "<Connect>" in call.twiml, call.twiml
        assert call.errors == [], call.errors
        assert call.end_reason == "caller-hangup", call.end_reason
    # Each instance had calls to drain when it was told to stop.
    assert len(drained) == 3
    assert all(d["live_calls"] >= 1 for d in drained), [d["live_calls"] for d in drained]


VERBS_BOT = """
from callbridge.bot import Bot
from callbridge.verbs import Transfer, TransferTarget

bot = Bot(
    system_prompt="You are a test bot.",
    greeting="Hi.",
    transfer=Transfer(
        targets=(TransferTarget("a person", "+15550009999"),), caller_id="+15550001111"
    ),
    keypad_out=True,
)
"""


async def test_a_caller_coming_back_reaches_the_instance_holding_the_call(
    start_cluster: ClusterFactory, tmp_path: Path
) -> None:
    rest_port = free_port()  # the instances must know the REST API's address first
    bot_file = tmp_path / "verbs_bot.py"
    bot_file.write_text(VERBS_BOT)
    cluster = await start_cluster(
        CALLBRIDGE_BOT=f"{bot_file}:bot",
        TWILIO_ACCOUNT_SID=DEFAULT_ACCOUNT_SID,
        TWILIO_API_BASE_URL=f"http://127.0.0.1:{rest_port}",
    )
    agent = cluster.agent
    async with cluster.simulator() as sim:
        rest = FakeTwilioRest(sim, auth_token=AUTH_TOKEN, owned_numbers=["+15550001111"])
        await rest.start(port=rest_port)
        try:
            # One call after another: round robin puts one on each instance, and each
            # comes back twice (a transfer nobody answers, then keypad tones) through
            # nginx, which would send a URL on PUBLIC_URL to the next instance in turn.
            for n in range(3):
                call = await sim.place_inbound_call()
                session = await agent.wait_for_session(n, timeout=10)
                holder = await cluster.holder(call)
                call_id = call_id_of(call)
                own = instance_url(holder.name)
                await call.wait_heard(len(agent.reply_audio_for("Hi.")), timeout=15)

                call.dial_outcome = "no-answer"
                await session.call_tool("transfer_call", {"target": "a person"}, after_tool="Sure.")
                dial = await call.wait_dialed(timeout=10)
                assert dial["action"] == f"{own}/calls/{call_id}/dial-ended"
                await call.wait_streams(2, timeout=10)
                back = await holder.process.wait_for("stream.reattached", call_id=call_id)
                assert (back["why"], back["session_id"]) == ("transfer-failed", session.session_id)
                assert holder.process.seen("transfer.dial_ended", call_id=call_id)
                own_streams = "wss" + own.removeprefix("https") + f"/media-stream/{call_id}/"
                assert call.stream_url is not None and call.stream_url.startswith(own_streams)

                await session.call_tool("send_digits", {"digits": "1w2#"}, after_tool="Sure.")
                await call.wait_streams(3, timeout=10)
                back = await holder.process.wait_for(
                    "stream.reattached", call_id=call_id, why="digits"
                )
                assert back["session_id"] == session.session_id
                assert call.digits_played == ["1w2#"]

                # A blip: Twilio follows the <Redirect> after </Connect> to PUBLIC_URL, and
                # nginx sends it to any instance; an instance that does not hold the call
                # sends Twilio on to the holder's own URL.
                other = next(i for i in cluster.instances if i is not holder)
                status, body = await sim.request(
                    f"{instance_url(other.name)}/calls/{call_id}/stream-ended/{n}abc",
                    "POST",
                    {"CallSid": call.call_sid, "CallStatus": "in-progress"},
                )
                assert status == 200 and "<Redirect" in body, body
                assert f"{own}/calls/{call_id}/stream-ended/" in body, body
                call.break_stream()
                await call.wait_streams(4, timeout=10)
                back = await holder.process.wait_for(
                    "stream.reattached", call_id=call_id, why="stream-lost"
                )
                assert back["session_id"] == session.session_id
                # Three requests a call went round robin (webhook, stream, <Redirect>): one
                # more, so that the next call starts on the next instance.
                async with aiohttp.ClientSession() as http, http.get(f"{cluster.url}/healthz"):
                    pass

                # The caller hears the same agent session again.
                heard = len(call.heard)
                await session.say("Back.")
                await call.wait_heard(heard + len(agent.reply_audio_for("Back.")), timeout=10)
                await call.hangup()
                await session.wait_for("session.end", timeout=10)
                assert [e for e in call.errors if not e.startswith("31903")] == []
                assert call.end_reason == "caller-hangup"
        finally:
            await rest.stop()
    assert rest.errors == []
    # One call on each instance, one agent session each, nothing refused anywhere.
    assert sorted(spread(cluster.instances).values()) == [1, 1, 1]
    assert sorted(spread(cluster.instances, "stream.reattached").values()) == [3, 3, 3]
    assert len(agent.sessions) == 3
    for instance in cluster.instances:
        assert instance.process.seen("stream.refused") == []
        assert instance.process.seen("callback.forwarded") == []
        # Addressable: no warning that callers may come back elsewhere.
        assert instance.process.seen("config.no_instance_url") == []
