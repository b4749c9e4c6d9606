"""What users type for --since, --status and friends."""

from __future__ import annotations

import datetime

import pytest

from callbridge.records import queries

NOW = datetime.datetime(2026, 11, 20, 12, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", NOW - datetime.timedelta(hours=24)),
        ("30m", NOW - datetime.timedelta(minutes=30)),
        ("7d", NOW - datetime.timedelta(days=7)),
        ("2w", NOW - datetime.timedelta(weeks=2)),
        ("90s", NOW - datetime.timedelta(seconds=90)),
        (" 12H ", NOW - datetime.timedelta(hours=12)),
        ("2026-11-01", datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)),
        ("2026-11-01T09:30", datetime.datetime(2026, 11, 1, 9, 30, tzinfo=datetime.UTC)),
        ("2026-11-01T09:30:00Z", datetime.datetime(2026, 11, 1, 9, 30, tzinfo=datetime.UTC)),
        ("2026-11-01T10:30:00+01:00", datetime.datetime(2026, 11, 1, 9, 30, tzinfo=datetime.UTC)),
    ],
)
def test_since(text: str, expected: datetime.datetime) -> None:
    assert queries.parse_since(text, NOW) == expected


@pytest.mark.parametrize(
    "text", ["", "yesterday", "24", "h", "-3d", "2026-11-31", "1y", "99999999999d", "1000000w"]
)
def test_since_refuses_the_rest(text: str) -> None:
    with pytest.raises(ValueError, match="invalid since"):
        queries.parse_since(text, NOW)


def test_status_and_direction() -> None:
    assert queries.parse_status(" No-Answer ") == "no-answer"
    assert queries.parse_direction("INBOUND") == "inbound"
    with pytest.raises(ValueError, match="use one of queued, initiated"):
        queries.parse_status("answered")
    with pytest.raises(ValueError, match="inbound or outbound"):
        queries.parse_direction("both")
