"""`callbridge calls hangup|say|transfer|digits ID ...`: the call verbs from the shell,
through the running server's API (`POST /api/calls/{id}/<verb>`, `server/verbs_api.py`).

ID is our call id or Twilio's CallSid. The server is the one at `--server` (default: this
machine, on PORT), authorised with CALLBRIDGE_API_TOKEN; with several instances any of them
passes the verb to the one holding the call. A call that has ended or is not known, or a
verb the call cannot take now, exits 1 with the server's reason; a usage or configuration
error (a missing or wrong token) exits 2.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated

import typer

from callbridge.cli.exit import EXIT_CONFIG, EXIT_FAILED, fail, settings_or_exit
from callbridge.cli.records import calls_app

_TIMEOUT_SECONDS = 10.0
_CallArgument = Annotated[str, typer.Argument(help="Our call id or the CallSid.")]
_ServerOption = Annotated[
    str | None,
    typer.Option("--server", help="Server address (default http://127.0.0.1:PORT)."),
]


@calls_app.command("hangup")
def hangup(
    call: _CallArgument,
    goodbye: Annotated[
        str | None,
        typer.Option(help="Have the agent say this first; the call ends once it has played."),
    ] = None,
    server: _ServerOption = None,
) -> None:
    """Hang up a live call (at once, or after a goodbye)."""
    _post(call, "hangup", {} if goodbye is None else {"goodbye": goodbye}, server)
    typer.echo(f"hanging up {call}" + (" after the goodbye" if goodbye else ""))


@calls_app.command("say")
def say(
    call: _CallArgument,
    text: Annotated[str, typer.Argument(help="What the agent says now.")],
    server: _ServerOption = None,
) -> None:
    """Make the agent of a live call say something now."""
    _post(call, "say", {"text": text}, server)
    typer.echo(f"the agent of {call} says it now")


@calls_app.command("transfer")
def transfer(
    call: _CallArgument,
    target: Annotated[str, typer.Argument(help="A name from the bot's transfer targets.")],
    server: _ServerOption = None,
) -> None:
    """Hand a live call to a person from the bot's transfer list (the agent tells the
    caller first)."""
    _post(call, "transfer", {"target": target}, server)
    typer.echo(f"transferring {call} to {target}")


@calls_app.command("digits")
def digits(
    call: _CallArgument,
    keys: Annotated[str, typer.Argument(metavar="DIGITS", help="0-9, A-D, * and #; w pauses.")],
    server: _ServerOption = None,
) -> None:
    """Press keys on a live call's keypad (for phone menus), then carry on."""
    _post(call, "digits", {"digits": keys}, server)
    typer.echo(f"sending {len(keys)} keys on {call}")


def _post(call: str, verb: str, body: dict[str, str], server: str | None) -> None:
    settings = settings_or_exit()
    token = settings.callbridge_api_token
    if token is None:
        fail("configuration error: CALLBRIDGE_API_TOKEN must be set for this", EXIT_CONFIG)
    base = (server or f"http://127.0.0.1:{settings.port}").rstrip("/")
    if not base.startswith(("http://", "https://")):
        fail(f"--server must be an http:// or https:// URL, got {base!r}", EXIT_CONFIG)
    url = f"{base}/api/calls/{urllib.parse.quote(call, safe='')}/{verb}"
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {token.get_secret_value()}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_SECONDS):
            return
    except urllib.error.HTTPError as exc:
        fail(_refusal(exc), EXIT_CONFIG if exc.code == 401 else EXIT_FAILED)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        fail(f"cannot reach the server at {base}: {reason}")


def _refusal(exc: urllib.error.HTTPError) -> str:
    try:
        message = str(json.loads(exc.read()).get("message", ""))
    except (ValueError, AttributeError, OSError):
        message = ""
    return f"the server refused ({exc.code}): {message or exc.reason}"
