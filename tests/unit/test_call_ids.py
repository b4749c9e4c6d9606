"""Call ids: unguessable, and safe to type as a command-line argument."""

from __future__ import annotations

import base64
import re

from callbridge.server.call_registry import new_call_id


def test_call_ids_never_start_with_a_dash_or_an_underscore() -> None:
    # One id in 32 would, if the first character were as random as the rest.
    ids = [new_call_id() for _ in range(10_000)]
    assert [i for i in ids if i[0] in "-_"] == []
    assert {i[0] for i in ids} == set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    )


def test_call_ids_keep_128_random_bits() -> None:
    ids = [new_call_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    for call_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{22}", call_id), call_id
        assert len(base64.urlsafe_b64decode(call_id[1:] + "==")) == 16
