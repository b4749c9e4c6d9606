"""The spool file on its own: its line format, torn tails, locking, reading in batches."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callbridge.records import spool
from callbridge.records.entries import CallAction
from callbridge.records.spool import Spool, SpoolError

from .conftest import full_call

_text = st.text(max_size=40)


@given(
    st.lists(
        st.builds(
            spool.KINDS["TranscriptLine"],
            call_id=_text,
            seq=st.integers(0, 2**31),
            at=st.floats(0, 4e9),
            role=st.sampled_from(["caller", "agent"]),
            text=_text,
            reply_id=st.none() | _text,
            interrupted=st.booleans(),
            heard_seconds=st.none() | st.floats(0, 100),
        ),
        max_size=5,
    )
)
def test_entries_round_trip_through_spool_lines(entries: list[object]) -> None:
    data = spool.encode(entries)  # type: ignore[arg-type]
    assert [spool.decode(line) for line in data.splitlines()] == entries


def test_every_kind_of_entry_round_trips() -> None:
    entries = full_call()
    assert [spool.decode(line) for line in spool.encode(entries).splitlines()] == entries


def test_lines_spooled_before_verbs_and_actions_were_one_kind_still_decode() -> None:
    # A spool written by an earlier version: the verbs had a kind of their own, and the
    # actions had no `by` or `detail`.
    verb = (
        b'["CallVerb",{"call_id":"c","seq":4,"at":10.5,"verb":"keypad-entry",'
        b'"by":"caller","outcome":"entered","detail":"3 keys"}]'
    )
    action = (
        b'["CallAction",{"call_id":"c","seq":5,"at":11.0,"verb":"transfer",'
        b'"outcome":"busy","target":"sales","started_at":9.0}]'
    )
    assert spool.decode(verb) == CallAction(
        "c", 4, 10.5, "keypad-entry", "entered", by="caller", detail="3 keys"
    )
    assert spool.decode(action) == CallAction("c", 5, 11.0, "transfer", "busy", "sales", 9.0)
    assert spool.decode(b'["CallVerb",{"call_id":"c","seq":4}]') is None


@pytest.mark.parametrize(
    "line", [b"", b"{", b'["NoSuchKind",{}]', b'["TranscriptLine",{"call_id":1}]', b"[1,2,3]"]
)
def test_lines_that_are_not_entries_decode_to_none(line: bytes) -> None:
    assert spool.decode(line) is None


def test_a_torn_tail_is_cut_on_open(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    whole = spool.encode(full_call()[:3])
    path.write_bytes(whole + b'["CallOpened",{"call_id":"x"')
    s = Spool(path)
    assert s.open() == len(whole)
    assert path.read_bytes() == whole
    start, end = s.append(spool.encode(full_call()[3:4]))
    assert start == len(whole)
    lines, position = s.read(0, end, 100)
    assert [spool.decode(line) for line in lines] == full_call()[:4]
    assert position == end
    s.close()


def test_a_file_that_is_all_torn_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.write_bytes(b"x" * 100_000)  # no newline at all
    s = Spool(path)
    assert s.open() == 0
    s.close()
    assert not path.exists()


def test_reads_come_in_batches_of_whole_lines(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool")
    s.open()
    entries = full_call()
    _, end = s.append(spool.encode(entries))
    got, position = [], 0
    while position < end:
        lines, position = s.read(position, end, 4)
        assert 1 <= len(lines) <= 4
        got += lines
    assert [spool.decode(line) for line in got] == entries
    s.reset()
    assert s.size == 0 and os.path.getsize(tmp_path / "spool") == 0
    s.close()


def test_the_spool_is_private_and_exclusive(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool")
    first.open()
    first.append(b"[]\n")
    assert stat.S_IMODE(os.stat(tmp_path / "spool").st_mode) == 0o600
    with pytest.raises(SpoolError, match="in use by another process"):
        Spool(tmp_path / "spool").open()
    first.close()
    assert (tmp_path / "spool").exists(), "a spool with entries in it is kept"
    second = Spool(tmp_path / "spool")
    assert second.open() == 3
    second.close()


def test_a_range_not_ending_in_a_newline_is_read_to_its_end(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool")
    s.open()
    _, end = s.append(b'["CallOpened",{}]\n["Transcr')  # only by corruption, never by append
    lines, position = s.read(0, end, 100)
    assert (lines, position) == ([b'["CallOpened",{}]', b'["Transcr'], end)
    s.close()
