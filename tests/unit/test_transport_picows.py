"""What both picows sockets share: whole messages from fragments, the `send` a socket has
in each state, and the polite close.

picows's frames and transports cannot be built from Python with chosen contents, so these
use stand-ins with the attributes the helpers read; the sockets' own tests
(tests/agent/, tests/e2e/test_twilio_sockets.py) run them over real connections.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from picows import WSCloseCode, WSMsgType

from callbridge.transport import picows
from callbridge.transport.picows import FragmentedMessages, MessageTooBig, drop_frame, send_for


@dataclass
class Frame:
    msg_type: WSMsgType
    payload: bytes
    fin: bool = True

    @property
    def payload_size(self) -> int:
        return len(self.payload)

    def get_payload_as_bytes(self) -> bytes:
        return self.payload


def text(payload: bytes, fin: bool = True) -> Any:
    return Frame(WSMsgType.TEXT, payload, fin)


def more(payload: bytes, fin: bool = True) -> Any:
    return Frame(WSMsgType.CONTINUATION, payload, fin)


def binary(payload: bytes, fin: bool = True) -> Any:
    return Frame(WSMsgType.BINARY, payload, fin)


# --- FragmentedMessages -------------------------------------------------------------


def test_fragments_make_one_message_once_the_last_arrives() -> None:
    messages = FragmentedMessages(max_bytes=100)
    assert not messages.in_progress
    assert messages.add(text(b'{"event":', fin=False)) is None
    assert messages.in_progress
    assert messages.add(more(b'"mark",', fin=False)) is None
    assert messages.add(more(b'"x":1}')) == b'{"event":"mark","x":1}'
    assert not messages.in_progress
    # The next message starts afresh.
    assert messages.add(text(b"a", fin=False)) is None
    assert messages.add(more(b"b")) == b"ab"


def test_a_new_text_frame_starts_over() -> None:
    messages = FragmentedMessages(max_bytes=100)
    messages.add(text(b"lost", fin=False))
    messages.add(text(b"kept", fin=False))
    assert messages.add(more(b"!")) == b"kept!"


def test_a_continuation_of_nothing_is_ignored() -> None:
    messages = FragmentedMessages(max_bytes=100)
    assert messages.add(more(b"stray")) is None
    assert messages.add(more(b"stray", fin=False)) is None
    assert not messages.in_progress
    messages.add(text(b"a", fin=False))
    assert messages.add(more(b"b")) == b"ab"


def test_a_skipped_binary_messages_continuations_are_dropped() -> None:
    messages = FragmentedMessages(max_bytes=100)
    messages.skip(binary(b"\x00", fin=False))
    assert messages.in_progress
    assert messages.add(more(b"\x01", fin=False)) is None
    assert messages.in_progress
    assert messages.add(more(b"\x02")) is None  # its last fragment
    assert not messages.in_progress
    # A whole binary frame leaves nothing to skip.
    messages.skip(binary(b"\x00"))
    assert not messages.in_progress


def test_a_message_past_the_limit_is_refused_and_forgotten() -> None:
    messages = FragmentedMessages(max_bytes=10)
    messages.add(text(b"12345", fin=False))
    assert messages.add(more(b"12345", fin=False)) is None  # exactly the limit
    with pytest.raises(MessageTooBig, match="larger than 10 bytes"):
        messages.add(more(b"1"))
    assert not messages.in_progress
    assert messages.add(more(b"late")) is None  # the rest of it is ignored
    messages.add(text(b"ok", fin=False))
    assert messages.add(more(b"!")) == b"ok!"


def test_the_limit_counts_the_first_fragment_too() -> None:
    messages = FragmentedMessages(max_bytes=4)
    with pytest.raises(MessageTooBig):
        messages.add(text(b"12345", fin=False))


# --- send_for -----------------------------------------------------------------------


@dataclass
class Transport:
    sent: list[tuple[WSMsgType, bytes]] = field(default_factory=list)
    closed_with: WSCloseCode | None = None
    is_disconnected: bool = False
    forced: bool = False
    peer_closes: bool = True
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, msg_type: WSMsgType, message: bytes) -> None:
        self.sent.append((msg_type, message))

    def send_close(self, code: WSCloseCode) -> None:
        self.closed_with = code
        if self.peer_closes:
            self.disconnected.set()

    async def wait_disconnected(self) -> None:
        await self.disconnected.wait()

    def disconnect(self, graceful: bool = True) -> None:
        self.forced = not graceful
        self.disconnected.set()


def watching(frame: bytes) -> None:
    raise AssertionError("not called here")


def test_an_open_socket_sends_text_frames_on_its_transport() -> None:
    transport = Transport()
    send, direct = send_for(cast(Any, transport), usable=True, paused=False, watching=watching)
    assert direct is transport  # the fast path may send to it itself
    send(b'{"event":"clear"}')
    assert transport.sent == [(WSMsgType.TEXT, b'{"event":"clear"}')]


def test_a_paused_transport_sends_through_the_watcher() -> None:
    transport = Transport()
    send, direct = send_for(cast(Any, transport), usable=True, paused=True, watching=watching)
    assert send is watching
    assert direct is None


@pytest.mark.parametrize(
    ("has_transport", "usable", "paused"),
    [(False, True, False), (False, False, False), (True, False, False), (True, False, True)],
)
def test_a_socket_not_open_drops_frames(has_transport: bool, usable: bool, paused: bool) -> None:
    transport = Transport()
    send, direct = send_for(
        cast(Any, transport) if has_transport else None,
        usable=usable,
        paused=paused,
        watching=watching,
    )
    assert send is drop_frame
    assert direct is None
    send(b"x")
    assert transport.sent == []


# --- close_politely -----------------------------------------------------------------


async def test_a_close_frame_then_the_peer_closes() -> None:
    transport = Transport()
    await picows.close_politely(cast(Any, transport), WSCloseCode.GOING_AWAY)
    assert transport.closed_with is WSCloseCode.GOING_AWAY
    assert not transport.forced


async def test_a_peer_that_does_not_answer_is_disconnected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(picows, "_CLOSE_WAIT_SECONDS", 0.01)
    transport = Transport(peer_closes=False)
    await picows.close_politely(cast(Any, transport), WSCloseCode.OK)
    assert transport.closed_with is WSCloseCode.OK
    assert transport.forced


async def test_a_disconnected_transport_is_left_alone() -> None:
    transport = Transport(is_disconnected=True)
    await picows.close_politely(cast(Any, transport), WSCloseCode.OK)
    assert transport.closed_with is None
    assert not transport.forced
