"""How the `callbridge` commands fail: one line on stderr, and an exit status that says
whether the configuration (2) or the operation itself (1) was at fault."""

from __future__ import annotations

from typing import NoReturn

import typer

from callbridge.config import ConfigError, Settings, load_settings

EXIT_FAILED = 1  # the operation failed: Twilio said no, no such call, database unreachable...
EXIT_CONFIG = 2  # bad configuration or usage


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.echo(f"callbridge: {message}", err=True)
    raise typer.Exit(code)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(f"configuration error: {exc}", EXIT_CONFIG)
