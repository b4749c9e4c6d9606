"""Validate Voice Agent API messages against the bundled AsyncAPI document.

``voice-agent-api.asyncapi.yaml`` (shipped next to this module) is a reconstruction of
AssemblyAI's spec; see its header. Each message payload is a JSON Schema (Draft 2020-12)
that refers to shared definitions with ``$ref: '#/components/...'``, so the whole document
is registered as one ``referencing`` resource and every payload is validated through a
``$ref`` into it. The message ``type`` picks the schema; the document's operations say
which types the client sends (``action: send``) and which the server sends.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from typing import Any, Literal

try:
    import yaml
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012
except ImportError as exc:  # the `testing` extra is not installed
    raise ImportError(
        f"callbridge's fake Voice Agent API needs the testing extra ({exc}): "
        "pip install 'callbridge[testing]'"
    ) from exc

SPEC_FILE = "voice-agent-api.asyncapi.yaml"
_BASE_URI = "urn:callbridge:voice-agent-api"

Direction = Literal["client", "server"]


def load_document() -> dict[str, Any]:
    """The AsyncAPI document shipped in ``callbridge.testing``, parsed."""
    text = resources.files("callbridge.testing").joinpath(SPEC_FILE).read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ValueError(f"{SPEC_FILE} is not a YAML mapping")
    return document


def format_path(path: Any) -> str:
    """A JSON path as ``session.tools[0].name`` (ints become indices)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class AgentSchema:
    """Validators for every client and server message type in the AsyncAPI document."""

    def __init__(self, document: Mapping[str, Any] | None = None) -> None:
        doc = dict(document) if document is not None else load_document()
        self._registry: Registry[Any] = Registry().with_resource(
            _BASE_URI, DRAFT202012.create_resource(doc)
        )
        self._pointers = _message_pointers(doc)
        self._validators: dict[tuple[Direction, str], Draft202012Validator] = {}

    @property
    def client_types(self) -> frozenset[str]:
        return frozenset(self._pointers["client"])

    @property
    def server_types(self) -> frozenset[str]:
        return frozenset(self._pointers["server"])

    def validate_client(self, message: Any) -> list[str]:
        """Problems with a client -> server message; empty when it is valid."""
        return [_describe(e) for e in self.errors("client", message)]

    def validate_server(self, message: Any) -> list[str]:
        """Problems with a server -> client message; empty when it is valid."""
        return [_describe(e) for e in self.errors("server", message)]

    def errors(self, direction: Direction, message: Any) -> list[ValidationError]:
        """The raw ``ValidationError``s (with paths), sorted by path."""
        if not isinstance(message, Mapping):
            return [ValidationError("message is not a JSON object")]
        type_ = message.get("type")
        if not isinstance(type_, str):
            return [ValidationError("'type' is missing or not a string", path=["type"])]
        validator = self._validator(direction, type_)
        if validator is None:
            return [ValidationError(f"unknown {direction} message type {type_!r}", path=["type"])]
        return sorted(
            validator.iter_errors(message),
            key=lambda e: ([str(p) for p in e.absolute_path], e.message),
        )

    def _validator(self, direction: Direction, type_: str) -> Draft202012Validator | None:
        key = (direction, type_)
        validator = self._validators.get(key)
        if validator is None:
            pointer = self._pointers[direction].get(type_)
            if pointer is None:
                return None
            validator = Draft202012Validator({"$ref": _BASE_URI + pointer}, registry=self._registry)
            self._validators[key] = validator
        return validator


@functools.cache
def default_schema() -> AgentSchema:
    """One shared instance: loading the YAML and compiling validators is not free."""
    return AgentSchema()


def _describe(error: ValidationError) -> str:
    return f"{format_path(error.absolute_path) or '<message>'}: {error.message}"


def _message_pointers(doc: Mapping[str, Any]) -> dict[Direction, dict[str, str]]:
    """type -> JSON pointer of its payload schema, per direction."""
    pointers: dict[Direction, dict[str, str]] = {"client": {}, "server": {}}
    for operation in (doc.get("operations") or {}).values():
        direction: Direction = "client" if operation.get("action") == "send" else "server"
        for ref in operation.get("messages") or []:
            pointer, message = _follow(doc, ref)
            name = message.get("name")
            if isinstance(name, str) and "payload" in message:
                pointers[direction][name] = pointer + "/payload"
    return pointers


def _follow(doc: Mapping[str, Any], node: Any) -> tuple[str, Mapping[str, Any]]:
    """Chase ``$ref``s (channel message -> component message) to the final node."""
    pointer = ""
    for _ in range(16):  # a cycle in the document must not hang us
        if not (isinstance(node, Mapping) and isinstance(node.get("$ref"), str)):
            break
        pointer = node["$ref"]
        node = _resolve(doc, pointer)
    if not isinstance(node, Mapping) or not pointer:
        raise ValueError(f"cannot resolve message reference {node!r}")
    return pointer, node


def _resolve(doc: Mapping[str, Any], pointer: str) -> Any:
    if not pointer.startswith("#/"):
        raise ValueError(f"only local references are supported: {pointer!r}")
    node: Any = doc
    for raw in pointer[2:].split("/"):
        node = node[raw.replace("~1", "/").replace("~0", "~")]
    return node
