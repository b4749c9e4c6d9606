"""`callbridge calls hangup ID` and `callbridge calls say ID TEXT`: the call verbs from the
shell, through the running server's API (`server/verbs_api.py`).

ID is our call id or Twilio's CallSid. The server is the one at `--server` (default: this
machine, on PORT), authorised with CALLBRIDGE_API_TOKEN. A call that has ended or is not
on that server exits 1 with the server's reason; a usage or configuration error exits 2.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import aiohttp
import msgspec
import typer

from callbridge.cli.exit import EXIT_CONFIG, EXIT_FAILED, fail, settings_or_exit
from callbridge.cli.records import calls_app

_TIMEOUT = aiohttp.ClientTimeout(total=10)
ServerOption = Annotated[
    str | None,
    typer.Option("--server", help="The server holding the call (default: http://127.0.0.1:PORT)."),
]


@calls_app.command("hangup")
def hangup(
    call: Annotated[str, typer.Argument(help="The call id or Twilio CallSid.")],
    goodbye: Annotated[
        str | None,
        typer.Option(help="Have the agent say this first; the call ends once it has played."),
    ] = None,
    server: ServerOption = None,
) -> None:
    """Hang up a live call (at once, or after a goodbye)."""
    body: dict[str, Any] = {} if goodbye is None else {"goodbye": goodbye}
    _post(server, call, "hangup", body)
    typer.echo(f"hanging up {call}" + (" after the goodbye" if goodbye else ""))


@calls_app.command("say")
def say(
    call: Annotated[str, typer.Argument(help="The call id or Twilio CallSid.")],
    text: Annotated[str, typer.Argument(help="What the agent says now.")],
    server: ServerOption = None,
) -> None:
    """Make the agent of a live call say something now."""
    _post(server, call, "say", {"text": text})
    typer.echo(f"the agent of {call} says it now")


def _post(server: str | None, call: str, verb: str, body: dict[str, Any]) -> None:
    settings = settings_or_exit()
    token = settings.callbridge_api_token
    if token is None:
        fail("CALLBRIDGE_API_TOKEN is not set: the verbs go through the server's API", EXIT_CONFIG)
    base = (server or f"http://127.0.0.1:{settings.port}").rstrip("/")
    if not base.startswith(("http://", "https://")):
        fail(f"--server must be an http:// or https:// URL, got {base!r}", EXIT_CONFIG)
    url = f"{base}/api/calls/{call}/{verb}"
    try:
        status, answer = asyncio.run(_send(url, token.get_secret_value(), body))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        fail(f"cannot reach the server at {base}: {exc or type(exc).__name__}")
    if status != 202:
        message = answer.get("message") if isinstance(answer, dict) else None
        fail(f"{verb} {call}: {message or f'HTTP {status}'}", EXIT_FAILED)


async def _send(url: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession(timeout=_TIMEOUT) as session,
        session.post(url, data=msgspec.json.encode(body), headers=headers) as response,
    ):
        raw = await response.read()
        try:
            return response.status, msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return response.status, None
