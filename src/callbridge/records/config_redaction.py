"""What of a session configuration may be kept in a call's record.

Secrets never: a stored agent's LLM key, a webhook's secret, an HTTP tool's headers, and
any field named like a key, token or password are replaced by `HIDDEN` before the entry
is even spooled. Words only with STORE_TRANSCRIPTS: a prompt, a greeting, keyterms and a
transcription prompt may hold a caller's name, so they are treated as transcript text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

HIDDEN = "<hidden>"
_SECRET_NAME = re.compile(r"(api[_-]?key|secret|token|password|authorization)", re.IGNORECASE)
_WORDS = ("system_prompt", "greeting")
_INPUT_WORDS = ("keyterms", "transcription_prompt")


def hide_secrets(value: Any) -> Any:
    """`value` (a config, or any part of one) with every secret replaced by HIDDEN."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if _SECRET_NAME.search(name) and item is not None:
                out[name] = HIDDEN
            elif name == "headers" and item:
                out[name] = _hidden_headers(item)
            else:
                out[name] = hide_secrets(item)
        return out
    if isinstance(value, list | tuple):
        return [hide_secrets(item) for item in value]
    return value


def _hidden_headers(headers: Any) -> Any:
    if isinstance(headers, list):
        return [
            {**h, "value": HIDDEN} if isinstance(h, Mapping) and "value" in h else HIDDEN
            for h in headers
        ]
    if isinstance(headers, Mapping):
        return {str(k): HIDDEN for k in headers}
    return HIDDEN


def without_words(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` as kept with STORE_TRANSCRIPTS=false: no prompt, greeting, keyterms or
    transcription prompt (each present field set to null)."""
    out = dict(config)
    for name in _WORDS:
        if out.get(name) is not None:
            out[name] = None
    inputs = out.get("input")
    if isinstance(inputs, Mapping):
        inputs = dict(inputs)
        for name in _INPUT_WORDS:
            if inputs.get(name) is not None:
                inputs[name] = None
        out["input"] = inputs
    return out
