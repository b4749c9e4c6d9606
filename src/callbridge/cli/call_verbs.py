"""`callbridge calls transfer ID TARGET` and `callbridge calls digits ID DIGITS`: act on a
live call through the server's API (`POST /api/calls/{id}/transfer`, `/digits`).

ID is our call id or Twilio's CallSid; the command asks the server that holds the call
(`--server`, default http://127.0.0.1:PORT) with CALLBRIDGE_API_TOKEN. A call that has
ended or is not known, or a verb the call cannot take now, exits 1 with the server's
reason; missing settings exit 2.
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
_ServerOption = Annotated[
    str | None, typer.Option(help="Server address (default http://127.0.0.1:PORT).")
]


@calls_app.command("transfer")
def transfer(
    call: Annotated[str, typer.Argument(help="Our call id or the CallSid.")],
    target: Annotated[str, typer.Argument(help="A name from the bot's transfer targets.")],
    server: _ServerOption = None,
) -> None:
    """Hand a live call to a person from the bot's transfer list (the agent tells the
    caller first)."""
    _post(call, "transfer", {"target": target}, server)
    typer.echo(f"transferring {call} to {target}")


@calls_app.command("digits")
def digits(
    call: Annotated[str, typer.Argument(help="Our call id or the CallSid.")],
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
