"""GET /metrics on the real server: a call with a turn and a tool call, scraped while it is
live and after it ended; and the endpoint's access rules."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from callbridge.bot import Bot, generate_random_number
from callbridge.server.state import APP_STATE
from callbridge.testing.audio import silence, tone
from callbridge.testing.fake_agent import FakeVoiceAgent, ScriptedTurn
from callbridge.testing.twilio_simulator import TwilioSimulator
from tests.conftest import API_TOKEN, AUTH_TOKEN, PUBLIC_URL, RunningServer, ServerFactory

BOT = Bot(system_prompt="x", greeting="Hello, metrics.", tools=(generate_random_number,))


async def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/metrics", headers=headers) as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_a_call_its_turns_and_its_tool(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    server = await start_server(bot=BOT, assemblyai_agent_url=fake_agent.url)
    fake_agent.turns.append(
        ScriptedTurn(
            tool_name="generate_random_number",
            tool_arguments={"minimum": 7, "maximum": 7},
            after_tool="It is {result}.",
        )
    )
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        call = await sim.place_inbound_call()
        session = await fake_agent.wait_for_session()
        await call.wait_heard(len(fake_agent.reply_audio_for("Hello, metrics.")))
        live = await scrape(server)
        assert live[("callbridge_calls_live", (("direction", "inbound"),))] == 1
        assert live[("callbridge_calls_started_total", (("direction", "inbound"),))] == 1
        call.speak(tone(300, 300) + silence(500))
        await session.wait_sent(
            lambda e: e["type"] == "transcript.agent" and e.get("text") == "It is 7.", timeout=10
        )
        [runner] = server.app[APP_STATE].registry.live.values()
        await call.hangup()
        await asyncio.wait_for(runner.done.wait(), 10)
    after = await scrape(server)
    assert after[("callbridge_calls_live", (("direction", "inbound"),))] == 0
    ended = (("ended_by", "caller"), ("reason", "stream-stopped"))
    assert after[("callbridge_calls_ended_total", ended)] == 1
    assert after[("callbridge_audio_frames_total", (("direction", "to-agent"),))] > 0
    assert after[("callbridge_audio_frames_total", (("direction", "to-twilio"),))] > 0
    tool = (("outcome", "ok"), ("tool", "generate_random_number"))
    assert after[("callbridge_tool_calls_total", tool)] == 1
    assert after[("callbridge_turn_latency_seconds_count", (("stage", "sent"),))] >= 1
    assert after[("callbridge_records_database_up", ())] == 1


async def test_metrics_need_the_api_token_and_are_off_without_one(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    server = await start_server(assemblyai_agent_url=fake_agent.url)
    closed = await start_server(assemblyai_agent_url=fake_agent.url, callbridge_api_token=None)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/metrics") as response:
            assert response.status == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        async with http.get(f"{server.url}/metrics", headers=wrong) as response:
            assert response.status == 401
        right = {"Authorization": f"Bearer {API_TOKEN}"}
        async with http.get(f"{closed.url}/metrics", headers=right) as response:
            assert response.status == 404
            assert (await response.json())["error"] == "api_disabled"
