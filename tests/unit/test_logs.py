"""JSON log lines: one object per line, whatever a field holds."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from callbridge.logs import ConsoleFormatter, JsonFormatter, configure


def _line(**fields: object) -> dict[str, object]:
    record = logging.LogRecord("callbridge.call", logging.INFO, "", 0, "call.ended", (), None)
    record.fields = {"call_id": "c1", **fields}
    text = JsonFormatter().format(record)
    assert "\n" not in text
    parsed: dict[str, object] = json.loads(text)
    return parsed


def test_plain_fields_are_written_as_json_values() -> None:
    line = _line(frames=3, ratio=0.5, ok=True, none=None, counts={"a": 1}, ids=("x", "y"))
    assert line["event"] == "call.ended" and line["level"] == "info"
    assert line["call_id"] == "c1" and line["frames"] == 3 and line["ratio"] == 0.5
    assert line["ok"] is True and line["none"] is None
    assert line["counts"] == {"a": 1} and line["ids"] == ["x", "y"]


def test_other_values_are_written_as_text_and_odd_keys_do_not_lose_the_line() -> None:
    line = _line(
        path=Path("/tmp/spool"),
        error=ValueError("boom"),
        nan=math.nan,
        by_pair={("a", 1): 2},
        nested={"inner": {3: Path("/x")}},
    )
    assert line["path"] == "/tmp/spool" and line["error"] == "boom"
    assert line["nan"] is None
    assert line["by_pair"] == {"('a', 1)": 2}
    assert line["nested"] == {"inner": {"3": "/x"}}


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_a_field_that_cannot_be_written_still_leaves_the_line() -> None:
    loop: dict[str, object] = {}
    loop["self"] = loop
    line = _line(bad=_Unprintable(), frames=3)
    assert line["event"] == "call.ended" and line["frames"] == "3"
    assert line["bad"] == "<_Unprintable that cannot be shown>"
    assert _line(loop=loop)["event"] == "call.ended"


def _console(level: int = logging.INFO, **fields: object) -> str:
    record = logging.LogRecord("callbridge.call", level, "", 0, "call.ended", (), None)
    record.created = 1_795_000_000.25  # 2026-11-18 11:06:40.250 UTC
    record.fields = fields
    return ConsoleFormatter().format(record)


def test_a_console_line_starts_with_when_it_was_logged() -> None:
    line = _console(call_id="c1", reason="stream-stopped")
    assert line == "2026-11-18 11:06:40.250Z INFO    [c1] call.ended reason=stream-stopped"


def test_console_fields_stay_readable_and_one_line() -> None:
    line = _console(
        call_id="c1", detail="no media for 30 s", dropped={"before-ready": 1, "ending": 2}, x=None
    )
    assert "\n" not in line
    assert line.endswith(
        'call.ended detail="no media for 30 s" dropped=before-ready:1,ending:2 x=-'
    )


def test_library_errors_are_one_json_line_with_the_traceback_in_its_own_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    library = logging.getLogger("aiohttp.server")
    touched = [logging.getLogger(n) for n in ("callbridge", "aiohttp", "asyncio")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in touched]
    try:
        configure("INFO", "json")
        try:
            raise ValueError("bad body")
        except ValueError:
            library.exception("Error handling request from %s", "192.0.2.7")
        library.info("below the libraries' level")
    finally:
        for lg, (handlers, level, propagate) in zip(touched, saved, strict=True):
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert line["logger"] == "aiohttp.server"
    assert line["event"] == "Error handling request from 192.0.2.7"
    assert "Traceback" in line["exception"] and "ValueError: bad body" in line["exception"]
