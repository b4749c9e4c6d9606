"""The compiled audio fast path is built where it can be, callbridge works without it, and
the audio it relays as base64 text is what the full path would send."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect, ws_create_server

from callbridge import fast_path
from callbridge.agent import events as agent
from callbridge.agent.picows import PicowsAgentSocket
from callbridge.twilio import media_stream as twilio
from callbridge.twilio.picows import PicowsTwilioSocket

REPO = Path(__file__).resolve().parents[2]


def test_the_compiled_fast_path_is_built_by_make_install() -> None:
    if not fast_path.COMPILED:
        message = f"the compiled fast path is {fast_path.WHY_NOT_COMPILED}"
        if os.environ.get("CALLBRIDGE_REQUIRE_SERVICES") == "1":  # CI: it must be there
            pytest.fail(message)
        pytest.skip(message)
    # The sockets' frame callback is the compiled one: no Python override hides it.
    assert "on_ws_frame" not in vars(PicowsTwilioSocket)
    assert "on_ws_frame" not in vars(PicowsAgentSocket)


@pytest.mark.slow
def test_without_the_compiled_module_calls_work_through_the_full_path() -> None:
    """As on a machine with no C compiler: the module is missing, the same calls pass."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["callbridge.fast_path._compiled"] = None  # import fails: not built
        from callbridge import fast_path
        from callbridge.twilio.picows import PicowsTwilioSocket
        from callbridge.agent.picows import PicowsAgentSocket
        assert not fast_path.COMPILED and "not built" in fast_path.WHY_NOT_COMPILED
        assert PicowsTwilioSocket.on_ws_frame is PicowsTwilioSocket._on_frame
        assert PicowsAgentSocket.on_ws_frame is PicowsAgentSocket._on_frame
        import pytest
        sys.exit(pytest.main([
            "-q", "-p", "no:cacheprovider", "tests/e2e/test_inbound_call.py",
            "-k", "greeting or caller_audio or barge_in or fast_path_relays",
        ]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" in done.stdout  # the fast-path-only one


# --- audio relayed as the base64 text it arrived in ----------------------------------------

compiled_only = pytest.mark.skipif(
    not fast_path.COMPILED, reason=f"the compiled fast path is {fast_path.WHY_NOT_COMPILED}"
)


class _Text(msgspec.Struct):
    text: msgspec.Raw


class _Bytes(msgspec.Struct):
    text: bytes


def _raw(json_string: bytes) -> msgspec.Raw:
    """A JSON string value (quotes included) as the fast path's decoders give it."""
    return msgspec.json.decode(b'{"text":' + json_string + b"}", type=_Text).text


def _base64_size(json_string: bytes) -> int:
    from callbridge.fast_path import _compiled

    size = _compiled.base64_size(_raw(json_string))
    assert isinstance(size, int)
    return size


@compiled_only
@given(st.binary(min_size=1, max_size=400))
def test_canonical_base64_is_relayed_with_its_size(audio: bytes) -> None:
    assert _base64_size(b'"' + base64.b64encode(audio) + b'"') == len(audio)


# μ-law bytes: quiet ones (0xE0-0xFF, 0x60-0x7F, digital silence among them) and any.
_quiet_or_any = st.sampled_from([0xFF, 0x7F, 0xFE, 0xE0, 0x70]) | st.integers(0, 255)


@compiled_only
@settings(max_examples=500)
@given(
    st.binary(min_size=1, max_size=400)
    | st.lists(_quiet_or_any, min_size=1, max_size=400).map(bytes)
    | st.lists(st.sampled_from([0xFF, 0x7F]), min_size=1, max_size=400).map(bytes)
)
def test_the_compiled_path_judges_audibility_as_the_ledger_does(audio: bytes) -> None:
    """Reading base64 text, it must call a chunk audible exactly when the bridge would."""
    from callbridge.bridge.playout_ledger import AUDIBLE_SHARE, is_audible
    from callbridge.fast_path import _compiled

    json_string = b'"' + base64.b64encode(audio) + b'"'
    assert _compiled.audible(_raw(json_string), AUDIBLE_SHARE) == is_audible(audio)


@compiled_only
@settings(max_examples=300)
@given(
    st.text(alphabet="ABCDQRSTYZabcxyz0189+/=\n\\ ", min_size=0, max_size=16)
    | st.binary(min_size=1, max_size=8).map(lambda b: base64.b64encode(b).decode())
    | st.binary(min_size=1, max_size=8).map(lambda b: base64.b64encode(b).decode()[:-1] + "R")
)
def test_text_is_relayed_only_if_the_full_path_would_send_it_unchanged(body: str) -> None:
    """What the fast path relays as is, the full path (msgspec's base64 decode, then its
    encode) turns into the very same text: the two paths send the same bytes."""
    json_string = msgspec.json.encode(body)  # a newline or backslash escaped, say
    size = _base64_size(json_string)
    if size < 0:
        return  # the full path takes it: it decodes what it can, or reports the frame
    audio = msgspec.json.decode(b'{"text":' + json_string + b"}", type=_Bytes).text
    assert len(audio) == size > 0
    assert base64.b64encode(audio).decode() == body


@compiled_only
@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("", "no audio"),
        ("QR==", "stray bits under the padding"),
        ("QUJ=", "stray bits under the padding"),
        ("QUJ", "no padding"),
        ("QUJDQQ", "no padding"),
        ("QUJD\\n", "an escape"),
        ("\\/\\/\\/\\/", "escaped slashes"),
        ("QU JD", "a space"),
        ("====", "padding only"),
        ("QQ=A", "padding inside"),
        ("QUJD-_==", "the URL-safe alphabet"),
    ],
)
def test_anything_but_canonical_base64_takes_the_full_path(body: str, why: str) -> None:
    assert _base64_size(b'"' + body.encode() + b'"') == -1, why


