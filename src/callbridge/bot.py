"""The bot: what the agent says and can do. Users write their own and point
`CALLBRIDGE_BOT=mybot:bot` (or `CALLBRIDGE_BOT=path/to/mybot.py:bot`) at it; this module
holds the built-in default.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import random
import sys
import sysconfig
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from callbridge.bridge.silence import SilenceRules
from callbridge.keypad_input import KeypadRules
from callbridge.tools import Tool, tool
from callbridge.verbs import end_call

Direction = Literal["inbound", "outbound"]
DEFAULT_VOICE = "alba"


@dataclass(frozen=True)
class Bot:
    """Everything callbridge needs to configure a Voice Agent session for a call.

    `greeting` is spoken verbatim as soon as the session is ready (leave it None for the
    agent to wait for the caller); outbound calls use `outbound_prompt` and
    `outbound_greeting` when set, so the agent speaks first to the person it called.

    `keypad` gathers the keys a caller presses into entries for the agent; `silence`
    says when the agent checks in on a caller who says nothing, and how often before it
    hangs up (None: the server's CALLBRIDGE_SILENCE_* settings). The agent can hang up
    when `end_call` (from `callbridge.verbs`) is among the tools.
    """

    system_prompt: str
    greeting: str | None = None
    outbound_prompt: str | None = None
    outbound_greeting: str | None = None
    voice: str = DEFAULT_VOICE
    tools: Sequence[Tool] = field(default_factory=tuple)
    keypad: KeypadRules = field(default_factory=KeypadRules)
    silence: SilenceRules | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tools, Tool) or not isinstance(self.tools, Iterable):
            raise TypeError("Bot(tools=...) takes a tuple or list of tools, such as tools=(a, b)")
        tools = tuple(self.tools)
        for item in tools:
            if not isinstance(item, Tool):
                raise TypeError(f"Bot(tools=...): {_not_a_tool(item)}")
        names = [t.name for t in tools]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"duplicate tool names: {', '.join(sorted(duplicates))}")
        object.__setattr__(self, "tools", tools)  # a copy: the list passed in may change later

    def session_config(self, direction: Direction, voice: str | None = None) -> dict[str, Any]:
        """The `session` object of the first `session.update` for a call.

        μ-law both ways: it is Twilio's native format, so audio crosses untouched.
        """
        outbound = direction == "outbound"
        prompt = (self.outbound_prompt if outbound else None) or self.system_prompt
        greeting = (self.outbound_greeting if outbound else None) or self.greeting
        session: dict[str, Any] = {
            "system_prompt": prompt,
            "input": {"format": {"encoding": "audio/pcmu"}},
            "output": {"voice": voice or self.voice, "format": {"encoding": "audio/pcmu"}},
            "tools": [t.definition() for t in self.tools],
        }
        if greeting:  # the API rejects greeting: null; omitting it means "listen first"
            session["greeting"] = greeting
        return session


def _not_a_tool(item: object) -> str:
    if inspect.isfunction(item) or inspect.ismethod(item):
        return f"{item.__name__} is a plain function; put @tool on the line above its def"
    return f"expected @tool functions, got {type(item).__name__} {item!r:.60}"


class BotLoadError(Exception):
    pass


def load_bot(spec: str, folder: Path | None = None) -> Bot:
    """The Bot that `CALLBRIDGE_BOT` names, imported and checked.

    `spec` is `module:attribute`, the module found in `folder` (the current folder by
    default) or among the installed packages, or `path/to/file.py:attribute`, the path
    relative to `folder`. Whatever goes wrong is a BotLoadError saying where and what.
    """
    where, sep, attribute = spec.rpartition(":")
    if not sep or not where or not all(part.isidentifier() for part in attribute.split(".")):
        raise BotLoadError(
            f"expected 'module:attribute' or 'path/to/file.py:attribute', got {spec!r}"
        )
    folder = Path.cwd() if folder is None else folder
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _import_file(where, folder)
    else:
        module = _import(where, attribute, folder)
    value: object = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise BotLoadError(
                f"{_module_shown(module)} has no attribute {attribute!r}{_bots_in(module)}"
            ) from None
    if value is Bot:
        raise BotLoadError(f"{spec} is the Bot class itself; make one: bot = Bot(...)")
    if not isinstance(value, Bot):
        raise BotLoadError(f"{spec} is a {type(value).__name__}, not a callbridge.Bot")
    return value


def _import(name: str, attribute: str, folder: Path) -> ModuleType:
    # As `python -m` would: a module in the folder the command runs in can be imported.
    _put_on_path(folder)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            file = name.replace(".", "/") + ".py"
            raise BotLoadError(
                f"no module named {name!r} in {folder} or the installed packages (run from "
                f"the folder that holds {file}, or give its path: path/to/{file}:{attribute})"
            ) from None
        raise BotLoadError(f"cannot import {name!r}: {_failure(exc)}") from exc
    except Exception as exc:
        raise BotLoadError(f"cannot import {name!r}: {_failure(exc)}") from exc


def _import_file(where: str, folder: Path) -> ModuleType:
    path = (folder / Path(where).expanduser()).resolve()
    if not path.is_file():
        raise BotLoadError(f"no such file: {path}")
    if path.suffix != ".py":
        raise BotLoadError(f"{path} is not a Python file (.py)")
    # As `python path/to/file.py` would: the file can import the modules beside it.
    _put_on_path(path.parent)
    name = path.stem
    if not name.isidentifier() or name in sys.modules:
        name = f"_callbridge_bot_{abs(hash(path)):x}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise BotLoadError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses, pickle and the like look modules up here
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise BotLoadError(f"cannot import {_shown(str(path))}: {_failure(exc)}") from exc
    return module


def _put_on_path(folder: Path) -> None:
    entry = str(folder.resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)


def _failure(exc: BaseException) -> str:
    """One line: where in the user's code the import failed, and the exception."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{_shown(exc.filename)}, line {exc.lineno}: {type(exc).__name__}: {exc.msg}"
    text = str(exc).strip().split("\n", 1)[0]
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    frame = _user_frame(exc)
    return f"{_shown(frame.filename)}, line {frame.lineno}: {described}" if frame else described


_LIBRARY_PATHS = ("stdlib", "platstdlib", "purelib", "platlib")  # not the user's own code


def _user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of the user's own code, else the innermost real one."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    places = [str(Path(__file__).parent), *(sysconfig.get_path(p) for p in _LIBRARY_PATHS)]
    skipped = tuple(os.path.join(place, "") for place in places)  # with the trailing sep
    for frame in reversed(frames):
        if not frame.filename.startswith(skipped):
            return frame
    return frames[-1] if frames else None


def _shown(filename: str) -> str:
    """A path relative to the current folder when it is inside it."""
    try:
        return str(Path(filename).resolve().relative_to(Path.cwd()))
    except ValueError:
        return filename


def _module_shown(module: ModuleType) -> str:
    file = getattr(module, "__file__", None)
    name = module.__name__ if not module.__name__.startswith("_callbridge_bot_") else None
    if name and file:
        return f"module {name!r} ({_shown(file)})"
    return f"module {name!r}" if name else _shown(str(file))


def _bots_in(module: ModuleType) -> str:
    bots = sorted(name for name, value in vars(module).items() if isinstance(value, Bot))
    return f"; its Bots: {', '.join(bots)}" if bots else "; it defines no Bot"


# --- the built-in bot ---------------------------------------------------------------


# async, though it awaits nothing: it never blocks, so it may run on the event loop. A sync
# tool runs on a worker thread instead (safe for blocking code, but the hop costs more CPU
# than this whole tool: see "Your own bot" in the README).
@tool
async def generate_random_number(minimum: int = 1, maximum: int = 100) -> int:
    """Generate a random whole number between minimum and maximum, inclusive.

    Use it whenever the caller asks for a random number, a dice roll or a pick.
    """
    low, high = sorted((minimum, maximum))
    return random.randint(low, high)


SYSTEM_PROMPT = (
    "You are a friendly, concise assistant answering a phone call. Keep answers to one or "
    "two short sentences, speak naturally, and never use lists, markdown or emoji: "
    "everything you say is read aloud. If the caller asks for a random number, use the "
    "generate_random_number tool. When the caller says goodbye or has nothing more to ask, "
    "use the end_call tool, then say a short goodbye."
)

OUTBOUND_PROMPT = (
    "You are a friendly assistant who has just placed a phone call on behalf of the "
    "callbridge demo. Introduce yourself briefly, explain that this is a test call, and "
    "ask whether the person would like a random number. Keep every turn short; "
    "everything you say is read aloud."
)

bot = Bot(
    system_prompt=SYSTEM_PROMPT,
    greeting="Hi! Thanks for calling. How can I help you today?",
    outbound_prompt=OUTBOUND_PROMPT,
    outbound_greeting="Hi, this is the callbridge demo assistant calling. Do you have a moment?",
    voice=DEFAULT_VOICE,
    tools=(generate_random_number, end_call),
)
