"""Running a bot's per-call set-up at the webhook, under its time limit, and turning what
it returns into the call's session or into TwiML that answers without the agent.

Never a dead line: a set-up that raises, is late or returns something unusable gives the
call the bot's defaults, with the reason logged and recorded.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twilio.twiml.voice_response import VoiceResponse

from callbridge.bot import Bot
from callbridge.bot_routing import choose_bot
from callbridge.call_setup import CallConfig, CallSetup, Forward, Refuse
from callbridge.logs import EventLogger
from callbridge.records.entries import CallSetupDone
from callbridge.server.call_registry import CallInfo
from callbridge.server.setup_handoff import share_setup
from callbridge.server.state import AppState
from callbridge.session_plan import SessionPlan, plan_session

_REFUSE_REASONS = ("busy", "rejected")
_MAX_SAY_CHARS = 1000
_MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class SetupDecision:
    outcome: str  # configured | defaults | refused | forwarded | failed (defaults used)
    plan: SessionPlan | None = None  # the agent's session; None when refused or forwarded
    twiml: VoiceResponse | None = None  # the answer when refused or forwarded
    error: str | None = None
    detail: str | None = None  # refused: the reason; forwarded: the number
    config: CallConfig | None = None  # what the set-up returned, when it configured the call


async def set_up_call(
    state: AppState,
    info: CallInfo,
    bot_name: str | None,
    form: Mapping[str, Any],
    log: EventLogger,
) -> SetupDecision:
    """Choose the call's bot, run its set-up with Twilio's webhook `form`, record what it
    decided, and keep it in `info` (the bot's name, the session planned, the error)."""
    name, problem = choose_bot(
        state.bots, state.numbers, info.direction, info.from_number, info.to_number, bot_name
    )
    if problem is not None:
        log.warning("call.unknown_bot", problem=problem, using=name)
    info.bot_name = name
    setup = CallSetup(
        call_id=info.call_id,
        direction="outbound" if info.direction == "outbound" else "inbound",
        call_sid=info.call_sid,
        from_number=info.from_number,
        to_number=info.to_number,
        parameters=info.parameters,
        twilio=twilio_fields(form),
        bot_name=name,
    )
    settings = state.settings
    decision = await decide(
        state.bots[name],
        setup,
        settings.agent_voice,
        settings.callbridge_setup_timeout_seconds,
        log,
    )
    info.plan = decision.plan
    info.setup_error = decision.error
    state.record(
        CallSetupDone(
            call_id=info.call_id,
            at=time.time(),
            direction=info.direction,
            outcome=decision.outcome,
            bot_name=name,
            parameters=dict(info.parameters),
            error=decision.error,
            detail=decision.detail,
            call_sid=info.call_sid,
            from_number=info.from_number,
            to_number=info.to_number,
        )
    )
    if decision.plan is not None:
        await share_setup(state, info, state.bots[name], decision.config, decision.plan, log)
    if decision.outcome in ("refused", "forwarded"):
        event = "call.forwarded" if decision.outcome == "forwarded" else "call.setup_refused"
        log.info(event, bot=name, detail=decision.detail)
    return decision


# Twilio's webhook fields, for the set-up (CallerCity and the like): short printable text
# only, and not too many of them.
_MAX_TWILIO_FIELDS = 64
_MAX_FIELD_NAME = 64
_MAX_FIELD_CHARS = 256


def twilio_fields(form: Mapping[str, Any]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in form.items():
        if len(fields) >= _MAX_TWILIO_FIELDS:
            break
        if (
            isinstance(name, str)
            and isinstance(value, str)
            and value
            and len(value) <= _MAX_FIELD_CHARS
            and value.isprintable()
            and len(name) <= _MAX_FIELD_NAME
            and name.isprintable()
            and name not in fields
        ):
            fields[name] = value
    return fields


async def decide(
    bot: Bot, setup: CallSetup, voice_setting: str | None, timeout: float, log: EventLogger
) -> SetupDecision:
    """What the call gets: the bot's set-up's decision, or the bot's defaults."""

    def defaults(outcome: str, error: str | None = None) -> SetupDecision:
        plan = plan_session(bot, setup.direction, voice_setting)
        return SetupDecision(outcome, plan, error=error)

    if bot.setup is None:
        return defaults("defaults")
    try:
        result = await _run(bot, setup, timeout)
    except TimeoutError:
        error = f"the set-up took longer than {timeout:g} s"
        log.error("setup.failed", bot=setup.bot_name, error=error, effect="bot's defaults used")
        return defaults("failed", error)
    except Exception as exc:
        error = _describe(exc)
        log.exception("setup.failed", exc, bot=setup.bot_name, effect="bot's defaults used")
        return defaults("failed", error)
    if result is None:
        return defaults("defaults")
    if isinstance(result, CallConfig):
        plan = plan_session(bot, setup.direction, voice_setting, result)
        for problem in plan.replaced:
            log.warning(
                "setup.option_replaced",
                bot=setup.bot_name,
                field=problem.field,
                limit=problem.limit,
                effect="bot's value used",
            )
        return SetupDecision("configured", plan, config=result)
    if isinstance(result, Refuse):
        refusal = _refuse(result, setup.direction)
        return refusal or defaults("failed", "Refuse: invalid reason or say text")
    if isinstance(result, Forward):
        if result.to not in bot.forward_to:
            error = "Forward: the number is not in the bot's forward_to list"
            log.error("setup.failed", bot=setup.bot_name, error=error, effect="bot's defaults used")
            return defaults("failed", error)
        return _forward(result)
    error = f"the set-up returned a {type(result).__name__}, not a CallConfig, Refuse or Forward"
    log.error("setup.failed", bot=setup.bot_name, error=error, effect="bot's defaults used")
    return defaults("failed", error)


async def _run(bot: Bot, setup: CallSetup, timeout: float) -> object:
    """What the set-up returned (checked by the caller)."""
    function: Callable[[CallSetup], object] | None = bot.setup
    assert function is not None
    async with asyncio.timeout(timeout):
        if inspect.iscoroutinefunction(function):
            result: object = function(setup)
        else:
            # A sync set-up may block (a database lookup): off the event loop, like sync tools.
            call = function
            result = await asyncio.to_thread(lambda: call(setup))
        if inspect.isawaitable(result):
            result = await result
    return result


def _refuse(result: Refuse, direction: str) -> SetupDecision | None:
    if result.reason not in _REFUSE_REASONS:
        return None
    response = VoiceResponse()
    if result.say is not None:
        if not isinstance(result.say, str) or not result.say or len(result.say) > _MAX_SAY_CHARS:
            return None
        response.say(result.say)
        response.hangup()
    elif direction == "outbound":
        response.hangup()  # <Reject> is for incoming calls; the one we placed is answered
    else:
        response.reject(reason=result.reason)
    return SetupDecision("refused", twiml=response, detail=result.reason)


def _forward(result: Forward) -> SetupDecision:
    response = VoiceResponse()
    response.dial(result.to, caller_id=result.caller_id, timeout=result.timeout_seconds)
    return SetupDecision("forwarded", twiml=response, detail=result.to)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().split("\n", 1)[0]
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return described[:_MAX_ERROR_CHARS]
