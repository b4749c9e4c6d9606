"""The `callbridge` command: serve, call, simulate, fake-agent. A thin shell over the library."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from callbridge.cli.exit import EXIT_CONFIG, EXIT_FAILED, fail, settings_or_exit, warn_unknown
from callbridge.config import (
    ConfigError,
    Settings,
    load_settings,
    security_problem,
    unknown_variables,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Put an AssemblyAI voice agent on a Twilio phone number.",
)


def _register_record_commands() -> None:
    from callbridge.cli import verbs  # noqa: F401  (`calls hangup|say|transfer|digits`)
    from callbridge.cli.records import calls_app, db_app

    app.add_typer(calls_app, name="calls")
    app.add_typer(db_app, name="db")


_register_record_commands()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on (HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (PORT).")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=256,
            help="Server processes sharing the port, restarted if they die (more than one "
            "needs REDIS_URL).",
        ),
    ] = 1,
) -> None:
    """Run the bridge server."""
    from callbridge import logs
    from callbridge.app import build_app
    from callbridge.bot import BotLoadError
    from callbridge.bot_routing import load_bots
    from callbridge.records.spool import SpoolError
    from callbridge.server import lifecycle

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    # Logged once the log is set up; printed first if the start fails (a misspelt name is
    # a likely reason why).
    unknown = unknown_variables()

    def refuse(problem: str) -> NoReturn:
        warn_unknown(unknown)
        fail(f"configuration error: {problem}", EXIT_CONFIG)

    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        refuse(str(exc))
    problem = security_problem(settings)
    if problem is not None:
        refuse(problem)
    try:
        bots = load_bots(settings.bot_specs)  # CALLBRIDGE_BOT's is `default`
    except BotLoadError as exc:
        refuse(str(exc))
    if workers > 1:
        if settings.redis_url is None:
            refuse(
                f"--workers {workers}: several workers share live calls through Redis; "
                "set REDIS_URL (or run one worker)"
            )
        if settings.callbridge_instance_url is not None:
            refuse(
                f"--workers {workers}: CALLBRIDGE_INSTANCE_URL names one process, and "
                "workers share one port; run one worker per instance URL"
            )
        _supervise(settings, workers, host, port)
        return

    logs.configure(settings.log_level, settings.log_format)
    log = logs.EventLogger("server")
    for variable in unknown:
        log.warning(
            "config.unknown_variable",
            variable=variable.name,
            source=variable.source,
            hint=variable.hint,
        )
    if settings.callbridge_insecure_skip_signatures:
        log.error(
            "config.INSECURE_signatures_not_checked",
            effect="anyone who finds the URLs can open media streams and spend agent minutes",
            fix="set TWILIO_AUTH_TOKEN and unset CALLBRIDGE_INSECURE_SKIP_SIGNATURES",
        )
    if settings.redis_url is not None and settings.callbridge_instance_url is None:
        log.warning(
            "config.no_instance_url",
            effect="callers coming back after a transfer or keypad tones may reach another "
            "instance, which cannot take them",
            fix="set CALLBRIDGE_INSTANCE_URL to a URL the load balancer routes to this "
            "instance alone (docs/scaling.md)",
        )
    if settings.api_key is None:
        log.error(
            "config.no_api_key",
            effect="not ready: callers hear an apology until ASSEMBLYAI_API_KEY is set",
        )
    log.info(
        "server.starting",
        host=settings.host,
        port=settings.port,
        public_url=settings.public_url,
        instance_url=settings.callbridge_instance_url,
        agent_url=settings.assemblyai_agent_url,
        bot=settings.callbridge_bot,
        bots=sorted(bots),
        numbers=len(settings.bot_numbers),
    )
    try:
        application = build_app(settings, bots["default"], bots)
    except ValueError as exc:  # an unusable DATABASE_URL, say
        fail(f"configuration error: {exc}", EXIT_CONFIG)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(lifecycle.serve(application, settings, log))
    except SpoolError as exc:
        fail(f"configuration error: {exc}", EXIT_CONFIG)
    except OSError as exc:
        fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")


def _supervise(settings: Settings, workers: int, host: str | None, port: int | None) -> None:
    from callbridge import logs
    from callbridge.cli.workers import Supervisor, worker_command

    logs.configure(settings.log_level, settings.log_format)
    supervisor = Supervisor(settings, workers, worker_command(host, port))
    raise typer.Exit(asyncio.run(supervisor.run()))


@app.command()
def call(
    to: Annotated[
        str | None, typer.Argument(help="Number to call (default TARGET_PHONE_NUMBER).")
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Your Twilio number (default TWILIO_PHONE_NUMBER)."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", metavar="NAME=VALUE", help=_PARAM_HELP),
    ] = None,
    bot: Annotated[
        str | None, typer.Option("--bot", help="The bot to answer with (default: the server's).")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help='Print {"call_id": ..., "call_sid": ...}.')
    ] = False,
    voicemail: Annotated[
        bool,
        typer.Option(
            "--voicemail",
            help="Listen for an answering machine; the agent leaves the bot's voicemail "
            "message on one (the default when the bot's Voicemail has detect=True).",
        ),
    ] = False,
) -> None:
    """Place an outbound call: the agent speaks first with the bot's outbound prompt.

    Prints the Call SID, and our call id too with --json.

    Needs only the settings for placing calls: it can run on another machine than the server.
    """
    from callbridge.server.call_registry import new_call_id
    from callbridge.twilio.rest import OutboundCallError, place_call

    parameters = _parameters(param)
    settings = settings_or_exit()
    voicemail = voicemail or bot_detects_voicemail(settings, bot)
    try:
        placed = place_call(
            settings,
            call_id=new_call_id(),
            to=to,
            from_=from_,
            parameters=parameters,
            bot=bot,
            voicemail=voicemail,
        )
    except OutboundCallError as exc:
        if exc.field == "bot":
            fail(f"--bot: {exc}", EXIT_CONFIG)
        if exc.field is not None and exc.field.startswith("parameters"):
            fail(f"--param: {exc}", EXIT_CONFIG)
        fail(str(exc), exc.exit_code)
    if json_output:
        typer.echo(json.dumps({"call_id": placed.call_id, "call_sid": placed.call_sid}))
    else:
        typer.echo(placed.call_sid)


_PARAM_HELP = (
    "A custom parameter for the bot's set-up; repeat for more. Signed into the URL Twilio "
    "fetches, so the server can trust it (limits: docs/placing-calls.md)."
)


def _parameters(given: list[str] | None) -> dict[str, str]:
    """`--param name=value` options as a dict; exit status 2 for a malformed or repeated one
    (the limits are checked where the parameters are signed)."""
    from callbridge.twilio.call_parameters import ParameterError, parse_assignment

    parameters: dict[str, str] = {}
    for text in given or ():
        try:
            name, value = parse_assignment(text)
        except ParameterError as exc:
            fail(f"--param {exc}", EXIT_CONFIG)
        if name in parameters:
            fail(f"--param {name} given twice", EXIT_CONFIG)
        parameters[name] = value
    return parameters


def bot_detects_voicemail(settings: Settings, name: str | None) -> bool:
    """Whether the bot that will answer (`--bot`, else CALLBRIDGE_BOT's) asks for
    answering-machine detection on its calls."""
    from callbridge.bot import BotLoadError
    from callbridge.bot_routing import load_bots

    spec = settings.bot_specs.get(name or "default")
    if spec is None:
        return False  # not a bot this machine knows; the server answers with its own
    try:
        bot = load_bots({name or "default": spec})[name or "default"]
    except BotLoadError as exc:
        fail(f"configuration error: {exc}", EXIT_CONFIG)
    return bot.voicemail is not None and bot.voicemail.detect


@app.command()
def simulate(
    wav: Annotated[
        Path | None,
        typer.Option("--wav", exists=True, dir_okay=False, help="Caller audio (any PCM WAV)."),
    ] = None,
    beep: Annotated[
        float | None,
        typer.Option(
            help="Instead of a WAV, the caller beeps for this many seconds: speech to the "
            "fake agent.",
            min=0.1,
            show_default=False,
        ),
    ] = None,
    record: Annotated[
        Path | None,
        typer.Option(
            "--record",
            help="Save the call as heard: a stereo WAV, the caller on the left, what Twilio "
            "played on the right.",
        ),
    ] = None,
    server: Annotated[
        str | None, typer.Option(help="Server address (default http://127.0.0.1:PORT).")
    ] = None,
    speak_after: Annotated[
        float | None,
        typer.Option(
            help="Start talking this many seconds after the call connects, even over the "
            "greeting (a barge-in). Default: once the greeting has played.",
            min=0.0,
            show_default=False,
        ),
    ] = None,
    seconds: Annotated[
        float | None,
        typer.Option(
            help="Hang up this long after placing the call (default: 10 s after the caller "
            "has finished speaking)."
        ),
    ] = None,
    outbound: Annotated[
        bool, typer.Option(help="Simulate an answered outbound call instead.")
    ] = False,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            metavar="NAME=VALUE",
            help="With --outbound: a custom parameter, as `callbridge call --param` gives it.",
        ),
    ] = None,
    bot: Annotated[
        str | None, typer.Option("--bot", help="With --outbound: the bot to answer with.")
    ] = None,
    keys: Annotated[
        str,
        typer.Option(help="Then press these keys on the keypad, e.g. 123# (0-9 * # A-D)."),
    ] = "",
    blip_after: Annotated[
        float | None,
        typer.Option(
            help="Break the media stream this many seconds after it starts, as a network "
            "blip would (no stop): the call should come back on a new stream.",
            min=0.0,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run one call against a running server, as Twilio would, without a phone."""
    from callbridge.cli.simulate import SimulationError, caller_audio, run_simulation

    if wav is not None and beep is not None:
        fail("give --wav or --beep, not both", EXIT_CONFIG)
    if (param or bot is not None) and not outbound:
        fail("--param and --bot need --outbound: only a placed call carries them", EXIT_CONFIG)
    parameters = _parameters(param)
    settings = settings_or_exit()
    try:
        summary = asyncio.run(
            run_simulation(
                settings,
                server_url=server or f"http://127.0.0.1:{settings.port}",
                audio=caller_audio(wav, beep),
                record=record,
                seconds=seconds,
                outbound=outbound,
                speak_after=speak_after,
                parameters=parameters,
                bot=bot,
                keys=keys,
                blip_after=blip_after,
            )
        )
    except SimulationError as exc:
        fail(str(exc))
    typer.echo(summary)


@app.command(
    "fake-agent",
    epilog="The fake speaks in beeps, takes the caller's turns from the loudness of their "
    "audio, and prints a transcript of each call: what it says, what the caller said (from "
    "the script) and the tool calls.",
)
def fake_agent(
    command: Annotated[
        list[str] | None,
        typer.Argument(
            help="A command to run against the fake, after `--` (e.g. `-- make serve`); "
            "it gets ASSEMBLYAI_AGENT_URL and ASSEMBLYAI_API_KEY, and the fake stops when "
            "it exits.",
            show_default=False,
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 0,
    script: Annotated[
        Path | None,
        typer.Option(
            help="JSON list of turns: what the caller said and how the agent answers "
            "(default: the built-in bot's demo, with a generate_random_number call).",
            dir_okay=False,
        ),
    ] = None,
    api_key: Annotated[str, typer.Option(help="The key the fake accepts.")] = "fake-agent-key",
) -> None:
    """Run a fake Voice Agent API on loopback: calls with no AssemblyAI account."""
    # It checks what it receives against the API's schema with these, which come with
    # callbridge's `testing` extra only (the server and `simulate` do without them).
    for module in ("jsonschema", "yaml"):
        try:
            importlib.import_module(module)
        except ImportError:
            fail(
                f"the fake agent needs callbridge's testing extra (no module {module!r}): "
                "pip install 'callbridge[testing]' (in a checkout: make install)",
                EXIT_CONFIG,
            )
    from callbridge.cli.fake_agent import (
        DEMO_SCRIPT,
        FakeAgentCommandError,
        load_script,
        run_fake_agent,
    )

    def echo(line: str) -> None:
        typer.echo(line)
        sys.stdout.flush()

    try:
        turns = load_script(script) if script is not None else DEMO_SCRIPT
        status = asyncio.run(
            run_fake_agent(
                port=port, api_key=api_key, script=turns, command=command or (), echo=echo
            )
        )
    except FakeAgentCommandError as exc:
        fail(str(exc), EXIT_CONFIG if exc.usage else EXIT_FAILED)
    raise typer.Exit(status)


@app.command("config")
def show_config(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the effective configuration, secrets masked."""
    import json

    settings = settings_or_exit()
    effective = settings.masked()
    if as_json:
        typer.echo(json.dumps(effective, indent=2))
        return
    width = max(len(name) for name in effective)
    for name, value in effective.items():
        shown = "" if value is None else value
        typer.echo(f"{name.ljust(width)}  {shown}")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # not available on this platform: the standard loop works too
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
