"""Custom parameters of a placed call: `callbridge call --param` (a process of its own, as
on another machine) signs them into the URL the fake Twilio REST API gives the simulator,
which requests it signed like Twilio; they reach the call's `CallInfo`. A tampered,
expired, reused or misdirected URL is refused; limits are errors before anything is
placed."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlencode

import msgspec
import pytest

from callbridge.bot import bot as default_bot
from callbridge.server.call_registry import CallInfo
from callbridge.server.state import APP_STATE
from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_rest_fake import FakeTwilioRest
from callbridge.testing.twilio_simulator import TwilioSimulator
from callbridge.twilio import call_parameters
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, RunningServer, ServerFactory
from tests.e2e.test_outbound_call import CALLEE, OUR_NUMBER, run_call_command
from tests.e2e.test_simulate_command import SIGNED, simulate
from tests.helpers.log_events import Events, caught

KEY = call_parameters.parameters_key(AUTH_TOKEN)


@pytest.fixture
async def server(start_server: ServerFactory, fake_agent: FakeVoiceAgent) -> RunningServer:
    # A second bot by name, so that a placed call's `bot` has one to choose.
    return await start_server(assemblyai_agent_url=fake_agent.url, bots={"sales": default_bot})


@pytest.fixture
async def rest(simulator: TwilioSimulator) -> AsyncIterator[FakeTwilioRest]:
    fake = FakeTwilioRest(
        simulator, auth_token=AUTH_TOKEN, owned_numbers=[OUR_NUMBER], verified_numbers=[CALLEE]
    )
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def events() -> AsyncIterator[Events]:
    with caught() as found:
        yield found


def call_info(server: RunningServer, call_id: str) -> CallInfo:
    # What the webhook made of the call: the per-call set-up reads it from here.
    return server.app[APP_STATE].registry._known[call_id]


def signed(
    *, parameters: dict[str, str], to: str = CALLEE, now: float | None = None, call_id: str = ""
) -> str:
    return call_parameters.encode(
        call_id=call_id or "Test" + "x" * 19,
        to=to,
        key=KEY,
        now=time.time() if now is None else now,
        parameters=parameters,
        bot="sales",
    )


async def answer(simulator: TwilioSimulator, query: str, *, to: str = CALLEE) -> int:
    """Twilio fetching /outbound-twiml?{query} for an answered call; the webhook's status."""
    call = await simulator.answer_outbound_call(
        call_sid="CA" + str(time.monotonic_ns()).rjust(32, "0"),
        url=f"{PUBLIC_URL}/outbound-twiml?{query}",
        from_=OUR_NUMBER,
        to=to,
    )
    return call.webhook_status


async def test_parameters_from_the_command_reach_the_calls_info(
    server: RunningServer, fake_agent: FakeVoiceAgent, rest: FakeTwilioRest, events: Events
) -> None:
    code, out, err = await run_call_command(
        rest,
        "--param",
        "name=Alice Smith",
        "--param",
        "order=12&34=5",
        "--bot",
        "sales",
        "--json",
    )
    assert code == 0, err
    placed = json.loads(out)
    assert placed["call_sid"].startswith("CA")
    url = rest.created[0]["Url"][0]
    assert "Alice" in url and "mac=" in url  # signed into the URL Twilio fetches
    call = await rest.wait_for_call()
    await call.wait_started()  # the webhook has answered
    assert call.webhook_status == 200
    await events.wait_for("call.announced")
    announced = events.fields_of("call.announced")[0]
    assert announced["call_id"] == placed["call_id"]
    assert announced["bot"] == "sales"
    assert announced["parameters"] == ["name", "order"]
    info = call_info(server, placed["call_id"])
    assert dict(info.parameters) == {"name": "Alice Smith", "order": "12&34=5"}
    # The call record encodes them: a plain mapping, not a read-only proxy.
    assert json.loads(msgspec.json.encode(info.parameters)) == dict(info.parameters)
    assert info.bot_name == "sales"
    assert info.call_sid == placed["call_sid"]
    await fake_agent.wait_for_session()
    await call.hangup()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"p.name": "Mallory"}, "tampered"),
        ({"p.vip": "yes"}, "tampered"),
        ({"bot": "admin"}, "tampered"),
        ({"p.name": None}, "tampered"),
        ({"junk": "1"}, "malformed"),
    ],
    ids=["changed", "added", "other bot", "removed", "unsigned field"],
)
async def test_a_tampered_url_is_refused(
    server: RunningServer,
    simulator: TwilioSimulator,
    events: Events,
    change: dict[str, str | None],
    reason: str,
) -> None:
    pairs = dict(pair.split("=", 1) for pair in signed(parameters={"name": "Alice"}).split("&"))
    for name, value in change.items():
        if value is None:
            pairs.pop(name)
        else:
            pairs[name] = quote(value, safe="")
    status = await answer(simulator, "&".join(f"{k}={v}" for k, v in pairs.items()))
    assert status == 403
    refused = events.fields_of("webhook.refused")
    assert len(refused) == 1
    assert str(refused[0]["reason"]).startswith(f"call parameters {reason}")
    assert "call.announced" not in events.names


