"""The throttle for lines anyone can cause: the first at once, then one an interval per key,
with a count of what was left out."""

from __future__ import annotations

from callbridge.logs import EventLogger
from callbridge.server.log_throttle import LogThrottle
from tests.helpers.log_events import caught


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_line_at_once_then_one_an_interval_with_the_count_left_out() -> None:
    clock = Clock()
    throttle = LogThrottle(interval=10.0, clock=clock)
    assert throttle.admit("a") == 0
    assert [throttle.admit("a") for _ in range(4000)] == [None] * 4000
    assert throttle.admit("b") == 0  # another key is not held back by the first
    clock.now += 9.9
    assert throttle.admit("a") is None
    clock.now += 0.1
    assert throttle.admit("a") == 4001
    clock.now += 60
    assert throttle.admit("a") == 0


def test_memory_is_bounded_by_forgetting_the_least_recent_keys() -> None:
    clock = Clock()
    throttle = LogThrottle(interval=10.0, max_keys=3, clock=clock)
    for key in "abcd":  # "a" is forgotten when "d" arrives
        assert throttle.admit(key) == 0
    assert throttle.admit("a") == 0
    assert throttle.admit("c") is None


def test_warning_says_how_many_lines_were_left_out() -> None:
    clock = Clock()
    throttle = LogThrottle(interval=10.0, clock=clock)
    log = EventLogger("test")
    with caught() as events:
        for _ in range(3):
            throttle.warning(log, "x.refused", ("10.0.0.1", "why"), client="10.0.0.1")
        clock.now += 10
        throttle.warning(log, "x.refused", ("10.0.0.1", "why"), client="10.0.0.1")
    assert events.fields_of("x.refused") == [
        {"client": "10.0.0.1"},
        {"client": "10.0.0.1", "suppressed": 2},
    ]
