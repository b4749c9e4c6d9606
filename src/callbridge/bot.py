"""The bot: what the agent says and can do. Users write their own and point
`CALLBRIDGE_BOT=mybot:bot` (or `CALLBRIDGE_BOT=path/to/mybot.py:bot`) at it; this module
holds the built-in default.
"""

from __future__ import annotations

import dataclasses
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
from typing import TYPE_CHECKING, Any, Literal

from callbridge.bridge.silence import SilenceRules
from callbridge.call_setup import CallConfig, CallSetup, SetupFunction
from callbridge.keypad_input import KeypadRules
from callbridge.session_options import SessionOptions
from callbridge.session_plan import plan_session
from callbridge.tools import Tool, tool
from callbridge.verbs import VERB_TOOLS, CallVerbs, Transfer, TransferTarget, Voicemail, end_call

if TYPE_CHECKING:
    from callbridge.config import Settings

Direction = Literal["inbound", "outbound"]
DEFAULT_VOICE = "alba"


@dataclass(frozen=True)
class Bot:
    """Everything callbridge needs to configure a Voice Agent session for a call.

    `greeting` is spoken verbatim as soon as the session is ready (leave it None for the
    agent to wait for the caller); outbound calls use `outbound_prompt` and
    `outbound_greeting` when set, so the agent speaks first to the person it called.
    `transfer`, `keypad_out` and `voicemail` let the agent act on the call itself (see
    `callbridge.verbs`).

    `options` are the session's other options (`SessionOptions`: keyterms, turn
    detection, volume, a stored agent's id, ...), checked here against the API's limits.
    `setup`, a function of a `CallSetup` (sync or async), decides each call's own
    configuration (`CallConfig`), or refuses it (`Refuse`) or sends it on (`Forward`, to
    a number in `forward_to` only).

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
    transfer: Transfer | None = None
    keypad_out: bool = False
    voicemail: Voicemail | None = None
    options: SessionOptions = field(default_factory=SessionOptions)
    setup: SetupFunction | None = None
    forward_to: Sequence[str] = field(default_factory=tuple)
    keypad: KeypadRules = field(default_factory=KeypadRules)
    silence: SilenceRules | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.options, SessionOptions):
            raise TypeError("Bot(options=...) takes a SessionOptions(...)")
        self.options.check()  # SessionOptionError names each field outside the API's limits
        if self.setup is not None and not callable(self.setup):
            raise TypeError("Bot(setup=...) takes a function of a CallSetup")
        if isinstance(self.forward_to, str):
            raise TypeError("Bot(forward_to=...) takes a tuple or list of numbers")
        object.__setattr__(self, "forward_to", tuple(self.forward_to))
        self._check_tools()

    def _check_tools(self) -> None:
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
        taken = VERB_TOOLS.intersection(names)
        if taken:
            raise ValueError(f"tool names reserved for callbridge's verbs: {', '.join(taken)}")
        object.__setattr__(self, "tools", tools)  # a copy: the list passed in may change later

    def session_config(self, direction: Direction, voice: str | None = None) -> dict[str, Any]:
        """The `session` object of the first `session.update` for a call with the bot's
        defaults (see `callbridge.session_plan` for a call's own)."""
        return plan_session(self, direction, voice).first_update

    @property
    def verbs(self) -> CallVerbs:
        """What the agent may do to the call itself."""
        return CallVerbs(self.transfer, self.keypad_out, self.voicemail)


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


# Bot files imported by path, so that several bots of one file share one import of it.
_FILES: dict[Path, ModuleType] = {}


def _import_file(where: str, folder: Path) -> ModuleType:
    path = (folder / Path(where).expanduser()).resolve()
    if not path.is_file():
        raise BotLoadError(f"no such file: {path}")
    if path.suffix != ".py":
        raise BotLoadError(f"{path} is not a Python file (.py)")
    if path in _FILES:
        return _FILES[path]
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
    _FILES[path] = module
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

OUTBOUND_GREETING = "Hi, this is the callbridge demo assistant calling. Do you have a moment?"
_MAX_NAME_CHARS = 40


async def demo_setup(call: CallSetup) -> CallConfig | None:
    """Each call's own configuration: an outbound call placed with a `name` parameter
    greets that person by name; an inbound call's prompt knows the caller's number (and
    city, when Twilio sends it). async because it never blocks: it runs on the event loop,
    with no worker thread."""
    if call.direction == "outbound":
        name = " ".join(call.parameters.get("name", "").split())[:_MAX_NAME_CHARS]
        if not name:
            return None
        return CallConfig(
            greeting=f"Hi {name}, this is the callbridge demo assistant calling. "
            "Do you have a moment?",
            system_prompt=f"{OUTBOUND_PROMPT} The person you called is {name}.",
        )
    about = f" The caller is calling from {call.from_number or 'a withheld number'}"
    city = call.twilio.get("CallerCity")
    if city:
        about += f", in or near {city.title()}"
    return CallConfig(system_prompt=f"{SYSTEM_PROMPT}{about}.")


bot = Bot(
    system_prompt=SYSTEM_PROMPT,
    greeting="Hi! Thanks for calling. How can I help you today?",
    outbound_prompt=OUTBOUND_PROMPT,
    outbound_greeting=OUTBOUND_GREETING,
    voice=DEFAULT_VOICE,
    tools=(generate_random_number, end_call),
    setup=demo_setup,
)


def with_settings(chosen: Bot, settings: Settings) -> Bot:
    """The built-in bot as the settings make it: with CALLBRIDGE_TRANSFER_TO, it may hand
    callers to "a person" there. Any other bot is its own."""
    if chosen is not bot or not settings.callbridge_transfer_to:
        return chosen
    person = TransferTarget(PERSON, settings.callbridge_transfer_to)
    return dataclasses.replace(chosen, transfer=Transfer(targets=(person,)))


PERSON = "a person"
