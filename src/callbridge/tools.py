"""Agent tools as plain typed Python functions.

`@tool` reads a function's name, docstring and type hints and produces the flat tool
definition the Voice Agent API expects (JSON Schema via pydantic). Running a tool
validates the arguments first, runs sync functions in a thread so they cannot block the
call's event loop, and turns whatever the function returns into the JSON string that
`tool.result` carries.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, overload

import msgspec
import pydantic
from pydantic_core import to_jsonable_python

from callbridge.call import Call
from callbridge.keypad_input import Keypad

DEFAULT_TIMEOUT_SECONDS = 20.0  # phone callers hear dead air while a tool runs
_MIN_TIMEOUT, _MAX_TIMEOUT = 1.0, 300.0  # the API's accepted range


class ToolError(Exception):
    """Raise from a tool to send the caller-facing message as an error result."""


_SUPPORTED_TYPES = (
    "use str, int, float, bool, a Literal, a date or datetime, a list or dict of these, "
    "or a pydantic model, dataclass or TypedDict made of them"
)


@dataclass(frozen=True)
class Tool:
    """What `@tool` makes of a function: its definition for the agent and how to run it."""

    name: str
    description: str
    function: Callable[..., Any]
    arguments_model: type[pydantic.BaseModel]
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    execution_mode: str = "interactive"
    # The parameter annotated `Call`, if any: filled with the call, never shown to the model.
    call_parameter: str | None = None
    # Parameters the caller types on the keypad (`Annotated[str, Keypad(...)]`): not in
    # `arguments_model`, so the model never sees them; the bridge gathers them.
    keypad_arguments: Mapping[str, Keypad] = field(default_factory=dict)
    # The parameters' JSON Schema, built once when the tool is made: a type the agent cannot
    # be told about fails here, at import, instead of on every call.
    parameters_schema: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            schema = _strip_titles(self.arguments_model.model_json_schema())
        except Exception as exc:
            raise TypeError(
                f"tool {self.name}: its parameters cannot be described to the agent as "
                f"JSON Schema ({_first_line(exc)}); {_SUPPORTED_TYPES}"
            ) from None
        schema.setdefault("properties", {})
        object.__setattr__(self, "parameters_schema", schema)

    @property
    def run_timeout(self) -> float:
        """Our own deadline, a little below the API's so the agent gets our error, not its own."""
        return max(0.5, self.timeout_seconds - min(1.0, self.timeout_seconds * 0.1))

    @property
    def has_sensitive_arguments(self) -> bool:
        return any(k.sensitive for k in self.keypad_arguments.values())

    @property
    def agent_timeout_seconds(self) -> float:
        """How long the agent waits for the result: the run, and the caller's keypad entry."""
        entry = sum(k.timeout_seconds + 10.0 for k in self.keypad_arguments.values())
        return min(_MAX_TIMEOUT, self.timeout_seconds + entry)

    def definition(self) -> dict[str, Any]:
        """The flat (not OpenAI-nested) tool definition for `session.update`."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description + _keypad_note(self.keypad_arguments),
            "parameters": copy.deepcopy(self.parameters_schema),
            "execution_mode": self.execution_mode,
            "timeout_seconds": self.agent_timeout_seconds,
        }

    def parse_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Validate and coerce arguments; raises ToolError with a short, model-readable reason."""
        try:
            model = self.arguments_model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                for err in exc.errors()[:5]
            )
            raise ToolError(f"invalid arguments: {problems}") from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    async def run(
        self,
        arguments: dict[str, Any],
        call: Call | None = None,
        keypad: Mapping[str, str] | None = None,
    ) -> str:
        """Run with validated arguments (the call, if it takes one, and the keys entered
        for the keypad arguments) and return the JSON-encoded result."""
        kwargs = self.parse_arguments(arguments)
        if self.call_parameter is not None:
            if call is None:
                raise ToolError(f"{self.name} can only run during a call")
            kwargs[self.call_parameter] = call
        entered = keypad or {}
        kwargs.update({name: entered.get(name, "") for name in self.keypad_arguments})
        if inspect.iscoroutinefunction(self.function):
            result = await self.function(**kwargs)
        else:
            result = await asyncio.to_thread(self.function, **kwargs)
        return encode_result(result)


def encode_result(value: Any) -> str:
    """Tool results travel as strings; we always send JSON so the model sees structure."""
    return msgspec.json.encode(to_jsonable_python(value)).decode()


