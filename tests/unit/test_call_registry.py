"""The calls an instance knows: a stream's token is redeemed once, in time, for its own
call; announced calls that never got a stream are forgotten."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from callbridge.server import call_registry
from callbridge.server.call_registry import CallInfo, CallRegistry, new_call_id
from callbridge.twilio.signatures import TOKEN_TTL_SECONDS


def announced(
    registry: CallRegistry, call_id: str = "c1", *, age: float = 0.0, **fields: Any
) -> CallInfo:
    fields.setdefault("stream_token", "tok-" + call_id)
    info = CallInfo(call_id, "inbound", created=time.monotonic() - age, **fields)
    registry.announce(info)
    return info


def test_a_token_is_redeemed_once() -> None:
    registry = CallRegistry()
    announced(registry, call_sid="CA1")
    assert registry.redeem_token("c1", "tok-c1", "CA1") is None
    assert registry.redeem_token("c1", "tok-c1", "CA1") == "stream token already used"


def test_an_expired_token_is_refused() -> None:
    registry = CallRegistry()
    announced(registry, age=TOKEN_TTL_SECONDS + 1)
    assert registry.redeem_token("c1", "tok-c1", None) == "stream token expired"
    announced(registry, "c2", age=TOKEN_TTL_SECONDS - 5)
    assert registry.redeem_token("c2", "tok-c2", None) is None


@pytest.mark.parametrize("presented", ["tok-c2", "", None, "tok-c1 "])
def test_a_wrong_token_is_refused_and_the_right_one_still_works(presented: str | None) -> None:
    registry = CallRegistry()
    announced(registry)
    announced(registry, "c2")
    assert registry.redeem_token("c1", presented, None) == "wrong stream token"
    assert registry.redeem_token("c1", "tok-c1", None) is None


def test_a_stream_for_another_call_sid_is_refused() -> None:
    registry = CallRegistry()
    announced(registry, call_sid="CA1")
    assert registry.redeem_token("c1", "tok-c1", "CA2") == "stream is for another CallSid"
    assert registry.redeem_token("c1", "tok-c1", None) == "stream is for another CallSid"
    assert registry.redeem_token("c1", "tok-c1", "CA1") is None


def test_a_call_announced_without_a_sid_takes_the_stream_whatever_its_sid() -> None:
    registry = CallRegistry()
    announced(registry)
    assert registry.redeem_token("c1", "tok-c1", "CA9") is None


def test_an_unknown_call_id_is_refused() -> None:
    registry = CallRegistry()
    assert registry.redeem_token("nope", "tok-nope", None) == "unknown call id"
    announced(registry)
    registry.forget("c1")
    assert registry.redeem_token("c1", "tok-c1", None) == "unknown call id"


def test_calls_are_found_by_call_sid_until_forgotten() -> None:
    registry = CallRegistry()
    announced(registry, call_sid="CA1")
    assert registry.call_id_for_sid("CA1") == "c1"
    assert registry.call_id_for_sid("CA2") is None
    registry.forget("c1")
    assert registry.call_id_for_sid("CA1") is None


def test_pending_calls_are_recent_unredeemed_and_not_live() -> None:
    registry = CallRegistry()
    announced(registry, "waiting")
    announced(registry, "redeemed")
    announced(registry, "live")
    announced(registry, "old", age=61)
    assert registry.redeem_token("redeemed", "tok-redeemed", None) is None
    assert registry.pending_count() == 2  # "waiting" and "live", not yet on a stream
    registry.live["live"] = cast(Any, object())  # a runner; only its presence counts
    assert registry.pending_count() == 1
    assert registry.pending_count(within=120) == 2  # "old" too


def test_abandoned_calls_are_forgotten_when_the_next_is_announced() -> None:
    registry = CallRegistry()
    pending_ttl = call_registry.PENDING_TTL_SECONDS
    registry.live["live"] = cast(Any, object())  # its stream came: it stays, however old
    announced(registry, "live", age=pending_ttl + 1)
    announced(registry, "abandoned", age=pending_ttl + 1, call_sid="CA1")
    assert registry.call_id_for_sid("CA1") == "abandoned"
    announced(registry, "recent", age=pending_ttl - 10)  # the next announcement
    assert registry.redeem_token("abandoned", "tok-abandoned", None) == "unknown call id"
    assert registry.call_id_for_sid("CA1") is None
    assert registry.redeem_token("recent", "tok-recent", None) == "stream token expired"
    assert registry.redeem_token("live", "tok-live", None) == "stream token expired"
    assert "live" in registry.live


def test_call_ids_are_unguessable_and_never_look_like_an_option() -> None:
    ids = {new_call_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(call_id) >= 22 for call_id in ids)  # a letter or digit, then 128 bits
    assert not any(call_id.startswith(("-", "_")) for call_id in ids)


def test_a_reissued_token_admits_the_calls_next_stream_once() -> None:
    registry = CallRegistry()
    registry.announce(CallInfo("c1", "inbound", call_sid="CA1", stream_token="first"))
    assert registry.redeem_token("c1", "first", "CA1") is None
    assert registry.reissue_token("unknown") is None
    token = registry.reissue_token("c1")
    assert token is not None and token != "first"
    assert registry.redeem_token("c1", "first", "CA1") == "wrong stream token"
    assert registry.redeem_token("c1", token, "CA2") == "stream is for another CallSid"
    assert registry.redeem_token("c1", token, "CA1") is None
    assert registry.redeem_token("c1", token, "CA1") == "stream token already used"
