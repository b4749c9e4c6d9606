"""Keypad input: how a bot gathers the keys a caller presses.

`KeypadRules` are a bot's rules for keys pressed at any time (an entry, handed to the
agent as a turn). `Keypad` marks a tool parameter the caller types rather than the model
fills in: `Annotated[str, Keypad(prompt=..., ...)]`. No I/O here; `bridge/keypad.py`
applies both.
"""

from __future__ import annotations

from dataclasses import dataclass

KEYS = frozenset("0123456789*#ABCD")


@dataclass(frozen=True)
class KeypadRules:
    """Keys pressed outside a tool's keypad argument, gathered into entries.

    An entry ends with `terminator`, after `max_digits`, or when no key comes for
    `inter_digit_seconds`; `clear_key` starts it over. `enabled=False` ignores the keypad.
    """

    inter_digit_seconds: float = 3.0
    terminator: str = "#"
    clear_key: str = "*"
    max_digits: int = 32
    enabled: bool = True

    def __post_init__(self) -> None:
        if not 0.5 <= self.inter_digit_seconds <= 60:
            raise ValueError("KeypadRules: inter_digit_seconds must be between 0.5 and 60")
        if not 1 <= self.max_digits <= 64:
            raise ValueError("KeypadRules: max_digits must be between 1 and 64")
        for name in ("terminator", "clear_key"):
            key = getattr(self, name)
            if key and key not in KEYS:
                raise ValueError(f"KeypadRules: {name} must be a keypad key, got {key!r}")


@dataclass(frozen=True)
class Keypad:
    """A tool parameter the caller enters on the keypad, never the model.

    The parameter is left out of the schema the model sees. When the model calls the
    tool, the agent asks the caller with `prompt`; callbridge gathers between
    `min_digits` and `max_digits` keys, ended by `terminator` (or `max_digits`, or
    `timeout_seconds` without a key), and runs the tool with them as a string.
    `sensitive` digits reach the tool only: never the model, the logs, the records or
    the metrics (the agent learns the tool's result alone).
    """

    prompt: str
    min_digits: int = 1
    max_digits: int = 32
    terminator: str = "#"
    timeout_seconds: float = 10.0
    sensitive: bool = False

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("Keypad: prompt must say what the caller should enter")
        if not 1 <= self.min_digits <= self.max_digits <= 64:
            raise ValueError("Keypad: need 1 <= min_digits <= max_digits <= 64")
        if self.terminator and self.terminator not in KEYS:
            raise ValueError(f"Keypad: terminator must be a keypad key, got {self.terminator!r}")
        if not 1 <= self.timeout_seconds <= 300:
            raise ValueError("Keypad: timeout_seconds must be between 1 and 300")


class KeypadValues(dict[str, str]):
    """The keys entered for a tool's keypad arguments; its repr hides them, so that no
    traceback or debug print of an action carries sensitive digits."""

    def __repr__(self) -> str:
        return f"KeypadValues({sorted(self)})"
