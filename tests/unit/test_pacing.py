"""Twilio's side's rate rules (`bridge.pacing`): caller audio at real-time pace, and the
flood budget of messages a second. The runner's use of them is in test_call_runner."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from callbridge.bridge.pacing import (
    FRAME_SECONDS,
    MediaPace,
    MessageBudget,
    admit_media,
    last_media_at,
)


def test_a_burst_of_fifty_frames_is_admitted_then_one_every_frame_time() -> None:
    pace = MediaPace()
    assert [admit_media(pace, 10.0) for _ in range(51)] == [True] * 50 + [False]
    # Within half a frame's time of the slack (the half frame absorbs rounding).
    assert not admit_media(pace, 10.0 + FRAME_SECONDS * 0.25)
    assert admit_media(pace, 10.0 + FRAME_SECONDS * 0.75)
    assert not admit_media(pace, 10.0 + FRAME_SECONDS * 1.25)


def test_a_refused_frame_leaves_the_pace_as_it_was() -> None:
    pace = MediaPace()
    for _ in range(50):
        admit_media(pace, 10.0)
    due = pace.media_due
    assert not admit_media(pace, 10.0)
    assert pace.media_due == due


def test_the_last_frame_came_when_the_pace_admitted_it() -> None:
    pace = MediaPace()
    assert last_media_at(pace) == -math.inf
    admit_media(pace, 7.0)
    assert last_media_at(pace) == 7.0


@given(st.lists(st.floats(0.0, 0.2), max_size=200))
def test_audio_at_or_below_real_time_is_never_refused(late: list[float]) -> None:
    """Frames every 20 ms, each delivered late by any amount up to 200 ms."""
    pace = MediaPace()
    for i, delay in enumerate(late):
        assert admit_media(pace, 1000.0 + FRAME_SECONDS * i + delay)


def test_the_message_budget_is_per_second() -> None:
    budget = MessageBudget(3)
    assert [budget.spend(5.0) for _ in range(4)] == [True, True, True, False]
    assert not budget.spend(5.99)
    assert budget.spend(6.0)
