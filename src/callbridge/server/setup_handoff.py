"""A call's set-up, handed from the instance that answered its webhook to the instance its
stream reaches (REDIS_URL set), so that the call gets the session its bot's set-up chose.

The set-up's result holds live objects (tools), so it travels in plain form: the bot's
name, the call's numbers and custom parameters, the set-up's error, and its `CallConfig`
as plain fields with the tools named. The stream's instance plans the session again from
that and its own copy of the bot (`plan_session`). A call's tools travel by name, looked
up among the bot's tools; a set-up that gives a tool the bot does not have cannot be
handed on, and the call gets the bot's tools where its stream lands on another instance.

One write at the webhook and one read when a stream reaches an instance that did not
answer its webhook; nothing per audio frame.
"""

from __future__ import annotations

from typing import Any

import msgspec

from callbridge.bot import Bot
from callbridge.call_setup import CallConfig
from callbridge.logs import EventLogger
from callbridge.server.call_registry import CallInfo
from callbridge.server.state import AppState
from callbridge.session_options import SessionOptions
from callbridge.session_plan import SessionPlan, plan_session


class PlainConfig(msgspec.Struct, frozen=True, omit_defaults=True):
    """A `CallConfig` without live objects: tools by name, options as plain fields."""

    system_prompt: str | None = None
    greeting: str | None = None
    voice: str | None = None
    tools: list[str] | None = None
    options: dict[str, Any] | None = None


class PlainSetup(msgspec.Struct, frozen=True, omit_defaults=True):
    direction: str
    bot_name: str | None = None
    parameters: dict[str, str] = msgspec.field(default_factory=dict)
    call_sid: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    setup_error: str | None = None
    config: PlainConfig | None = None


async def share_setup(
    state: AppState,
    info: CallInfo,
    bot: Bot,
    config: CallConfig | None,
    plan: SessionPlan,
    log: EventLogger,
) -> None:
    """Keep what the set-up decided for the instance the call's stream reaches."""
    if not state.shared.distributed:
        return
    setup = PlainSetup(
        direction=info.direction,
        bot_name=info.bot_name,
        parameters=dict(info.parameters),
        call_sid=info.call_sid,
        from_number=info.from_number,
        to_number=info.to_number,
        setup_error=info.setup_error,
        config=None if config is None else _plain_config(bot, config, plan, log),
    )
    await state.shared.share_setup(info.call_id, msgspec.json.encode(setup).decode())


def needs_setup(state: AppState, call_id: str) -> bool:
    """Whether a stream's call was set up on another instance (as far as this one knows)."""
    if not state.shared.distributed:
        return False
    info = state.registry.info(call_id)
    return info is None or info.plan is None


async def learn_setup(state: AppState, call_id: str, log: EventLogger) -> None:
    """Before a stream's call starts here: what its set-up decided on another instance,
    known to this instance's registry (as if it had answered the webhook itself)."""
    if not needs_setup(state, call_id):
        return
    text = await state.shared.shared_setup(call_id)
    if text is None:
        return  # unknown, expired or the shared state is down: the default bot answers
    try:
        setup = msgspec.json.decode(text, type=PlainSetup)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("setup.not_shared", why=f"unreadable: {exc}"[:200], effect="defaults used")
        return
    state.registry.announce(rebuild(state, call_id, setup, log))


def rebuild(state: AppState, call_id: str, setup: PlainSetup, log: EventLogger) -> CallInfo:
    """The call as the webhook's instance knew it, with its session planned here."""
    name = setup.bot_name or "default"
    bot = state.bots.get(name)
    if bot is None:
        log.warning("setup.unknown_bot", bot=name, effect="the default bot answers")
        name, bot = "default", state.bot
    config = None if setup.config is None else _live_config(bot, setup.config, log)
    plan = plan_session(bot, setup.direction, state.settings.agent_voice, config)
    return CallInfo(
        call_id=call_id,
        direction=setup.direction,
        call_sid=setup.call_sid,
        from_number=setup.from_number,
        to_number=setup.to_number,
        parameters=dict(setup.parameters),
        bot_name=name,
        plan=plan,
        setup_error=setup.setup_error,
    )


def _plain_config(bot: Bot, config: CallConfig, plan: SessionPlan, log: EventLogger) -> PlainConfig:
    tools: list[str] | None = None
    if config.tools is not None:
        own = {t.name: t for t in bot.tools}
        # The plan's tools are the call's (or the bot's, if the call's were unusable).
        if all(own.get(t.name) == t for t in plan.tools):
            tools = [t.name for t in plan.tools]
        else:
            log.warning(
                "setup.tools_not_shared",
                tools=sorted(t.name for t in plan.tools if own.get(t.name) != t),
                why="not among the bot's tools",
                effect="the bot's tools if the stream reaches another instance",
            )
    options: dict[str, Any] | None = None
    if isinstance(config.options, SessionOptions):
        clean, _ = config.options.over(SessionOptions())  # bad values: the bot's
        try:
            plain = msgspec.to_builtins(clean)
        except (TypeError, ValueError) as exc:
            log.warning(
                "setup.options_not_shared",
                why=f"{type(exc).__name__}: {exc}"[:200],
                effect="the bot's options if the stream reaches another instance",
            )
        else:
            options = {k: v for k, v in plain.items() if v is not None and v != {}}
    return PlainConfig(
        system_prompt=_text(config.system_prompt),
        greeting=_text(config.greeting),
        voice=_text(config.voice),
        tools=tools,
        options=options,
    )


def _live_config(bot: Bot, plain: PlainConfig, log: EventLogger) -> CallConfig:
    tools = None
    if plain.tools is not None:
        own = {t.name: t for t in bot.tools}
        missing = [name for name in plain.tools if name not in own]
        if missing:
            log.warning(
                "setup.tools_not_shared",
                tools=missing,
                why="not among the bot's tools on this instance",
                effect="the bot's tools",
            )
        else:
            tools = [own[name] for name in plain.tools]
    options = None
    if plain.options is not None:
        try:
            options = msgspec.convert(plain.options, SessionOptions)
        except msgspec.ValidationError as exc:
            log.warning("setup.options_not_shared", why=str(exc)[:200], effect="bot's options")
    return CallConfig(
        system_prompt=plain.system_prompt,
        greeting=plain.greeting,
        voice=plain.voice,
        tools=tools,
        options=options,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
