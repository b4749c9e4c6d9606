"""Bots that know their call, end to end: per-call set-up at the webhook, several numbers
and bots, refusing and forwarding, tools given the call, and changes to a live session
from a tool and from an operator. The real server between the Twilio simulator and the
fake Voice Agent API, over loopback sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from callbridge import (
    Bot,
    Call,
    CallConfig,
    CallSetup,
    Forward,
    Refuse,
    SessionOptions,
    SessionUpdateError,
    ToolError,
    TurnDetection,
    tool,
)
from callbridge.app import build_app
from callbridge.bot import generate_random_number
from callbridge.server import webhooks
from callbridge.server.lifecycle import app_runner
from callbridge.server.shared_port import main_port_site
from callbridge.server.state import APP_STATE
from callbridge.testing.audio import silence, tone
from callbridge.testing.fake_agent import FakeVoiceAgent, ScriptedTurn
from callbridge.testing.twilio_simulator import TwilioSimulator
from tests.conftest import (
    API_TOKEN,
    AUTH_TOKEN,
    PUBLIC_URL,
    RunningServer,
    ServerFactory,
    make_settings,
)
from tests.helpers.records import fetch_record
from tests.records.test_api import SPEC_URI, spec

CALLER = "+15550004444"


async def greet_by_number(call: CallSetup) -> CallConfig:
    return CallConfig(
        greeting=f"Hello caller from {call.from_number}.",
        system_prompt=f"The caller's number is {call.from_number}.",
    )


SETUP_BOT = Bot(
    system_prompt="Default prompt.", greeting="Default greeting.", setup=greet_by_number
)


@pytest.fixture
async def sim_for() -> AsyncIterator[Any]:
    sims: list[TwilioSimulator] = []

    def make(server: RunningServer) -> TwilioSimulator:
        sim = TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.close()


async def wait_closed(server: RunningServer, call_id: str) -> None:
    """Until the call's runner has finished (its last entries are made)."""
    state = server.app[APP_STATE]
    runner = state.registry.live.get(call_id)
    if runner is not None:
        await asyncio.wait_for(runner.done.wait(), 10)


def only_call_id(server: RunningServer) -> str:
    [call_id] = server.app[APP_STATE].registry.live
    return call_id


async def test_a_greeting_built_from_the_callers_number_reaches_session_update(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, sim_for: Any
) -> None:
    server = await start_server(bot=SETUP_BOT, assemblyai_agent_url=fake_agent.url)
    call = await sim_for(server).place_inbound_call(from_=CALLER)
    session = await fake_agent.wait_for_session()
    first = session.received[0]["session"]
    assert first["greeting"] == f"Hello caller from {CALLER}."
    assert first["system_prompt"] == f"The caller's number is {CALLER}."
    await call.wait_heard(len(fake_agent.reply_audio_for(first["greeting"])))
    call_id = only_call_id(server)
    await call.hangup()
    await wait_closed(server, call_id)
    record = await fetch_record(server, call.call_sid)
    assert record["bot"] == "default"
    assert record["setup"] == {"outcome": "configured", "detail": None, "error": None}
    # The configuration the agent confirmed, as it echoed it.
    assert record["session_configs"][0]["config"]["greeting"] == first["greeting"]


async def _raises(call: CallSetup) -> CallConfig:
    raise RuntimeError("the CRM is down")


