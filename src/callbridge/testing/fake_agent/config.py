"""Session configuration as the live service resolves, echoes and updates it."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "DEFAULT_TOOL_TIMEOUT",
    "DEFAULT_VOICE",
    "DEFAULT_VOICES",
    "LLM_MESSAGE",
    "apply_mutable",
    "bad_pcm_rate",
    "immutable_changes",
    "resolve_config",
    "resolve_format",
    "tool_problem",
    "tool_timeout_for",
]

DEFAULT_VOICES: Final[tuple[str, ...]] = (
    "alba",
    "anna",
    "charles",
    "estelle",
    "eve",
    "george",
    "giovanni",
    "iris",
    "jane",
    "jean",
    "juergen",
    "lola",
    "mary",
    "michael",
    "paul",
    "rafael",
    "reid",
    "vera",
)
DEFAULT_VOICE: Final = "alba"
DEFAULT_TOOL_TIMEOUT: Final = 120.0

LLM_MESSAGE: Final = (
    "BYO LLM config is not allowed on session.update; define it on a stored agent "
    "and connect with its agent_id"
)

_INPUT_FIELDS: Final = (
    "turn_detection",
    "keyterms",
    "transcription_mode",
    "transcription_prompt",
    "language_codes",
    "voice_focus",
    "voice_focus_threshold",
    "continuous_partials",
)


def resolve_format(fmt: Any) -> dict[str, Any]:
    encoding = fmt.get("encoding", "audio/pcm") if isinstance(fmt, Mapping) else "audio/pcm"
    return {"encoding": encoding, "sample_rate": 24000 if encoding == "audio/pcm" else 8000}


def _resolve_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    resolved: dict[str, Any] = {
        "type": "function",
        "name": "",
        "description": "",
        "parameters": {},
        "execution_mode": "interactive",
        "timeout_seconds": 120,
        "http": None,
        "response_instructions": None,
    }
    resolved.update(copy.deepcopy(dict(tool)))
    return resolved


def resolve_config(fields: Mapping[str, Any], default_voice: str) -> dict[str, Any]:
    """The full config the live server echoes: every field present, unset ones null."""
    inp = fields.get("input") or {}
    out = fields.get("output") or {}
    config: dict[str, Any] = {}
    if "agent_id" in fields:
        config["id"] = fields["agent_id"]
    config["system_prompt"] = fields.get("system_prompt", "")
    config["greeting"] = fields.get("greeting")
    config["input"] = {
        "type": inp.get("type", "audio"),
        "format": resolve_format(inp.get("format")),
        **{name: copy.deepcopy(inp.get(name)) for name in _INPUT_FIELDS},
    }
    config["output"] = {
        "type": out.get("type", "audio"),
        "voice": out.get("voice", default_voice),
        "format": resolve_format(out.get("format")),
        "volume": out.get("volume"),
    }
    config["tools"] = [_resolve_tool(t) for t in fields.get("tools") or []]
    config["llm"] = copy.deepcopy(fields.get("llm") or [])
    config["pre_connect_requests"] = copy.deepcopy(fields.get("pre_connect_requests") or [])
    if "webhook" in fields:
        config["webhook"] = copy.deepcopy(fields["webhook"])
    return config


def bad_pcm_rate(fields: Any) -> bool:
    """PCM at a rate other than 24 kHz: the live server fails internally (1011)."""
    if not isinstance(fields, Mapping):
        return False
    for side in ("input", "output"):
        section = fields.get(side)
        fmt = section.get("format") if isinstance(section, Mapping) else None
        if (
            isinstance(fmt, Mapping)
            and fmt.get("encoding") == "audio/pcm"
            and "sample_rate" in fmt
            and fmt["sample_rate"] != 24000
        ):
            return True
    return False


def tool_problem(tools: Any) -> str | None:
    """The live server checks that tool parameter ``properties`` is an object."""
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        params = tool.get("parameters") if isinstance(tool, Mapping) else None
        if (
            isinstance(params, Mapping)
            and "properties" in params
            and not isinstance(params["properties"], Mapping)
        ):
            return f"tools[{i}].parameters.properties"
    return None


def immutable_changes(config: Mapping[str, Any], fields: Mapping[str, Any]) -> list[str]:
    """The fields a later ``session.update`` may not change but does, as ``param``s."""
    changed = []
    if "greeting" in fields and fields["greeting"] != config["greeting"]:
        changed.append("greeting")
    out = fields.get("output") or {}
    current = config["output"]
    if "voice" in out and out["voice"] != current["voice"]:
        changed.append("output.voice")
    if "format" in out and resolve_format(out["format"]) != current["format"]:
        changed.append("output.format")
    if "type" in out and out["type"] != current["type"]:
        changed.append("output.type")
    return changed


def apply_mutable(config: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """Apply what a later ``session.update`` may change; the rest is left alone."""
    if "system_prompt" in fields:
        config["system_prompt"] = fields["system_prompt"]
    if "tools" in fields:
        config["tools"] = [_resolve_tool(t) for t in fields["tools"]]
    for name in ("webhook", "pre_connect_requests"):
        if name in fields:
            config[name] = copy.deepcopy(fields[name])
    out = fields.get("output") or {}
    if "volume" in out:
        config["output"]["volume"] = out["volume"]
    for name, value in (fields.get("input") or {}).items():
        config["input"][name] = resolve_format(value) if name == "format" else copy.deepcopy(value)


def tool_timeout_for(config: Mapping[str, Any], name: str) -> float:
    """How long the agent waits for the result of tool ``name``, in seconds."""
    for tool in config["tools"]:
        if tool.get("name") == name:
            value = tool.get("timeout_seconds")
            if isinstance(value, int | float):
                return float(value)
    return DEFAULT_TOOL_TIMEOUT
