"""Signed call parameters: what is encoded decodes to the same values, and any change to
them, their number, their expiry or their signature is refused; the limits give errors
that name the field."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbridge.twilio import call_parameters as cp
from callbridge.twilio.call_parameters import CallParameters, ParameterError, Refusal

KEY = cp.parameters_key("test-auth-token")
NOW = 1_800_000_000.0
TO = "+15557654321"
CALL_ID = "Abcdefghijklmnop1234567"

keys = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,39}", fullmatch=True)
values = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs", "Cf", "Co", "Cn")),
    max_size=40,
) | st.text(alphabet=st.sampled_from("ab =&+%#?/é"), max_size=40)
parameter_maps = st.dictionaries(keys, values, max_size=8)
bots = st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)


def encode(**overrides: object) -> str:
    args: dict[str, object] = {
        "call_id": CALL_ID,
        "to": TO,
        "key": KEY,
        "now": NOW,
        "parameters": {"name": "Alice", "order": "1234"},
        "bot": "sales",
    }
    args.update(overrides)
    return cp.encode(**args)  # type: ignore[arg-type]


def decode(query: str, **overrides: object) -> CallParameters | Refusal:
    args: dict[str, object] = {"key": KEY, "to": TO, "now": NOW + 10}
    args.update(overrides)
    return cp.decode(query, **args)  # type: ignore[arg-type]


def requery(query: str, change: dict[str, str | None]) -> str:
    """The query with some fields replaced (None: removed), encoded as we encode."""
    pairs = dict(parse_qsl(query, keep_blank_values=True))
    for name, value in change.items():
        if value is None:
            pairs.pop(name, None)
        else:
            pairs[name] = value
    return urlencode(list(pairs.items()), quote_via=quote, safe="")


# --- round trip ------------------------------------------------------------------------


def test_what_is_encoded_decodes_to_the_same_values() -> None:
    result = decode(encode())
    assert isinstance(result, CallParameters)
    assert result.call_id == CALL_ID
    assert result.to == TO
    assert result.bot == "sales"
    assert dict(result.parameters) == {"name": "Alice", "order": "1234"}
    assert result.expires_at == int(NOW) + cp.DEFAULT_TTL_SECONDS


@settings(max_examples=200)
@given(parameters=parameter_maps, bot=bots)
def test_any_parameters_round_trip(parameters: dict[str, str], bot: str | None) -> None:
    try:
        query = encode(parameters=parameters, bot=bot)
    except ParameterError:
        return  # beyond the limits (too large once encoded, say): refused before placing
    result = decode(query)
    assert isinstance(result, CallParameters), result
    assert dict(result.parameters) == parameters
    assert result.bot == bot


@settings(max_examples=300)
@given(
    parameters=parameter_maps,
    position=st.integers(min_value=0),
    replacement=st.characters(min_codepoint=32, max_codepoint=126),
)
def test_any_change_to_the_query_is_refused_or_changes_nothing(
    parameters: dict[str, str], position: int, replacement: str
) -> None:
    query = encode(parameters=parameters)
    index = position % len(query)
    changed = query[:index] + replacement + query[index + 1 :]
    result = decode(changed)
    original = decode(query)
    # A different spelling of the same values (%41 for A) is the same call; anything else
    # is refused.
    assert isinstance(result, Refusal) or result == original


@settings(max_examples=200)
@given(
    parameters=parameter_maps,
    name=keys,
    value=values,
)
def test_a_changed_or_added_parameter_is_refused(
    parameters: dict[str, str], name: str, value: str
) -> None:
    query = encode(parameters=parameters)
    if parameters.get(name) == value:
        return
    assert decode(requery(query, {f"p.{name}": value})) == cp.TAMPERED


@settings(max_examples=100)
@given(parameters=parameter_maps.filter(bool), data=st.data())
def test_a_removed_parameter_is_refused(parameters: dict[str, str], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(parameters)))
    assert decode(requery(encode(parameters=parameters), {f"p.{name}": None})) == cp.TAMPERED


@pytest.mark.parametrize(
    "change",
    [
        {"id": "Zbcdefghijklmnop1234567"},
        {"to": "+15550000000"},
        {"exp": str(int(NOW) + 10 * cp.DEFAULT_TTL_SECONDS)},
        {"bot": "support"},
        {"bot": None},
        {"mac": "A" * 43},
    ],
    ids=["call id", "number", "expiry", "bot", "bot removed", "mac"],
)
def test_a_changed_field_is_refused(change: dict[str, str | None]) -> None:
    assert decode(requery(encode(), change)) == cp.TAMPERED


def test_another_key_is_refused() -> None:
    assert decode(encode(), key=cp.parameters_key("another-token")) == cp.TAMPERED


def test_without_a_key_the_mac_is_not_checked_but_the_rest_is() -> None:
    forged = requery(encode(), {"p.name": "Mallory"})
    result = decode(forged, key=None)
    assert isinstance(result, CallParameters)
    assert result.parameters["name"] == "Mallory"
    assert decode(encode(), key=None, now=NOW + cp.DEFAULT_TTL_SECONDS + 1) == cp.EXPIRED
    assert decode(encode(), key=None, to="+15550000000") == cp.OTHER_NUMBER


def test_expired_and_other_number() -> None:
    query = encode(ttl_seconds=60)
    assert isinstance(decode(query, now=NOW + 60), CallParameters)
    assert decode(query, now=NOW + 61) == cp.EXPIRED
    assert decode(query, to="+15550000000") == cp.OTHER_NUMBER


@pytest.mark.parametrize(
    "query",
    [
        "",
        "v=1",
        "no-equals-sign",
        "v=2&id=x&to=y&exp=1&mac=z",
        encode() + "&extra=1",
        encode() + "&p.name=twice",
        encode() + "&v=1",
        requery(encode(), {"exp": "soon"}),
        encode().replace("Alice", "%FF"),
    ],
    ids=[
        "empty",
        "fields missing",
        "not a pair",
        "unknown version",
        "unknown field",
        "parameter twice",
        "field twice",
        "expiry not a number",
        "not UTF-8",
    ],
)
def test_malformed_queries_are_refused(query: str) -> None:
    assert decode(query) == cp.MALFORMED


def test_too_large_queries_are_refused_before_they_are_parsed() -> None:
    assert decode("p.a=" + "x" * cp.MAX_QUERY_CHARS) == cp.TOO_LARGE
    many = "&".join(f"p.k{i}=v" for i in range(cp.MAX_PARAMETERS + 7))
    assert decode(many) == cp.TOO_LARGE


# --- limits, at placing time -----------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "bot", "field", "says"),
    [
        ({f"k{i}": "v" for i in range(cp.MAX_PARAMETERS + 1)}, None, "parameters", "at most 20"),
        ({"1name": "v"}, None, "parameters", "starting with a letter"),
        ({"na me": "v"}, None, "parameters", "letters, digits"),
        ({"k" * (cp.MAX_KEY_CHARS + 1): "v"}, None, "parameters", "1 to 40"),
        ({"name": "x" * (cp.MAX_VALUE_CHARS + 1)}, None, "parameters.name", "at most 256"),
        ({"name": "two\nlines"}, None, "parameters.name", "printable"),
        ({}, "bad bot", "bot", "bot name"),
        ({}, "b" * (cp.MAX_BOT_NAME_CHARS + 1), "bot", "bot name"),
    ],
)
def test_limits_give_an_error_naming_the_field(
    parameters: dict[str, str], bot: str | None, field: str, says: str
) -> None:
    with pytest.raises(ParameterError, match=says) as caught:
        encode(parameters=parameters, bot=bot)
    assert caught.value.field == field


def test_the_whole_query_has_a_limit() -> None:
    big = {f"k{i}": "é" * cp.MAX_VALUE_CHARS for i in range(4)}  # 6 bytes per é, encoded
    with pytest.raises(ParameterError, match="at most 2000") as caught:
        encode(parameters=big)
    assert caught.value.field == "parameters"


@pytest.mark.parametrize(
    ("given_to", "expected"),
    [
        ("+15557654321", "+15557654321"),
        ("+1 (555) 765-4321", "+15557654321"),
        ("+1.555.765.4321", "+15557654321"),
        ("client:alice", "client:alice"),
        ("sip:alice@example.com", "sip:alice@example.com"),
    ],
)
def test_numbers_are_signed_as_twilio_sends_them_back(given_to: str, expected: str) -> None:
    result = decode(encode(to=given_to), to=expected)
    assert isinstance(result, CallParameters)
    assert result.to == expected


@pytest.mark.parametrize("bad", ["12345", "5557654321", "+0123", "call me", ""])
def test_a_number_that_is_not_e164_is_refused_before_placing(bad: str) -> None:
    with pytest.raises(ParameterError, match="not a valid phone number") as caught:
        encode(to=bad)
    assert caught.value.field == "to"


@pytest.mark.parametrize(
    ("text", "pair"),
    [("name=Alice", ("name", "Alice")), ("expr=a=b", ("expr", "a=b")), ("empty=", ("empty", ""))],
)
def test_assignments(text: str, pair: tuple[str, str]) -> None:
    assert cp.parse_assignment(text) == pair


@pytest.mark.parametrize("text", ["name", "=value", ""])
def test_malformed_assignments(text: str) -> None:
    with pytest.raises(ParameterError, match="is not name=value"):
        cp.parse_assignment(text)