async def _never_returns(call: CallSetup) -> CallConfig:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def _raises_sync(call: CallSetup) -> CallConfig:
    raise LookupError("no such customer")


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        (_raises, "RuntimeError: the CRM is down"),
        (_raises_sync, "LookupError: no such customer"),
        (_never_returns, "the set-up took longer than 0.3 s"),
    ],
    ids=["raises", "raises-sync", "times-out"],
)
async def test_a_failed_set_up_gives_the_bots_defaults_and_is_recorded(
    start_server: ServerFactory,
    fake_agent: FakeVoiceAgent,
    sim_for: Any,
    setup: Any,
    error: str,
) -> None:
    bot = Bot(system_prompt="Default prompt.", greeting="Default greeting.", setup=setup)
    server = await start_server(
        bot=bot, assemblyai_agent_url=fake_agent.url, callbridge_setup_timeout_seconds=0.3
    )
    call = await sim_for(server).place_inbound_call()
    assert call.webhook_status == 200
    session = await fake_agent.wait_for_session()
    first = session.received[0]["session"]
    assert (first["greeting"], first["system_prompt"]) == ("Default greeting.", "Default prompt.")
    await call.wait_heard(len(fake_agent.reply_audio_for("Default greeting.")))
    call_id = only_call_id(server)
    await call.hangup()
    await wait_closed(server, call_id)
    record = await fetch_record(server, call.call_sid)
    assert record["setup"] == {"outcome": "failed", "detail": None, "error": error}
    assert [(e["source"], e["code"], e["message"]) for e in record["errors"]] == [
        ("setup", "setup_failed", error)
    ]


@pytest.mark.parametrize(
    ("decision", "twiml", "said"),
    [
        (Refuse(), '<Reject reason="busy" />', []),
        (Refuse(reason="rejected"), '<Reject reason="rejected" />', []),
        (
            Refuse(say="We are closed today."),
            "<Say>We are closed today.</Say><Hangup />",
            ["We are closed today."],
        ),
    ],
    ids=["busy", "rejected", "say"],
)
async def test_a_refused_call_gets_its_twiml_and_no_agent_session(
    start_server: ServerFactory,
    fake_agent: FakeVoiceAgent,
    sim_for: Any,
    decision: Refuse,
    twiml: str,
    said: list[str],
) -> None:
    async def refuse(call: CallSetup) -> Refuse:
        return decision

    bot = Bot(system_prompt="x", setup=refuse)
    server = await start_server(bot=bot, assemblyai_agent_url=fake_agent.url)
    call = await sim_for(server).place_inbound_call(from_=CALLER)
    assert twiml in call.twiml and "<Stream" not in call.twiml
    await call.wait_ended()
    assert call.end_reason == "hangup-verb"
    assert call.said == said
    assert fake_agent.connections == 0
    assert server.app[APP_STATE].registry.pending_count() == 0  # no stream expected
    record = await fetch_record(server, call.call_sid)
    assert record["setup"]["outcome"] == "refused"
    assert record["setup"]["detail"] == decision.reason
    assert (record["from_number"], record["agent_sessions"]) == (CALLER, [])


async def test_a_forwarded_call_is_dialled_through_and_opens_no_agent_session(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, sim_for: Any
) -> None:
    async def forward(call: CallSetup) -> Forward:
        return Forward("+15559990000", caller_id=call.to_number, timeout_seconds=20)

    bot = Bot(system_prompt="x", setup=forward, forward_to=("+15559990000",))
    server = await start_server(bot=bot, assemblyai_agent_url=fake_agent.url)
    call = await sim_for(server).place_inbound_call()
    assert "<Dial" in call.twiml and "+15559990000</Dial>" in call.twiml
    assert 'timeout="20"' in call.twiml
    await call.wait_ended()
    assert call.dialed == ["+15559990000"]
    assert fake_agent.connections == 0
    record = await fetch_record(server, call.call_sid)
    assert record["setup"] == {"outcome": "forwarded", "detail": "+15559990000", "error": None}


async def test_a_forward_to_a_number_off_the_list_reaches_the_agent_instead(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, sim_for: Any
) -> None:
    async def forward(call: CallSetup) -> Forward:
        return Forward("+15550000666")

    bot = Bot(system_prompt="x", greeting="Hi.", setup=forward, forward_to=("+15559990000",))
    server = await start_server(bot=bot, assemblyai_agent_url=fake_agent.url)
    call = await sim_for(server).place_inbound_call()
    assert "<Stream" in call.twiml and "<Dial" not in call.twiml
    await fake_agent.wait_for_session()
    call_id = only_call_id(server)
    await call.hangup()
    await wait_closed(server, call_id)
    record = await fetch_record(server, call.call_sid)
    assert record["setup"]["outcome"] == "failed"
    assert "forward_to" in record["setup"]["error"]


