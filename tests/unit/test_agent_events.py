"""The Voice Agent API wire format: how each error code is treated, the older shapes the
decoder still understands, the reasons it refuses a frame, and tool-call arguments."""

from __future__ import annotations

import msgspec
import pytest

from callbridge.agent import events as agent


def decoded(frame: bytes) -> object:
    """What the per-frame path makes of `frame`, checked against `decode`."""
    try:
        event: object = agent.decode_strict(frame)
    except agent.DECODE_ERRORS as exc:
        event = agent.undecodable(frame, exc)
    assert agent.decode(frame) == event
    return event


def error(code: str) -> agent.SessionError:
    return agent.SessionError(code=code, message="m")


# --- classify_error -----------------------------------------------------------------


@pytest.mark.parametrize(
    "code", ["unauthorized", "UNAUTHORIZED", "forbidden", "FORBIDDEN", "session_forbidden"]
)
@pytest.mark.parametrize("configuring", [True, False])
def test_credentials_and_access_are_fatal_whenever_they_come(code: str, configuring: bool) -> None:
    assert agent.classify_error(error(code), configuring=configuring) == "fatal"


@pytest.mark.parametrize("configuring", [True, False])
def test_an_unknown_agent_is_fatal(configuring: bool) -> None:
    assert agent.classify_error(error("agent_not_found"), configuring=configuring) == "fatal"


@pytest.mark.parametrize(
    "code",
    [
        "at_capacity",
        "concurrency_exceeded",
        "internal_error",
        "INTERNAL_ERROR",
        "server_error",
        "agent_init_failed",
        "agent_timeout",
    ],
)
@pytest.mark.parametrize("configuring", [True, False])
def test_capacity_and_internal_errors_are_retried(code: str, configuring: bool) -> None:
    assert agent.classify_error(error(code), configuring=configuring) == "retry"


@pytest.mark.parametrize("code", ["session_not_found", "session_expired", "Session_Expired"])
@pytest.mark.parametrize("configuring", [True, False])
def test_a_refused_resume_needs_a_fresh_session(code: str, configuring: bool) -> None:
    assert agent.classify_error(error(code), configuring=configuring) == "resume-refused"


@pytest.mark.parametrize(
    "code", ["invalid_value", "invalid_format", "immutable_field", "unknown", "something_new"]
)
def test_other_errors_are_fatal_while_configuring_and_logged_later(code: str) -> None:
    assert agent.classify_error(error(code), configuring=True) == "fatal"
    assert agent.classify_error(error(code), configuring=False) == "ignore"


def test_the_code_sets_do_not_overlap() -> None:
    sets = [agent.NEVER_RETRY_CODES, agent.RETRYABLE_CODES, agent.RESUME_REFUSED_CODES]
    for i, first in enumerate(sets):
        assert all(code == code.lower() for code in first)  # compared lower-cased
        for second in sets[i + 1 :]:
            assert first.isdisjoint(second)


# --- decoding: older shapes and refusals ----------------------------------------------


def test_a_bare_error_object_from_an_older_server_is_a_session_error() -> None:
    event = decoded(b'{"code":"unauthorized","message":"bad key","param":"voice"}')
    assert event == agent.SessionError(code="unauthorized", message="bad key", param="voice")
    assert agent.classify_error(event, configuring=True) == "fatal"
    # Whatever the fields hold, they become text (a param that is not text is dropped).
    assert decoded(b'{"code":5,"param":3}') == agent.SessionError(code="5", message="")


def test_an_error_typed_error_is_a_session_error() -> None:
    event = decoded(b'{"type":"error","code":"at_capacity","message":"busy"}')
    assert event == agent.SessionError(code="at_capacity", message="busy")
    assert decoded(b'{"type":"error"}') == agent.SessionError(code="unknown", message="")