@given(
    st.binary(min_size=1, max_size=400),
    st.text(min_size=1, max_size=40),
    st.integers(0, 10**15),
)
def test_relayed_frames_are_what_the_full_paths_write(
    audio: bytes, stream_sid: str, mark: int
) -> None:
    """The fast path writes the bytes around the relayed text and the text: the full
    path's frames, byte for byte, whatever the stream's sid holds (quotes, escapes)."""
    from callbridge.bridge.playout_ledger import MARK_PREFIX

    text = b'"' + base64.b64encode(audio) + b'"'
    head, tail = agent.input_audio_parts()
    assert head + text + tail == agent.encode_input_audio(audio)
    media_head, media_tail, mark_head, mark_tail = twilio.relay_parts(stream_sid, MARK_PREFIX)
    assert media_head + text + media_tail == twilio.encode_media(stream_sid, audio)
    name = f"{MARK_PREFIX}{mark}"
    assert mark_head + str(mark).encode() + mark_tail == twilio.encode_mark(stream_sid, name)


def test_a_mark_prefix_that_json_would_escape_is_refused() -> None:
    with pytest.raises(ValueError, match="not plain JSON"):
        twilio.relay_parts("MZ1", 'cb"')


def _fields(kind: type) -> list[tuple[str, str, object]]:
    return [(f.name, f.encode_name, f.default) for f in msgspec.structs.fields(kind)]


def test_relay_messages_read_the_same_fields_as_the_full_paths() -> None:
    """The fast path's decoders differ from the full path's in one thing only: the audio
    stays text. Same tags, same fields and defaults, so they accept the same frames."""
    assert _fields(twilio.RelayMedia) == _fields(twilio.Media)
    assert _fields(twilio.RelayMediaInfo) == _fields(twilio.MediaInfo)
    assert _fields(agent.RelayReplyAudio) == _fields(agent.ReplyAudio)
    assert _fields(twilio.RelayOutboundMedia) == _fields(twilio.OutboundMedia)
    assert _fields(twilio.RelayOutboundPayload) == _fields(twilio.OutboundPayload)
    assert _fields(agent.RelayInputAudio) == _fields(agent.InputAudio)
    assert _fields(twilio.RelayOutboundMark) == _fields(twilio._OutMark)
    assert _fields(twilio.RelayMarkName) == _fields(twilio._Name)
    for relay, full in [
        (twilio.RelayMedia, twilio.Media),
        (agent.RelayReplyAudio, agent.ReplyAudio),
        (twilio.RelayOutboundMedia, twilio.OutboundMedia),
        (twilio.RelayOutboundMark, twilio._OutMark),
        (agent.RelayInputAudio, agent.InputAudio),
    ]:
        assert msgspec.inspect.type_info(relay).tag == msgspec.inspect.type_info(full).tag  # type: ignore[attr-defined]
    relay_events = [
        agent.ReplyAudio if kind is agent.RelayReplyAudio else kind
        for kind in typing.get_args(agent.AgentRelayEvent)
    ]
    assert relay_events == list(typing.get_args(agent.AgentEvent))
    relay_messages = [
        twilio.Media if kind is twilio.RelayMedia else kind
        for kind in typing.get_args(twilio.MediaStreamRelayMessage)
    ]
    assert relay_messages == list(typing.get_args(twilio.MediaStreamMessage))