@overload
def tool(function: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a typed function (sync or async) into a `Tool`.

    The docstring's first paragraph is the description the model reads to decide when to
    call the tool; parameters need type hints, and defaults make them optional.
    """

    def build(fn: Callable[..., Any]) -> Tool:
        if not _MIN_TIMEOUT <= timeout_seconds <= _MAX_TIMEOUT:
            raise ValueError(f"tool {fn.__name__}: timeout_seconds must be between 1 and 300")
        return Tool(
            name=name or fn.__name__,
            description=description or _first_paragraph(inspect.getdoc(fn) or ""),
            function=fn,
            arguments_model=_arguments_model(fn),
            timeout_seconds=timeout_seconds,
            call_parameter=_call_parameter(fn),
            keypad_arguments=_keypad_arguments(fn),
        )

    if function is not None:
        return build(function)
    return build


def _arguments_model(fn: Callable[..., Any]) -> type[pydantic.BaseModel]:
    signature = inspect.signature(fn)
    hints = _resolved_hints(fn)
    fields: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name not in hints:
            raise TypeError(f"tool {fn.__name__}: parameter {param.name!r} needs a type hint")
        if hints[param.name] is Call:
            continue  # callbridge fills it in; the model never sees it
        if _keypad_of(hints[param.name]) is not None:
            continue  # the caller types it: the model is not told of it
        _check_describable(fn, param.name, hints[param.name])
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints[param.name], default)
    model: type[pydantic.BaseModel] = pydantic.create_model(
        f"{fn.__name__}_arguments",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )
    return model


def _call_parameter(fn: Callable[..., Any]) -> str | None:
    names = [n for n, hint in _resolved_hints(fn).items() if hint is Call and n != "return"]
    if len(names) > 1:
        raise TypeError(f"tool {fn.__name__}: only one parameter may take the Call")
    return names[0] if names else None


def _keypad_note(keypad: Mapping[str, Keypad]) -> str:
    """Tells the model that the caller types these, so that it does not ask for them."""
    if not keypad:
        return ""
    names = ", ".join(name.replace("_", " ") for name in keypad)
    return (
        f" When you call it, the caller is asked to type the {names} on the phone keypad: "
        "do not ask for it yourself, and never repeat it."
    )


def _keypad_of(hint: Any) -> Keypad | None:
    if typing.get_origin(hint) is Annotated:
        for extra in hint.__metadata__:
            if isinstance(extra, Keypad):
                return extra
    return None


def _keypad_arguments(fn: Callable[..., Any]) -> dict[str, Keypad]:
    hints = _resolved_hints(fn)
    found: dict[str, Keypad] = {}
    for name, hint in hints.items():
        spec = _keypad_of(hint)
        if spec is None or name == "return":
            continue
        if typing.get_args(hint)[0] is not str:
            raise TypeError(f"tool {fn.__name__}: keypad parameter {name!r} must be a str")
        found[name] = spec
    return found


def _check_describable(fn: Callable[..., Any], name: str, hint: Any) -> None:
    """The agent fills in arguments from a JSON Schema: each parameter's type needs one."""
    try:
        pydantic.TypeAdapter(hint).json_schema()
    except Exception:
        raise TypeError(
            f"tool {fn.__name__}: parameter {name!r} has type {_type_name(hint)}, which cannot "
            f"be described to the agent as JSON Schema; {_SUPPORTED_TYPES}"
        ) from None


def _type_name(hint: Any) -> str:
    """`list[mymodule.Thing]` -> `list[Thing]`: names as the user wrote them."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__qualname__
    parts = re.split(r"('[^']*'|\"[^\"]*\")", str(hint))  # leave Literal values alone
    return "".join(
        part if i % 2 else re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", part) for i, part in enumerate(parts)
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().split("\n", 1)[0] or type(exc).__name__


def _resolved_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # unresolvable forward references in a user's module
        raise TypeError(f"tool {fn.__name__}: cannot resolve type hints: {exc}") from exc


def _first_paragraph(doc: str) -> str:
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def _strip_titles(schema: Any) -> Any:
    """pydantic adds a `title` to every schema node; it only costs the model tokens."""
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs") and isinstance(value, dict):
            # Keys here are parameter names: a parameter may well be called "title".
            out[key] = {name: _strip_titles(sub) for name, sub in value.items()}
        else:
            out[key] = _strip_titles(value)
    return out


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    result: str
    is_error: bool
    failure: BaseException | None = None  # for the log: the exception a tool raised


async def run_tool(
    tool: Tool,
    arguments: dict[str, Any],
    call: Call | None = None,
    keypad: Mapping[str, str] | None = None,
) -> ToolOutcome:
    """Run a tool under its deadline and turn every way it can go wrong into an error result.

    The text of an error result is read by the model, so it is short and says nothing of
    our internals; the exception itself goes to the log.
    """
    try:
        async with asyncio.timeout(tool.run_timeout):
            return ToolOutcome(await tool.run(arguments, call, keypad), False)
    except ToolError as exc:
        return ToolOutcome(str(exc) or f"{tool.name} failed", True)
    except TimeoutError:
        return ToolOutcome(f"{tool.name} timed out after {tool.run_timeout:g} seconds", True)
    except Exception as exc:
        return ToolOutcome(f"{tool.name} failed", True, exc)