def test_an_unknown_event_type_is_named_and_cut_short() -> None:
    assert decoded(b'{"type":"session.new_thing","x":1}') == agent.UnknownEvent("session.new_thing")
    assert decoded(b'{"type":"%s"}' % (b"y" * 100)) == agent.UnknownEvent("y" * 60)


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"nope", "invalid JSON"),
        (b"", "invalid JSON"),
        (b"[]", "JSON frame is not an object"),
        (b'"reply.audio"', "JSON frame is not an object"),
        (b'{"x":1}', "event has no type"),
        (b'{"type":7}', "event has no type"),
    ],
)
def test_frames_that_are_not_events(frame: bytes, why: str) -> None:
    assert decoded(frame) == agent.InvalidEvent(why)


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (
            b'{"type":"reply.audio","data":"!!"}',
            "malformed reply.audio event: Invalid base64 encoded string - at `$.data`",
        ),
        (
            b'{"type":"tool.call","name":"x"}',
            "malformed tool.call event: Object missing required field `call_id`",
        ),
        (
            b'{"type":"session.ready"}',
            "malformed session.ready event: Object missing required field `session_id`",
        ),
    ],
)
def test_a_known_event_with_bad_fields_says_which(frame: bytes, why: str) -> None:
    assert decoded(frame) == agent.InvalidEvent(why)


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type":"session.error","code":"x","message":"\xff"}',
        # In a field the typed decoder skips, found when the frame is refused for another
        # reason (here, no call_id); a frame it takes is not checked there.
        b'{"type":"tool.call","name":"n","zz":"\xff"}',
        b'{"\xff":1}',
    ],
)
def test_text_that_is_not_utf8_is_invalid_text(frame: bytes) -> None:
    assert decoded(frame) is agent.INVALID_TEXT


def test_the_relay_decoder_keeps_reply_audio_as_it_arrived() -> None:
    frame = b'{"type":"reply.audio","data":"AAEC","reply_id":"r1"}'
    relayed = agent.decode_relay(frame)
    assert isinstance(relayed, agent.RelayReplyAudio)
    assert (bytes(relayed.data), relayed.reply_id) == (b'"AAEC"', "r1")
    assert agent.decode_strict(frame) == agent.ReplyAudio(b"\x00\x01\x02", reply_id="r1")


# --- tool-call arguments --------------------------------------------------------------


def call(**fields: object) -> agent.ToolCall:
    return agent.ToolCall(call_id="c1", name="lookup", **fields)  # type: ignore[arg-type]


def test_arguments_as_sent_by_current_servers() -> None:
    event = decoded(b'{"type":"tool.call","call_id":"c1","name":"n","arguments":{"a":1}}')
    assert isinstance(event, agent.ToolCall)
    assert agent.tool_arguments(event) == {"a": 1}


@pytest.mark.parametrize("args", [{"a": 1}, '{"a": 1}'])
def test_legacy_args_as_an_object_or_a_json_string(args: object) -> None:
    assert agent.tool_arguments(call(args=args)) == {"a": 1}


def test_arguments_win_over_legacy_args() -> None:
    assert agent.tool_arguments(call(arguments={"new": 1}, args={"old": 1})) == {"new": 1}


@pytest.mark.parametrize("raw", [msgspec.UNSET, None, "", "   "])
def test_no_arguments_are_an_empty_object(raw: object) -> None:
    assert agent.tool_arguments(call(arguments=raw)) == {}


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("{not json", "arguments are not valid JSON"),
        ("[1, 2]", "arguments are not a JSON object"),
        ([1, 2], "arguments are not a JSON object"),
        (7, "arguments are not a JSON object"),
    ],
)
def test_arguments_that_are_not_an_object_are_refused(raw: object, why: str) -> None:
    with pytest.raises(agent.ToolArgumentsError, match=why):
        agent.tool_arguments(call(arguments=raw))


# --- what we send ---------------------------------------------------------------------


def test_what_we_send() -> None:
    assert msgspec.json.decode(agent.encode_input_audio(b"\x00\x01\x02")) == {
        "type": "input.audio",
        "audio": "AAEC",
    }
    assert msgspec.json.decode(agent.encode_tool_result("c1", '{"n": 7}', False)) == {
        "type": "tool.result",
        "call_id": "c1",
        "result": '{"n": 7}',
        "is_error": False,
    }
    assert msgspec.json.decode(agent.SESSION_END) == {"type": "session.end"}
