"""AssemblyAI Voice Agent API wire format: typed server events, encoders. No I/O.

Field names follow the live protocol (https://www.assemblyai.com/docs/voice-agents).
Decoding is tolerant: unknown events and older shapes (an error frame without `type`,
tool arguments under `args`) become values the bridge can act on, never exceptions, for
any bytes. A frame that is not UTF-8 becomes `InvalidText`: the socket's protocol error.
"""

from __future__ import annotations

from typing import Any, Literal, Union, get_args

import msgspec


class _Event(msgspec.Struct, tag_field="type", gc=False):
    pass


class SessionReady(_Event, tag="session.ready"):
    session_id: str
    config: dict[str, Any] | None = None
    resume_token: str | None = None


class SessionUpdated(_Event, tag="session.updated"):
    config: dict[str, Any] | None = None


class SessionError(_Event, tag="session.error"):
    code: str = "unknown"
    message: str = ""
    param: str | None = None
    session_id: str | None = None


class SessionEnded(_Event, tag="session.ended"):
    session_duration_seconds: float | None = None


class SpeechStarted(_Event, tag="input.speech.started"):
    pass


class SpeechStopped(_Event, tag="input.speech.stopped"):
    pass


class UserTranscriptDelta(_Event, tag="transcript.user.delta"):
    text: str = ""
    item_id: str | None = None


class UserTranscript(_Event, tag="transcript.user"):
    text: str = ""
    item_id: str | None = None


class ReplyStarted(_Event, tag="reply.started"):
    reply_id: str | None = None


class ReplyAudio(_Event, tag="reply.audio"):
    data: bytes  # decoded from base64 (which checks it); an event that is not is invalid
    reply_id: str | None = None


class RelayReplyAudio(_Event, tag="reply.audio"):
    """`ReplyAudio` as the compiled fast path reads it: `data` left as the base64 text it
    arrived in (see `RelayMedia` in `callbridge.twilio.media_stream`)."""

    data: msgspec.Raw
    reply_id: str | None = None


class AgentTranscriptDelta(_Event, tag="transcript.agent.delta"):
    delta: str = ""
    reply_id: str | None = None


class AgentTranscript(_Event, tag="transcript.agent"):
    text: str = ""
    interrupted: bool = False
    reply_id: str | None = None


class ReplyDone(_Event, tag="reply.done"):
    reply_id: str | None = None
    status: str = "completed"  # beta servers omitted it on completion


class ReplyError(_Event, tag="reply.error"):
    code: str = "unknown"
    message: str = ""
    reply_id: str | None = None


class ToolCall(_Event, tag="tool.call"):
    call_id: str
    name: str
    # Current servers send a parsed object under `arguments`; older ones used `args`,
    # sometimes as a JSON string. Both are kept raw and resolved by `tool_arguments`.
    arguments: Any = msgspec.UNSET
    args: Any = msgspec.UNSET


class UnknownEvent(msgspec.Struct, gc=False):
    type: str


class InvalidEvent(msgspec.Struct, gc=False):
    reason: str


class InvalidText(msgspec.Struct, frozen=True, gc=False):
    """A text frame whose bytes are not UTF-8, as far as the decoder read them. RFC 6455
    (section 8.1) has the receiver fail the connection (close code 1007): the socket
    does, and the bridge sees the socket close, as for any other broken connection."""

    reason: str = "text frame is not valid UTF-8"


INVALID_TEXT = InvalidText()


AgentEvent = (
    SessionReady
    | SessionUpdated
    | SessionError
    | SessionEnded
    | SpeechStarted
    | SpeechStopped
    | UserTranscriptDelta
    | UserTranscript
    | ReplyStarted
    | ReplyAudio
    | AgentTranscriptDelta
    | AgentTranscript
    | ReplyDone
    | ReplyError
    | ToolCall
)

_decoder = msgspec.json.Decoder(AgentEvent)
_generic = msgspec.json.Decoder()


# The per-frame path calls the decoder itself (saving a Python call per frame) and, when it
# raises (one of DECODE_ERRORS: msgspec's, or UnicodeDecodeError for text that is not
# UTF-8), `undecodable`: together they are `decode`.
DECODE_ERRORS = (msgspec.DecodeError, UnicodeError)
decode_strict = _decoder.decode
# The fast path's: every event as `decode_strict` gives it, but `reply.audio` as a
# `RelayReplyAudio` (one that is not relayed takes the full path and is decoded again).
AgentRelayEvent: Any = Union[  # noqa: UP007 (built from AgentEvent, not written out)
    tuple(RelayReplyAudio if kind is ReplyAudio else kind for kind in get_args(AgentEvent))
]
decode_relay = msgspec.json.Decoder(AgentRelayEvent).decode


Decoded = AgentEvent | UnknownEvent | InvalidEvent | InvalidText


def decode(frame: str | bytes | memoryview) -> Decoded:
    """Decode one text frame from the agent. Never raises."""
    try:
        event: AgentEvent = decode_strict(frame)
    except DECODE_ERRORS as exc:
        return undecodable(frame, exc)
    return event