SALES = Bot(system_prompt="You sell bikes.", greeting="Sales, hello.")
SUPPORT = Bot(system_prompt="You fix bikes.", greeting="Support, hello.")


async def test_two_numbers_reach_two_bots_and_others_the_default(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, sim_for: Any
) -> None:
    server = await start_server(
        bot=Bot(system_prompt="Default.", greeting="Default, hello."),
        bots={"sales": SALES, "support": SUPPORT},
        assemblyai_agent_url=fake_agent.url,
        # The specs are loaded by `callbridge serve`; here the bots are given directly.
        callbridge_bots="sales=unused:sales support=unused:support",
        callbridge_numbers="+15552220001=sales,+15552220002=support",
    )
    sim = sim_for(server)
    heard = {}
    for index, to in enumerate(("+15552220001", "+15552220002", "+15552220003")):
        call = await sim.place_inbound_call(to=to)
        session = await fake_agent.wait_for_session(index)
        heard[to] = session.received[0]["session"]["greeting"]
        call_id = only_call_id(server)
        await call.hangup()
        await wait_closed(server, call_id)
        record = await fetch_record(server, call.call_sid)
        assert record["bot"] == ("sales", "support", "default")[index]
    assert heard == {
        "+15552220001": "Sales, hello.",
        "+15552220002": "Support, hello.",
        "+15552220003": "Default, hello.",
    }


# --- tools that see the call ------------------------------------------------------------


@tool
async def remember_order(call: Call) -> str:
    """Note the caller's order for the other tools, and listen out for product names."""
    order = call.parameters.get("order", "none")
    call.state["order"] = order
    call.update_session(
        system_prompt=f"The caller's order is {order}.", keyterms=["Brompton", "Tern"]
    )
    return "noted"


@tool
def recall_order(call: Call) -> dict[str, Any]:
    """Tell what the other tool noted (a sync tool: it runs on a worker thread)."""
    call.update_session(transcription_prompt="A call about a bike order.")
    return {
        "order": call.state.get("order"),
        "call_id": call.call_id,
        "call_sid": call.call_sid,
        "direction": call.direction,
        "from": call.from_number,
    }


@tool
def change_greeting(call: Call) -> str:
    """Try to change what cannot change."""
    try:
        call.update_session(greeting="A new greeting")
    except SessionUpdateError as exc:
        raise ToolError(str(exc)) from None
    return "changed"


TOOLS_BOT = Bot(
    system_prompt="You take bike orders.",
    greeting="Orders.",
    tools=(remember_order, recall_order, change_greeting, generate_random_number),
)