# --- marks: the numbers of the echoes the fast path holds back ------------------------------


@compiled_only
@settings(max_examples=300)
@given(
    st.text(alphabet="cb-0123456789:end+_ x\u0661", max_size=24)
    | st.integers(0, 10**16).map(lambda n: f"cb-{n}")
    | st.integers(0, 10**6).map(lambda n: f"cb-{n}:end")
)
def test_an_echo_is_held_back_only_for_a_mid_reply_mark_the_ledger_reads_alike(name: str) -> None:
    """A name the fast path reads a number from, the ledger reads the same number from
    (`PlayoutLedger.mark_echoed`); anything else (end marks, other marks, names `int()`
    reads more loosely) takes the full path."""
    from callbridge.bridge.playout_ledger import MARK_PREFIX
    from callbridge.fast_path import _compiled

    number = _compiled.mark_number(name, MARK_PREFIX)
    digits = name.removeprefix(MARK_PREFIX)
    plain = digits != name and digits.isascii() and digits.isdigit() and len(digits) <= 15
    assert number == (int(digits) if plain else -1)


@compiled_only
def test_a_mark_name_that_is_not_text_takes_the_full_path() -> None:
    from callbridge.bridge.playout_ledger import MARK_PREFIX
    from callbridge.fast_path import _compiled

    assert _compiled.mark_number(b"cb-1", MARK_PREFIX) == -1


class _UnderlyingStub:
    """What picows's WSTransport reads of the transport under it, for a stub. Its socket is
    not connected, so picows's own `send()` to it fails and what it writes comes here."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self.writes: list[bytes] = []
        self.written = asyncio.Event()

    def get_extra_info(self, name: str) -> object:
        return self._socket if name == "socket" else None

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.written.set()

    def close(self) -> None:
        self._socket.close()


def _server_frames(data: bytes) -> list[bytes]:
    """The payloads of the unmasked, whole text frames in `data` (RFC 6455, 5.2)."""
    frames = []
    while data:
        assert data[0] == 0x81  # FIN, text
        size, at = data[1], 2
        assert size < 0x80  # not masked
        if size == 126:
            size, at = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, at = int.from_bytes(data[2:10], "big"), 10
        frames.append(data[at : at + size])
        data = data[at + size :]
    return frames


class _TwilioSide(fast_path.TwilioAudioSocket):
    """Twilio's socket; what goes by its own `send` (not the fast path's write) is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.by_own_send: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.by_own_send.append(frame)


