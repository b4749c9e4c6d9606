"""The webhook's memory of call ids: a signed URL serves one call (Twilio asking again for
that call is fine), and an id is forgotten once its URL has expired."""

from __future__ import annotations

from callbridge.server.placed_calls import REUSED, PlacedCalls
from callbridge.twilio import call_parameters
from callbridge.twilio.call_parameters import CallParameters

TOKEN = "test-auth-token"
TO = "+15557654321"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def query(clock: Clock, call_id: str = "Abcdefghijklmnop1234567", ttl: int = 60) -> str:
    return call_parameters.encode(
        call_id=call_id,
        to=TO,
        key=call_parameters.parameters_key(TOKEN),
        now=clock.now,
        parameters={"name": "Alice"},
        ttl_seconds=ttl,
    )


def test_no_query_is_no_parameters() -> None:
    assert PlacedCalls(TOKEN).check("", to=TO, call_sid="CA1") is None


def test_one_url_one_call() -> None:
    clock = Clock()
    placed = PlacedCalls(TOKEN, clock)
    signed = query(clock)
    first = placed.check(signed, to=TO, call_sid="CA1")
    assert isinstance(first, CallParameters)
    assert placed.check(signed, to=TO, call_sid="CA1") == first  # Twilio asking again
    assert placed.check(signed, to=TO, call_sid="CA2") == REUSED
    assert placed.check(signed, to=TO, call_sid=None) == REUSED


def test_ids_are_forgotten_once_their_url_has_expired() -> None:
    clock = Clock()
    placed = PlacedCalls(TOKEN, clock)
    placed.check(query(clock, "Firstcallidxxxxxxxxxxxx", ttl=10), to=TO, call_sid="CA1")
    clock.now += 5
    placed.check(query(clock, "Secondcallidxxxxxxxxxxx", ttl=10), to=TO, call_sid="CA2")
    clock.now += 6  # the first URL has expired, the second has not
    placed.check(query(clock, "Thirdcallidxxxxxxxxxxxx", ttl=10), to=TO, call_sid="CA3")
    assert list(placed._used) == ["Secondcallidxxxxxxxxxxx", "Thirdcallidxxxxxxxxxxxx"]


def test_without_a_token_there_is_no_key() -> None:
    clock = Clock()
    placed = PlacedCalls(None, clock)
    assert placed.key is None
    forged = query(clock).replace("Alice", "Mallory")
    result = placed.check(forged, to=TO, call_sid="CA1")
    assert isinstance(result, CallParameters)
    assert result.parameters["name"] == "Mallory"
    assert PlacedCalls(TOKEN, clock).check(forged, to=TO, call_sid="CA1") == (
        call_parameters.TAMPERED
    )