async def _placed_call_server(
    fake_agent: FakeVoiceAgent, folder: Any, bot: Bot, bots: dict[str, Bot] | None = None
) -> AsyncIterator[RunningServer]:
    """A server with a webhook that answers as for a call callbridge placed itself, with
    custom parameters, a pre-assigned call id and a bot asked for by name."""
    settings = make_settings(
        assemblyai_agent_url=fake_agent.url,
        database_url=f"sqlite:///{folder}/calls.db",
        callbridge_spool_path=str(folder / "spool.jsonl"),
        callbridge_api_token=API_TOKEN,
        callbridge_bots="sales=unused:sales" if bots else None,
    )
    app = build_app(settings, bot, bots)

    async def placed(request: web.Request) -> web.Response:
        form = await webhooks._signed_form(request)
        return await webhooks._answer_call(
            request,
            "outbound",
            "outbound-stream",
            form.get("CallSid"),
            form.get("From"),
            form.get("To"),
            parameters={"order": "A-1234", "name": "Alice"},
            call_id=request.query.get("call_id"),
            bot_name=request.query.get("bot"),
        )

    app.router.add_post("/placed-twiml", placed)
    runner = app_runner(app, settings)
    await runner.setup()
    site = main_port_site(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield RunningServer(url=f"http://127.0.0.1:{site.port}", app=app, settings=settings)
    finally:
        await runner.cleanup()


@pytest.fixture
async def placed_server(fake_agent: FakeVoiceAgent, tmp_path: Any) -> AsyncIterator[RunningServer]:
    async for server in _placed_call_server(fake_agent, tmp_path, TOOLS_BOT):
        yield server


async def test_tools_see_the_call_share_its_state_and_change_the_session(
    placed_server: RunningServer, fake_agent: FakeVoiceAgent, sim_for: Any
) -> None:
    server = placed_server
    fake_agent.turns.extend(
        [
            ScriptedTurn(user_text="my order", tool_name="remember_order", tool_arguments={}),
            ScriptedTurn(user_text="what was it", tool_name="recall_order", tool_arguments={}),
        ]
    )
    call = await sim_for(server).place_inbound_call(
        from_=CALLER, webhook_path="/placed-twiml?call_id=preset-call-id"
    )
    session = await fake_agent.wait_for_session()
    first = session.received[0]["session"]
    # The model never sees the call parameter.
    definitions = {t["name"]: t["parameters"] for t in first["tools"]}
    assert definitions["remember_order"]["properties"] == {}
    assert "required" not in definitions["recall_order"]
    await call.wait_heard(len(fake_agent.reply_audio_for("Orders.")))
    assert list(server.app[APP_STATE].registry.live) == ["preset-call-id"]

    call.speak(tone(300, 300) + silence(500))
    assert (await session.wait_for("tool.result"))["result"] == '"noted"'
    update = await session.wait_for(
        lambda m: m["type"] == "session.update" and "greeting" not in m["session"]
    )
    assert update["session"] == {
        "system_prompt": "The caller's order is A-1234.",
        "input": {"keyterms": ["Brompton", "Tern"]},
    }
    await session.wait_sent(lambda e: e["type"] == "session.updated" and e is not None)
    await session.wait_sent(
        lambda e: e["type"] == "transcript.agent" and "noted" in e.get("text", ""), timeout=10
    )

    call.speak(tone(300, 300) + silence(500))
    result = await session.wait_for(
        lambda m: m["type"] == "tool.result" and m["result"] != '"noted"'
    )
    assert result["is_error"] is False
    assert json.loads(result["result"]) == {
        "order": "A-1234",
        "call_id": "preset-call-id",
        "call_sid": call.call_sid,
        "direction": "outbound",
        "from": CALLER,
    }
    await session.wait_for(
        lambda m: (
            m["type"] == "session.update"
            and m["session"].get("input", {}).get("transcription_prompt")
        )
    )
    assert session.config["system_prompt"] == "The caller's order is A-1234."
    assert session.config["input"]["transcription_prompt"] == "A call about a bike order."
    await call.hangup()
    await wait_closed(server, "preset-call-id")
    record = await fetch_record(server, "preset-call-id")
    assert record["parameters"] == {"order": "A-1234", "name": "Alice"}
    configs = [c["config"] for c in record["session_configs"]]
    assert configs[0]["system_prompt"] == "You take bike orders."
    assert configs[-1]["system_prompt"] == "The caller's order is A-1234."
    assert configs[-1]["input"]["keyterms"] == ["Brompton", "Tern"]


async def test_an_immutable_change_is_refused_before_it_is_sent(
    placed_server: RunningServer, fake_agent: FakeVoiceAgent, sim_for: Any
) -> None:
    fake_agent.turns.append(
        ScriptedTurn(user_text="change it", tool_name="change_greeting", tool_arguments={})
    )
    call = await sim_for(placed_server).place_inbound_call(webhook_path="/placed-twiml")
    session = await fake_agent.wait_for_session()
    await call.wait_heard(len(fake_agent.reply_audio_for("Orders.")))
    call.speak(tone(300, 300) + silence(500))
    result = await session.wait_for("tool.result")
    assert result["is_error"] is True
    assert result["result"].startswith("greeting: cannot be changed after the session starts")
    await session.wait_sent(lambda e: e["type"] == "transcript.agent" and e is not None)
    # Only the first update went out; the fake saw no attempt to change the greeting.
    assert [m["type"] for m in session.received].count("session.update") == 1
    await call.hangup()


def _post_response_validator(status: str) -> Draft202012Validator:
    documented = spec()["paths"]["/api/calls/{call}/session"]["post"]["responses"][status]
    if "$ref" in documented:
        documented = spec()["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    schema = documented["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = {"$ref": SPEC_URI + schema["$ref"]}
    else:
        schema = {**schema, "$schema": "https://json-schema.org/draft/2020-12/schema"}
    resource = Resource.from_contents(spec(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    return Draft202012Validator(schema, registry=registry)


async def test_an_operator_changes_a_live_session_through_the_api(
    placed_server: RunningServer, fake_agent: FakeVoiceAgent, sim_for: Any
) -> None:
    server = placed_server
    call = await sim_for(server).place_inbound_call(
        webhook_path="/placed-twiml?call_id=operated-call"
    )
    session = await fake_agent.wait_for_session()
    await session.wait_sent("session.ready")
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    url = f"{server.url}/api/calls/operated-call/session"
    async with aiohttp.ClientSession() as http:
        body = {"system_prompt": "Offer a discount.", "tools": ["generate_random_number"]}
        async with http.post(url, json=body, headers=headers) as response:
            answer = await response.json()
            assert response.status == 200, answer
            _post_response_validator("200").validate(answer)
            assert answer == {"call_id": "operated-call", "fields": ["system_prompt", "tools"]}
        update = await session.wait_for(
            lambda m: m["type"] == "session.update" and "greeting" not in m["session"]
        )
        assert update["session"]["system_prompt"] == "Offer a discount."
        assert [t["name"] for t in update["session"]["tools"]] == ["generate_random_number"]

        for body, status, code in (
            ({"greeting": "Hello again"}, 400, "immutable_field"),
            ({"voice": "eve"}, 400, "immutable_field"),
            ({"keyterms": ["x"] * 101}, 400, "invalid_parameter"),
            ({"tools": ["no_such_tool"]}, 400, "invalid_parameter"),
            ({"system_prompt": "x"}, 401, "unauthorized"),
        ):
            sent_headers = headers if status != 401 else {}
            async with http.post(url, json=body, headers=sent_headers) as response:
                answer = await response.json()
                assert (response.status, answer["error"]) == (status, code), answer
                _post_response_validator(str(status)).validate(answer)
        async with http.post(
            f"{server.url}/api/calls/not-a-call/session",
            json={"system_prompt": "x"},
            headers=headers,
        ) as response:
            assert (response.status, (await response.json())["error"]) == (404, "not_live")
    assert [m["type"] for m in session.received].count("session.update") == 2
    await call.hangup()


async def test_a_bot_asked_for_by_name_answers_a_placed_call(
    fake_agent: FakeVoiceAgent, tmp_path: Any, sim_for: Any
) -> None:
    seen: list[CallSetup] = []

    async def sales_setup(call: CallSetup) -> CallConfig:
        seen.append(call)
        return CallConfig(
            greeting=f"Hi {call.parameters['name']}, about order {call.parameters['order']}."
        )

    sales = Bot(system_prompt="Sales.", greeting="Sales.", setup=sales_setup)
    async for server in _placed_call_server(fake_agent, tmp_path, TOOLS_BOT, {"sales": sales}):
        sim = sim_for(server)
        call = await sim.place_inbound_call(
            webhook_path="/placed-twiml?call_id=placed-1&bot=sales",
            extra_params={"CallerCity": "OAKLAND"},
        )
        session = await fake_agent.wait_for_session()
        assert session.received[0]["session"]["greeting"] == "Hi Alice, about order A-1234."
        [setup] = seen
        assert (setup.call_id, setup.direction, setup.bot_name) == ("placed-1", "outbound", "sales")
        assert setup.parameters == {"order": "A-1234", "name": "Alice"}
        assert setup.twilio["CallerCity"] == "OAKLAND"
        assert setup.twilio["CallSid"] == call.call_sid
        await call.hangup()
        await wait_closed(server, "placed-1")
        record = await fetch_record(server, "placed-1")
        assert (record["bot"], record["parameters"]) == (
            "sales",
            {"order": "A-1234", "name": "Alice"},
        )

        # A name no bot has: logged, and the call goes to the routing's bot.
        other = await sim.place_inbound_call(
            webhook_path="/placed-twiml?call_id=placed-2&bot=nobody"
        )
        session = await fake_agent.wait_for_session(1)
        assert session.received[0]["session"]["greeting"] == "Orders."
        await other.hangup()
        await wait_closed(server, "placed-2")
        assert (await fetch_record(server, "placed-2"))["bot"] == "default"


ALL_OPTIONS = SessionOptions(
    keyterms=["Brompton", "Tern", "callbridge"],
    transcription_prompt="A bike shop's phone line.",
    transcription_mode="max_accuracy",
    language_codes=["en", "es"],
    voice_focus="far-field",
    voice_focus_threshold=0.7,
    turn_detection=TurnDetection(
        vad_threshold=0.4,
        min_silence=600,
        max_silence=1500,
        interrupt_response=False,
        interruption_delay=200,
    ),
    volume=80,
    extra={"input": {"continuous_partials": True}},
)


async def test_every_session_option_reaches_the_agent_and_passes_its_schema(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, sim_for: Any
) -> None:
    bot = Bot(system_prompt="Options.", greeting="Hi.", options=ALL_OPTIONS)
    server = await start_server(bot=bot, assemblyai_agent_url=fake_agent.url)
    call = await sim_for(server).place_inbound_call()
    session = await fake_agent.wait_for_session()
    first = session.received[0]["session"]
    assert first["input"] == {
        "format": {"encoding": "audio/pcmu"},
        "keyterms": ["Brompton", "Tern", "callbridge"],
        "transcription_prompt": "A bike shop's phone line.",
        "transcription_mode": "max_accuracy",
        "language_codes": ["en", "es"],
        "voice_focus": "far-field",
        "voice_focus_threshold": 0.7,
        "turn_detection": {
            "vad_threshold": 0.4,
            "min_silence": 600,
            "max_silence": 1500,
            "interrupt_response": False,
            "interruption_delay": 200,
        },
        "continuous_partials": True,
    }
    assert first["output"]["volume"] == 80
    await session.wait_sent("session.ready")
    await call.hangup()
    # The fake_agent fixture fails the test if any of it broke the API's schema.


async def test_a_stored_agent_is_named_alone_then_gets_the_mutable_fields(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, sim_for: Any
) -> None:
    agent_id = "agent_" + "0" * 32
    fake_agent.agents[agent_id] = {
        "system_prompt": "Stored prompt.",
        "greeting": "Stored greeting.",
        "input": {"format": {"encoding": "audio/pcmu"}},
        "output": {"voice": "alba", "format": {"encoding": "audio/pcmu"}},
    }
    bot = Bot(
        system_prompt="",
        tools=(generate_random_number,),
        options=SessionOptions(agent_id=agent_id, keyterms=["Brompton"], volume=50),
    )
    server = await start_server(bot=bot, assemblyai_agent_url=fake_agent.url)
    call = await sim_for(server).place_inbound_call()
    session = await fake_agent.wait_for_session()
    assert session.received[0]["session"] == {"agent_id": agent_id}
    follow = await session.wait_for(
        lambda m: m["type"] == "session.update" and "agent_id" not in m["session"]
    )
    assert follow["session"] == {
        "tools": [generate_random_number.definition()],
        "input": {"keyterms": ["Brompton"]},
        "output": {"volume": 50},
    }
    await call.wait_heard(len(fake_agent.reply_audio_for("Stored greeting.")))
    assert session.config["input"]["keyterms"] == ["Brompton"]
    await call.hangup()


async def test_calls_being_set_up_count_against_max_calls(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, sim_for: Any
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(call: CallSetup) -> None:
        entered.set()
        await release.wait()

    bot = Bot(system_prompt="x", greeting="Hi.", setup=slow)
    server = await start_server(bot=bot, assemblyai_agent_url=fake_agent.url, max_calls=1)
    sim = sim_for(server)
    first = asyncio.create_task(sim.place_inbound_call())
    await entered.wait()
    second = await sim.place_inbound_call()
    assert "<Stream" not in second.twiml and "all our lines are busy" in second.twiml
    release.set()
    call = await first
    assert "<Stream" in call.twiml
    await fake_agent.wait_for_session()
    await call.hangup()