def undecodable(frame: str | bytes | memoryview, exc: Exception) -> Decoded:
    """What `decode` returns for a frame `decode_strict` refused: an error the agent sent
    in an older shape, an event type we do not know, or an invalid frame (never raises)."""
    if isinstance(exc, UnicodeError):
        return INVALID_TEXT
    try:
        raw = _generic.decode(frame)
    except UnicodeError:  # in a field the typed decoder skipped
        return INVALID_TEXT
    except msgspec.DecodeError:
        return InvalidEvent("invalid JSON")
    if not isinstance(raw, dict):
        return InvalidEvent("JSON frame is not an object")
    kind = raw.get("type")
    if kind is None and "code" in raw:
        # Older servers sent bare error objects without a type.
        return SessionError(
            code=str(raw.get("code")),
            message=str(raw.get("message", "")),
            param=raw.get("param") if isinstance(raw.get("param"), str) else None,
        )
    if kind == "error":
        return SessionError(
            code=str(raw.get("code", "unknown")), message=str(raw.get("message", ""))
        )
    if not isinstance(kind, str):
        return InvalidEvent("event has no type")
    if kind in _KNOWN_TYPES:
        return InvalidEvent(f"malformed {kind} event: {exc}")
    return UnknownEvent(kind[:60])


_KNOWN_TYPES = frozenset(
    msgspec.inspect.type_info(t).tag  # type: ignore[attr-defined]
    for t in AgentEvent.__args__
)


class ToolArgumentsError(ValueError):
    pass


def tool_arguments(call: ToolCall) -> dict[str, Any]:
    """The call's arguments as a dict, from `arguments` or the legacy `args`."""
    raw = call.arguments if call.arguments is not msgspec.UNSET else call.args
    if raw is msgspec.UNSET or raw is None:
        return {}
    if isinstance(raw, str):
        if not raw.strip():
            return {}
        try:
            raw = _generic.decode(raw)
        except msgspec.DecodeError as exc:
            raise ToolArgumentsError("arguments are not valid JSON") from exc
    if not isinstance(raw, dict):
        raise ToolArgumentsError("arguments are not a JSON object")
    return raw


# --- what we send -------------------------------------------------------------------


class InputAudio(msgspec.Struct, tag_field="type", tag="input.audio", gc=False):
    audio: bytes  # encoded as base64


class RelayInputAudio(msgspec.Struct, tag_field="type", tag="input.audio", gc=False):
    """`InputAudio` with the caller's base64 text relayed as is (the fast path's)."""

    audio: msgspec.Raw


class _ToolResult(msgspec.Struct, tag_field="type", tag="tool.result", gc=False):
    call_id: str
    result: str
    is_error: bool = False


class _SessionUpdate(msgspec.Struct, tag_field="type", tag="session.update"):
    session: dict[str, Any]


class _SessionResume(msgspec.Struct, tag_field="type", tag="session.resume", gc=False):
    session_id: str


class _ReplyCreate(
    msgspec.Struct, tag_field="type", tag="reply.create", omit_defaults=True, gc=False
):
    instructions: str | None = None


_encoder = msgspec.json.Encoder()
SESSION_END = b'{"type":"session.end"}'


def encode_input_audio(payload: bytes) -> bytes:
    return _encoder.encode(InputAudio(payload))


def input_audio_parts() -> tuple[bytes, bytes]:
    """For the compiled fast path: the bytes around the caller's base64 text (a JSON
    string) in an `input.audio` message, as `encode_input_audio` writes it for the audio
    that text encodes. A NUL byte marks the hole: msgspec never writes one in JSON."""
    head, hole, tail = _encoder.encode(RelayInputAudio(msgspec.Raw(b"\x00"))).partition(b"\x00")
    if not hole or b"\x00" in tail:
        raise ValueError("not one hole in an input.audio message")
    return head, tail


def encode_tool_result(call_id: str, result: str, is_error: bool) -> bytes:
    return _encoder.encode(_ToolResult(call_id, result, is_error))


def encode_session_update(session: dict[str, Any]) -> bytes:
    return _encoder.encode(_SessionUpdate(session))


def encode_session_resume(session_id: str) -> bytes:
    return _encoder.encode(_SessionResume(session_id))


def encode_reply_create(instructions: str | None = None) -> bytes:
    return _encoder.encode(_ReplyCreate(instructions))


# How the bridge treats each `session.error` code, compared lower-cased because the API's
# documentation (https://www.assemblyai.com/docs/voice-agents) and the live service disagree
# on case. No retry fixes credentials, access or an unknown agent; capacity and internal
# errors may clear on a new connection; a refused resume needs a fresh session.
NEVER_RETRY_CODES = frozenset({"unauthorized", "forbidden", "session_forbidden", "agent_not_found"})
RETRYABLE_CODES = frozenset(
    {
        "at_capacity",
        "concurrency_exceeded",
        "internal_error",
        "server_error",
        "agent_init_failed",
        "agent_timeout",
    }
)
RESUME_REFUSED_CODES = frozenset({"session_not_found", "session_expired"})

ErrorKind = Literal["fatal", "retry", "resume-refused", "ignore"]


def classify_error(error: SessionError, *, configuring: bool) -> ErrorKind:
    """fatal: end the call; retry: a new socket; resume-refused: a fresh session; ignore: log.

    A rejected first session.update (a bad voice, say) is fatal: retrying cannot fix it.
    Later complaints about a message leave the session open and are only logged.
    """
    code = error.code.lower()
    if code in NEVER_RETRY_CODES:
        return "fatal"
    if code in RETRYABLE_CODES:
        return "retry"
    if code in RESUME_REFUSED_CODES:
        return "resume-refused"
    return "fatal" if configuring else "ignore"