async def test_the_untouched_url_is_accepted(
    server: RunningServer, simulator: TwilioSimulator, events: Events
) -> None:
    # The same path as the refusals above, but with nothing changed: the control.
    assert await answer(simulator, signed(parameters={"name": "Alice"})) == 200
    assert events.fields_of("call.announced")[0]["parameters"] == ["name"]


async def test_an_expired_url_is_refused(
    server: RunningServer, simulator: TwilioSimulator, events: Events
) -> None:
    stale = time.time() - call_parameters.DEFAULT_TTL_SECONDS - 5
    assert await answer(simulator, signed(parameters={}, now=stale)) == 403
    assert events.fields_of("webhook.refused")[0]["reason"] == "call parameters expired"


async def test_a_url_for_another_number_is_refused(
    server: RunningServer, simulator: TwilioSimulator, events: Events
) -> None:
    assert await answer(simulator, signed(parameters={}), to="+15559990000") == 403
    assert events.fields_of("webhook.refused")[0]["reason"] == "call parameters for another number"


async def test_a_url_serves_one_call_only(
    server: RunningServer, simulator: TwilioSimulator, events: Events
) -> None:
    query = signed(parameters={"name": "Alice"})
    assert await answer(simulator, query) == 200
    assert await answer(simulator, query) == 403  # another CallSid, the same call id
    reason = events.fields_of("webhook.refused")[0]["reason"]
    assert reason == "call parameters call id already used by another call"


async def test_an_oversized_query_is_refused_unread(
    server: RunningServer, simulator: TwilioSimulator, events: Events
) -> None:
    query = urlencode({"p.big": "x" * call_parameters.MAX_QUERY_CHARS})
    assert await answer(simulator, query) == 403
    assert events.fields_of("webhook.refused")[0]["reason"] == "call parameters too large"


async def test_refusals_are_throttled(
    server: RunningServer, simulator: TwilioSimulator, events: Events
) -> None:
    for _ in range(3):
        assert await answer(simulator, "v=1&junk") == 403
    assert len(events.fields_of("webhook.refused")) == 1


async def test_without_the_token_parameters_are_taken_unverified(
    start_server: ServerFactory, fake_agent: FakeVoiceAgent, events: Events
) -> None:
    server = await start_server(
        assemblyai_agent_url=fake_agent.url,
        twilio_auth_token=None,
        callbridge_insecure_skip_signatures=True,
    )
    async with TwilioSimulator(server.url, auth_token="unused", public_url=PUBLIC_URL) as sim:
        forged = signed(parameters={"name": "Alice"}).replace("Alice", "Mallory")
        assert await answer(sim, forged) == 200
        unverified = events.fields_of("call.parameters_unverified")
        assert len(unverified) == 1
        assert dict(call_info(server, str(unverified[0]["call_id"])).parameters) == {
            "name": "Mallory"
        }
        # Every other check still applies.
        stale = time.time() - call_parameters.DEFAULT_TTL_SECONDS - 5
        assert await answer(sim, signed(parameters={}, now=stale)) == 403


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--param", "name"), "--param 'name' is not name=value"),
        (("--param", "=Alice"), "--param '=Alice' is not name=value"),
        (("--param", "a=1", "--param", "a=2"), "--param a given twice"),
        (("--param", "1a=x"), "--param: parameter name '1a'"),
        (("--param", "name=" + "x" * 257), "--param: parameter name: 257 characters, at most 256"),
        (
            tuple(a for i in range(21) for a in ("--param", f"k{i}=v")),
            "--param: 21 parameters: at most 20",
        ),
        (("--bot", "no spaces"), "--bot: bot name 'no spaces'"),
    ],
    ids=["no equals", "no name", "twice", "bad name", "long value", "too many", "bad bot"],
)
async def test_the_command_refuses_what_is_beyond_the_limits(
    rest: FakeTwilioRest, args: tuple[str, ...], says: str
) -> None:
    code, out, err = await run_call_command(rest, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert says in lines[0]
    assert rest.created == []  # nothing placed


async def test_simulate_places_an_answered_outbound_call_with_parameters(
    server: RunningServer, fake_agent: FakeVoiceAgent, tmp_path: Path, events: Events
) -> None:
    status, _, err = await simulate(
        tmp_path,
        "--outbound",
        "--param",
        "name=Alice",
        "--bot",
        "sales",
        "--seconds",
        "2",
        "--server",
        server.url,
        env=SIGNED,
    )
    assert status == 0, err
    announced = events.fields_of("call.announced")
    assert [(a["bot"], a["parameters"]) for a in announced] == [("sales", ["name"])]


async def test_simulate_wants_outbound_for_parameters(tmp_path: Path) -> None:
    status, _, err = await simulate(tmp_path, "--param", "name=Alice", env=SIGNED)
    assert status == 2
    assert "--param and --bot need --outbound" in err
