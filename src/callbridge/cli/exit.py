"""How the `callbridge` commands fail: one line on stderr, and an exit status that says
whether the configuration (2) or the operation itself (1) was at fault."""

from __future__ import annotations

from typing import NoReturn

import typer

from callbridge.config import (
    ConfigError,
    Settings,
    UnknownVariable,
    load_settings,
    unknown_variables,
)

EXIT_FAILED = 1  # the operation failed: Twilio said no, no such call, database unreachable...
EXIT_CONFIG = 2  # bad configuration or usage


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.echo(f"callbridge: {message}", err=True)
    raise typer.Exit(code)


def warn_unknown(found: list[UnknownVariable]) -> None:
    """One line on stderr for each variable that looks like a misspelt setting."""
    for variable in found:
        typer.echo(f"callbridge: warning: {variable.message()}", err=True)


def settings_or_exit() -> Settings:
    warn_unknown(unknown_variables())
    try:
        return load_settings()
    except ConfigError as exc:
        fail(f"configuration error: {exc}", EXIT_CONFIG)
