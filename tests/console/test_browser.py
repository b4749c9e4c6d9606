"""The console in a real browser (headless Chromium): log in and out, a live call whose
transcript grows, hanging it up, saying something and transferring it, history, heard and
unheard words, cross-site refusals."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from callbridge.bot import bot as default_bot
from callbridge.server.state import APP_STATE
from callbridge.testing.audio import silence, tone
from callbridge.testing.fake_agent import FakeVoiceAgent, ScriptedTurn
from callbridge.testing.twilio_simulator import TwilioSimulator
from callbridge.verbs import Transfer, TransferTarget
from tests.conftest import API_TOKEN, AUTH_TOKEN, PUBLIC_URL, RunningServer, ServerFactory
from tests.console.test_pages import seed, seed_recent

DESKTOP = {"width": 1100, "height": 760}
PHONE = {"width": 390, "height": 760}
WAIT_MS = 20_000  # for what the page waits on: a call's next line, say


@pytest.fixture
async def page(browser: Any, server: RunningServer) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    try:
        yield page
    finally:
        await context.close()


async def log_in(page: Any, server: RunningServer, token: str = API_TOKEN) -> None:
    await page.goto(server.url + "/console")
    assert page.url.endswith("/console/login")
    await page.fill("#token", token)
    await page.click("#login")
    await page.wait_for_load_state()


async def test_log_in_wrong_token_and_log_out(
    page: Any, server: RunningServer, screenshots: Path
) -> None:
    await log_in(page, server, token="not-the-token")
    assert await page.text_content("#login-error") == "That is not the token."
    await page.screenshot(path=screenshots / "login-refused.png")
    await log_in(page, server)
    assert page.url.endswith("/console")
    assert "Live calls" in await page.text_content("h1")
    await page.wait_for_selector("#feed-status:has-text('Live: updates')")
    cookies = await page.context.cookies()
    [cookie] = [c for c in cookies if c["name"] == "callbridge_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    await page.click("#logout")
    await page.wait_for_url("**/console/login")
    await page.goto(server.url + "/console/history")
    assert page.url.endswith("/console/login")


async def test_a_live_call_grows_and_the_hang_up_button_ends_it(
    page: Any, server: RunningServer, fake_agent: FakeVoiceAgent, screenshots: Path
) -> None:
    state = server.app[APP_STATE]
    fake_agent.turns.extend(
        [
            ScriptedTurn(
                user_text="pick a number",
                tool_name="generate_random_number",
                tool_arguments={"minimum": 7, "maximum": 7},
                after_tool="It is {result}.",
            ),
            ScriptedTurn(
                user_text="where is my parcel",
                reply="It left the depot this morning, it is on the van now, and it should reach "
                "your door by six tonight at the latest.",
            ),
            ScriptedTurn(user_text="thanks, that is all", reply="Goodbye!"),
        ]
    )
    await log_in(page, server)
    await page.wait_for_selector("#feed-status:has-text('Live: updates')")
    async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
        call = await sim.place_inbound_call(from_="+15550001234")
        card = page.locator("article.call").first
        # The call appears without a reload, then its transcript grows as people speak.
        await card.locator("li.agent:has-text('Thanks for calling')").wait_for()
        assert "+15550001234" not in await card.inner_text()
        assert "+•••••••••34" in await card.inner_text()
        call.speak(tone(440, 1000) + silence(1000))
        await card.locator("li.tool:has-text('generate_random_number')").wait_for()
        await card.locator("li.agent:has-text('It is 7.')").wait_for()
        call.speak(tone(440, 1000) + silence(1000))
        await card.locator("li.caller:has-text('where is my parcel')").wait_for()
        # The caller talks over the answer a second into it: the words they did not hear
        # are struck through on the card.
        await call.wait_heard(len(call.heard) + 8000, timeout=15)
        call.speak(tone(440, 1000) + silence(1000))
        answer = card.locator("li.agent:has-text('It left')")
        await answer.locator("del.unheard").wait_for()
        assert await answer.locator(".cut").inner_text() == "(interrupted)"
        # The reply's text goes as far as the agent got; part of it the caller never heard.
        assert await answer.locator("del.unheard").inner_text()
        await card.locator("li.agent:has-text('Goodbye!')").wait_for()
        assert await card.locator("[data-state]").inner_text() == "live"
        await page.screenshot(path=screenshots / "live.png")
        await page.set_viewport_size(PHONE)
        await page.screenshot(path=screenshots / "live-phone.png")
        await page.set_viewport_size(DESKTOP)

        [(call_id, runner)] = state.registry.live.items()
        await card.locator("button[data-action=hang-up]").click()
        await call.wait_ended()  # the simulator sees the stream end
        await runner.done.wait()
    await page.locator(f"#call-{call_id}.state-ended").wait_for()
    assert "Ended by operator" in await page.locator(f"#call-{call_id}").inner_text()
    await state.records.flush()
    record = await state.records.get_call(call_id)
    assert record is not None and record.ended_by == "operator"


async def test_history_finds_a_past_call_and_its_page_tells_heard_from_unheard(
    page: Any, server: RunningServer, screenshots: Path
) -> None:
    await seed(server)
    await log_in(page, server)
    await page.click("nav >> text=History")
    await page.fill("#words", "pick-up")
    await page.click("#search")
    rows = page.locator("#history tbody tr")
    assert await rows.count() == 1
    await page.screenshot(path=screenshots / "history.png")
    await rows.first.locator("a").click()
    await page.wait_for_url("**/console/calls/call-1")
    agent_line = page.locator("#conversation li.agent").nth(1)
    assert await agent_line.locator(".heard").inner_text() == "Yes, it is"
    unheard = agent_line.locator("del.unheard")
    assert await unheard.inner_text() == "ready for pick-up today"
    # Told apart on screen, not only in the markup: struck through and greyed.
    style = await unheard.evaluate("e => getComputedStyle(e).textDecorationLine")
    assert style == "line-through"
    await page.screenshot(path=screenshots / "call.png", full_page=True)
    await seed_recent(server)
    await page.click("nav >> text=Overview")
    assert await page.locator("svg.chart").count() == 3
    assert await page.locator("svg.chart rect").count() > 10
    await page.screenshot(path=screenshots / "overview.png", full_page=True)


async def test_a_cross_site_post_is_refused(
    page: Any, server: RunningServer, unused_tcp_port: int
) -> None:
    await log_in(page, server)
    # Another origin on the same host (a same-site page, so the cookie goes with it):
    # it posts to the console's log-out as a forged form would.
    forged = (
        f'<form id="f" method="post" action="{server.url}/console/logout">'
        '<input name="csrf" value="guessed"></form>'
        "<script>document.getElementById('f').submit()</script>"
    )

    async def evil(_: web.Request) -> web.Response:
        return web.Response(text=forged, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", evil)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_tcp_port)
    await site.start()
    try:
        await page.goto(f"http://127.0.0.1:{unused_tcp_port}/")
        await page.wait_for_url(f"{server.url}/console/logout")
        assert "Forbidden" in await page.text_content("body")
    finally:
        await runner.cleanup()
    # Still logged in: the forged request changed nothing.
    await page.goto(server.url + "/console")
    assert page.url.endswith("/console")


async def test_the_say_and_transfer_buttons_reach_the_agent(
    browser: Any, start_server: ServerFactory, fake_agent: FakeVoiceAgent, screenshots: Path
) -> None:
    person = TransferTarget("the workshop", "+15550009999")
    bot = dataclasses.replace(default_bot, transfer=Transfer(targets=(person,)))
    server = await start_server(assemblyai_agent_url=fake_agent.url, bot=bot)
    context = await browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    try:
        await log_in(page, server)
        await page.wait_for_selector("#feed-status:has-text('Live: updates')")
        async with TwilioSimulator(server.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL) as sim:
            call = await sim.place_inbound_call()
            session = await fake_agent.wait_for_session()
            card = page.locator("article.call").first
            await card.locator("li.agent:has-text('Thanks for calling')").wait_for()
            await card.locator("input[name=text]").fill("Your bike is ready.")
            await card.locator("button[data-action=say]").click()
            said = await session.wait_for("reply.create", timeout=10)
            assert "Your bike is ready." in str(said.get("instructions"))
            await page.screenshot(path=screenshots / "live-say.png")
            card = page.locator("article.call").first
            assert await card.locator("select[name=to]").inner_text() == "the workshop"
            await card.locator("button[data-action=transfer]").click()
            # The agent tells the caller first; the line moves once that has been heard.
            told = await session.wait_for(
                lambda m: (
                    m.get("type") == "reply.create" and "the workshop" in str(m.get("instructions"))
                ),
                timeout=10,
            )
            assert told is not None
            await call.hangup()
            await session.wait_for("session.end")
    finally:
        await context.close()