class _AgentSide(fast_path.AgentAudioSocket):
    """The agent's socket; the frames that take the full path are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.full_path: list[bytes] = []
        self.took_full_path = asyncio.Event()

    def _on_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self.full_path.append(frame.get_payload_as_bytes())
        self.took_full_path.set()


_CHUNK = bytes(range(256)) * 8 + bytes(52)  # 2100 bytes: past a mark due at 2000


def _reply_audio(reply_id: str) -> bytes:
    data = base64.b64encode(_CHUNK).decode()
    return msgspec.json.encode({"type": "reply.audio", "reply_id": reply_id, "data": data})


@compiled_only
async def test_a_quiet_only_route_relays_silence_and_hands_the_first_words_over() -> None:
    """Until a reply's first audible chunk, the route lets only quiet chunks through: the
    audible one takes the full path, where the bridge times it and sends a mark after it."""
    from callbridge.server.call_runner import configure_agent_fast_path

    twilio_side, agent_side, underlying = _TwilioSide(), _AgentSide(), _UnderlyingStub()
    loop = asyncio.get_running_loop()
    twilio_side.direct = WSTransport(False, underlying, logging.getLogger("test"), loop)
    configure_agent_fast_path(agent_side)
    fast_path.set_routes(twilio_side, agent_side, (True, "MZ1", "r1", 2000, 5, 7, True))
    silence = bytes([0xFF]) * 300
    quiet = msgspec.json.encode(
        {"type": "reply.audio", "reply_id": "r1", "data": base64.b64encode(silence).decode()}
    )
    server = await ws_create_server(lambda _: agent_side, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client, _ = await ws_connect(WSListener, f"ws://127.0.0.1:{port}/")
        client.send(WSMsgType.TEXT, quiet)
        client.send(WSMsgType.TEXT, _reply_audio("r1"))  # audible: the full path's
        await asyncio.wait_for(agent_side.took_full_path.wait(), 5)
        client.disconnect()
    finally:
        server.close()
        underlying.close()
    assert agent_side.full_path == [_reply_audio("r1")]
    assert _server_frames(b"".join(underlying.writes)) == [twilio.encode_media("MZ1", silence)]
    assert fast_path.take_relayed(twilio_side, agent_side) == (0, 1, 300, None, None)


async def _twilio_transport_after_a_chunk_past_a_mark(
    *, closing: bool
) -> tuple[_TwilioSide, _AgentSide, _UnderlyingStub]:
    """Reply r1's chunk of 2100 bytes, from a real picows client to the agent socket, while
    the route lets r1 go until a mark is due after 2000 bytes (marks numbered from 7); then
    a chunk of another reply, which the route does not cover: once it has taken the full
    path, the first has been dealt with. Twilio's transport writes to a stub; `closing`:
    it has sent its close frame first."""
    from callbridge.server.call_runner import configure_agent_fast_path

    twilio_side, agent_side, underlying = _TwilioSide(), _AgentSide(), _UnderlyingStub()
    loop = asyncio.get_running_loop()
    twilio_side.direct = transport = WSTransport(False, underlying, logging.getLogger("test"), loop)
    if closing:
        transport.send_close()
    configure_agent_fast_path(agent_side)  # as a call does
    fast_path.set_routes(twilio_side, agent_side, (True, "MZ1", "r1", 2000, 5, 7, False))
    server = await ws_create_server(lambda _: agent_side, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client, _ = await ws_connect(WSListener, f"ws://127.0.0.1:{port}/")
        client.send(WSMsgType.TEXT, _reply_audio("r1"))
        client.send(WSMsgType.TEXT, _reply_audio("r2"))
        await asyncio.wait_for(agent_side.took_full_path.wait(), 5)
        client.disconnect()
    finally:
        server.close()
        underlying.close()
    assert agent_side.full_path == [_reply_audio("r2")]
    assert twilio_side.by_own_send == []
    return twilio_side, agent_side, underlying


@compiled_only
async def test_a_chunk_that_crosses_a_mark_leaves_with_the_mark_in_one_write() -> None:
    """The chunk after which a mark is due and that mark are written to Twilio's socket
    together: one system call (and on loopback one packet) where two sends made two."""
    from callbridge.bridge.playout_ledger import MARK_PREFIX

    twilio_side, agent_side, underlying = await _twilio_transport_after_a_chunk_past_a_mark(
        closing=False
    )
    (written,) = underlying.writes
    assert _server_frames(written) == [
        twilio.encode_media("MZ1", _CHUNK),
        twilio.encode_mark("MZ1", f"{MARK_PREFIX}7"),
    ]
    assert fast_path.take_relayed(twilio_side, agent_side) == (0, 1, 2100, [2100], None)


@compiled_only
async def test_a_socket_off_the_event_loops_thread_writes_the_same_frames() -> None:
    """Frames are put together in one buffer of the module's, the first thread's to write
    (this one); a socket on another thread (its own event loop) puts them in its own."""

    async def written() -> list[bytes]:
        _, _, underlying = await _twilio_transport_after_a_chunk_past_a_mark(closing=False)
        return _server_frames(b"".join(underlying.writes))

    here = await written()
    elsewhere = await asyncio.to_thread(asyncio.run, written())
    assert (
        here
        == elsewhere
        == [
            twilio.encode_media("MZ1", _CHUNK),
            twilio.encode_mark("MZ1", "cb-7"),
        ]
    )


@compiled_only
async def test_a_chunk_and_its_mark_are_not_written_after_the_close_frame() -> None:
    """Once Twilio's transport has sent its close frame, the write leaves nothing after it,
    as picows's own send would; the bridge still counts what the route let through."""
    twilio_side, agent_side, underlying = await _twilio_transport_after_a_chunk_past_a_mark(
        closing=True
    )
    (close_frame,) = underlying.writes
    assert close_frame[0] == 0x88  # FIN, close: the only frame written
    assert fast_path.take_relayed(twilio_side, agent_side) == (0, 1, 2100, [2100], None)
