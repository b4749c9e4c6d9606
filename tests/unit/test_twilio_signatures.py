"""Twilio's signatures checked against the URL Twilio called, rebuilt from our settings;
repeats refused within the replay window and remembered for no longer; stream tokens
compared in constant time. Signatures are made with Twilio's own library."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, MultiDict, MultiDictProxy
from twilio.request_validator import RequestValidator

from callbridge.twilio import signatures
from callbridge.twilio.signatures import SignatureError, TwilioAuthenticator, tokens_match
from tests.conftest import AUTH_TOKEN, make_settings

TWILIO = RequestValidator(AUTH_TOKEN)


def authenticator(**overrides: Any) -> TwilioAuthenticator:
    return TwilioAuthenticator(make_settings(hostname=None, **overrides))


def post(path: str, signature: str | None = None, headers: dict[str, str] | None = None) -> Any:
    sent = CIMultiDict(headers or {})
    if signature is not None:
        sent["X-Twilio-Signature"] = signature
    return make_mocked_request("POST", path, headers=sent)


def form(*fields: tuple[str, str]) -> MultiDictProxy[str]:
    return MultiDictProxy(MultiDict(fields))


class Clock:
    """Stands in for the `time` module in twilio.signatures: a monotonic clock we move."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


# --- the URL a signature is checked against -------------------------------------------


def test_the_url_comes_from_public_url_not_from_the_request() -> None:
    auth = authenticator(public_url="https://bridge.example.test/base/")
    request = post(
        "/twiml?x=1", headers={"Host": "attacker.example", "X-Forwarded-Host": "evil.example"}
    )
    assert auth.public_url(request) == "https://bridge.example.test/base/twiml?x=1"


def test_forwarding_headers_count_only_when_trusted() -> None:
    headers = {
        "Host": "internal:3000",
        "X-Forwarded-Proto": "https, http",
        "X-Forwarded-Host": "public.example, proxy.internal",
    }
    trusting = authenticator(public_url=None, callbridge_trust_proxy_headers=True)
    assert (
        trusting.public_url(post("/twiml?x=1", headers=headers))
        == "https://public.example/twiml?x=1"
    )
    # Without X-Forwarded-*, the Host header, and https.
    assert (
        trusting.public_url(post("/status", headers={"Host": "h.example"}))
        == "https://h.example/status"
    )
    untrusting = authenticator(public_url=None)
    assert (
        untrusting.public_url(post("/twiml?x=1", headers=headers))
        == "http://internal:3000/twiml?x=1"
    )


def test_public_url_wins_over_trusted_forwarding_headers() -> None:
    auth = authenticator(
        public_url="https://bridge.example.test", callbridge_trust_proxy_headers=True
    )
    request = post(
        "/twiml", headers={"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}
    )
    assert auth.public_url(request) == "https://bridge.example.test/twiml"


# --- webhooks -----------------------------------------------------------------------


def test_a_signed_webhook_is_accepted_once() -> None:
    auth = authenticator(public_url="https://bridge.example.test")
    fields = form(("CallSid", "CA1"), ("From", "+15550001111"))
    signature = TWILIO.compute_signature("https://bridge.example.test/twiml", fields)
    auth.check_webhook(post("/twiml", signature), fields)
    with pytest.raises(SignatureError) as refused:
        auth.check_webhook(post("/twiml", signature), fields)
    assert refused.value.reason == "replayed request"
    assert refused.value.url == "https://bridge.example.test/twiml"


def test_the_query_is_checked_exactly_as_twilio_requested_it() -> None:
    # Twilio signs the URL as encoded: a decoded query ("%20" read as a space) would not match.
    auth = authenticator(public_url="https://bridge.example.test")
    fields = form(("CallSid", "CA1"))
    path = "/outbound-twiml?to=%2B15557654321&p.name=Al%20ice&p.x=a%26b"
    signature = TWILIO.compute_signature("https://bridge.example.test" + path, fields)
    auth.check_webhook(post(path, signature), fields)


def test_unsigned_and_missigned_webhooks_are_refused() -> None:
    auth = authenticator(public_url="https://bridge.example.test")
    fields = form(("CallSid", "CA1"))
    with pytest.raises(SignatureError) as missing:
        auth.check_webhook(post("/twiml"), fields)
    assert missing.value.reason == "missing X-Twilio-Signature"
    # Signed for another host: the Host header cannot make it match.
    other = TWILIO.compute_signature("https://evil.example/twiml", fields)
    with pytest.raises(SignatureError) as mismatch:
        auth.check_webhook(post("/twiml", other, {"Host": "evil.example"}), fields)
    assert mismatch.value.reason == "signature does not match"
    assert mismatch.value.url == "https://bridge.example.test/twiml"
    # Another token's signature over the right URL.
    forged = RequestValidator("not-the-token").compute_signature(
        "https://bridge.example.test/twiml", fields
    )
    with pytest.raises(SignatureError, match="signature does not match"):
        auth.check_webhook(post("/twiml", forged), fields)


def test_every_value_of_a_repeated_field_is_signed() -> None:
    auth = authenticator(public_url="https://bridge.example.test")
    fields = form(("CallSid", "CA1"), ("Tag", "a"), ("Tag", "b"))
    url = "https://bridge.example.test/status"
    auth.check_webhook(post("/status", TWILIO.compute_signature(url, fields)), fields)
    first_only = TWILIO.compute_signature(url, {"CallSid": "CA1", "Tag": "a"})
    with pytest.raises(SignatureError, match="signature does not match"):
        auth.check_webhook(post("/status", first_only), fields)


@pytest.mark.parametrize(
    "overrides",
    [{"twilio_auth_token": None}, {"callbridge_insecure_skip_signatures": True}],
)
def test_with_signatures_off_nothing_is_checked(overrides: dict[str, Any]) -> None:
    auth = authenticator(public_url="https://bridge.example.test", **overrides)
    assert not auth.enabled
    auth.check_webhook(post("/twiml"), form())
    auth.check_stream_request("/media-stream/c1", "", {}, "http://x/media-stream/c1")
    auth.check_stream_signature("wss://bridge.example.test/media-stream/c1", None)


# --- stream upgrades ----------------------------------------------------------------


def test_a_stream_upgrade_is_signed_over_the_wss_url() -> None:
    auth = authenticator(public_url="https://bridge.example.test")
    url = "wss://bridge.example.test/media-stream/c1?token=t1"
    signature = TWILIO.compute_signature(url, {})
    headers = {"X-Twilio-Signature": signature, "Host": "elsewhere:3000"}
    auth.check_stream_request("/media-stream/c1", "token=t1", headers, "http://elsewhere:3000/")
    with pytest.raises(SignatureError) as refused:
        auth.check_stream_request("/media-stream/c1", "token=t1", headers, "http://x/")
    assert refused.value.reason == "replayed request"
    with pytest.raises(SignatureError) as missing:
        auth.check_stream_request("/media-stream/c1", "token=t1", {}, "http://x/")
    assert missing.value.reason == "missing X-Twilio-Signature on the stream upgrade"


def test_a_stream_signature_over_the_url_with_a_trailing_slash_is_accepted() -> None:
    auth = authenticator(public_url="https://bridge.example.test")
    url = "wss://bridge.example.test/media-stream/c1"
    auth.check_stream_signature(url, TWILIO.compute_signature(url + "/", {}))
    with pytest.raises(SignatureError) as refused:
        auth.check_stream_signature(url, TWILIO.compute_signature(url + "/x", {}))
    assert refused.value.reason == "stream signature does not match"


def test_a_plain_http_public_url_is_signed_as_ws() -> None:
    auth = authenticator(public_url=None, callbridge_trust_proxy_headers=True)
    signature = TWILIO.compute_signature("ws://local.test/media-stream/c1", {})
    headers = {"X-Twilio-Signature": signature, "X-Forwarded-Proto": "http", "Host": "local.test"}
    auth.check_stream_request("/media-stream/c1", "", headers, "http://local.test/")


# --- an instance's own URL (CALLBRIDGE_INSTANCE_URL) ------------------------------------

PUBLIC = "https://bridge.example.test"
OWN = "https://bridge.example.test/i/a"


def test_a_webhook_signed_over_either_base_is_accepted_once() -> None:
    # The load balancer strips /i/a: the request's path is the same either way.
    auth = authenticator(public_url=PUBLIC, callbridge_instance_url=OWN)
    fields = form(("CallSid", "CA1"), ("DialCallStatus", "no-answer"))
    path = "/calls/c1/dial-ended?x=a%20b"
    for base in (PUBLIC, OWN):
        signature = TWILIO.compute_signature(base + path, fields)
        auth.check_webhook(post(path, signature), fields)
        with pytest.raises(SignatureError) as replayed:
            auth.check_webhook(post(path, signature), fields)
        assert replayed.value.reason == "replayed request"
        assert replayed.value.url == base + path


def test_a_webhook_signed_over_a_third_base_is_refused() -> None:
    auth = authenticator(public_url=PUBLIC, callbridge_instance_url=OWN)
    fields = form(("CallSid", "CA1"))
    for other in ("https://bridge.example.test/i/b", "https://evil.example/i/a"):
        signature = TWILIO.compute_signature(other + "/calls/c1/dial-ended", fields)
        with pytest.raises(SignatureError) as refused:
            auth.check_webhook(post("/calls/c1/dial-ended", signature), fields)
        assert refused.value.reason == "signature does not match"
    # Without an instance URL, only PUBLIC_URL's base counts.
    alone = authenticator(public_url=PUBLIC)
    signature = TWILIO.compute_signature(OWN + "/calls/c1/dial-ended", fields)
    with pytest.raises(SignatureError, match="signature does not match"):
        alone.check_webhook(post("/calls/c1/dial-ended", signature), fields)


def test_a_stream_upgrade_signed_over_either_base_is_accepted_once() -> None:
    auth = authenticator(public_url=PUBLIC, callbridge_instance_url=OWN)
    path = "/media-stream/c1/ab12"
    for n, base in enumerate(("wss://bridge.example.test", "wss://bridge.example.test/i/a")):
        signature = TWILIO.compute_signature(base + path, {})
        headers = {"X-Twilio-Signature": signature}
        auth.check_stream_request(path, "", headers, "http://internal:3000" + path)
        with pytest.raises(SignatureError) as replayed:
            auth.check_stream_request(path, "", headers, "http://internal:3000" + path)
        assert replayed.value.reason == "replayed request", n
    third = TWILIO.compute_signature("wss://bridge.example.test/i/b" + path, {})
    with pytest.raises(SignatureError) as refused:
        auth.check_stream_request(path, "", {"X-Twilio-Signature": third}, "http://x" + path)
    assert refused.value.reason == "stream signature does not match"
    # The refusal names the line's URL (the one always checked).
    assert refused.value.url == "wss://bridge.example.test" + path


# --- the replay window --------------------------------------------------------------


def stream_signature(n: int) -> tuple[str, str]:
    url = f"wss://bridge.example.test/media-stream/c{n}"
    return url, TWILIO.compute_signature(url, {})


def test_a_repeat_is_refused_within_the_window_and_accepted_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(signatures, "time", clock)
    auth = authenticator(public_url="https://bridge.example.test")
    url, signature = stream_signature(1)
    auth.check_stream_signature(url, signature)
    clock.now += signatures.REPLAY_WINDOW_SECONDS - 1
    with pytest.raises(SignatureError, match="replayed request"):
        auth.check_stream_signature(url, signature)
    # The refused repeat did not restart the window: it ends a window after the first.
    clock.now += 2
    auth.check_stream_signature(url, signature)
    with pytest.raises(SignatureError, match="replayed request"):
        auth.check_stream_signature(url, signature)


def test_the_replay_memory_is_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signatures, "_REPLAY_MEMORY", 3)
    auth = authenticator(public_url="https://bridge.example.test")
    signed = [stream_signature(n) for n in range(4)]
    for url, signature in signed:
        auth.check_stream_signature(url, signature)
    auth.check_stream_signature(*signed[0])  # forgotten to make room: accepted again
    with pytest.raises(SignatureError, match="replayed request"):
        auth.check_stream_signature(*signed[3])  # the newest is remembered


# --- stream tokens ------------------------------------------------------------------


def test_tokens_match_only_when_both_are_there_and_equal() -> None:
    assert tokens_match("t0k3n", "t0k3n")
    assert not tokens_match("t0k3n", "t0k3m")
    assert not tokens_match("t0k3n", "t0k3n-longer")
    assert not tokens_match("t0k3n", "")
    assert not tokens_match("t0k3n", None)
    assert not tokens_match(None, None)
    assert not tokens_match("", "")
    assert not tokens_match("t0k3n", "tök3n")  # not ASCII: compared as bytes, no error


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[object, object]] = []
    real = secrets.compare_digest

    def compare_digest(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signatures.secrets, "compare_digest", compare_digest)
    token = signatures.new_stream_token()
    assert tokens_match(token, token)
    assert not tokens_match(token, token[::-1])
    assert compared == [(token.encode(), token.encode()), (token.encode(), token[::-1].encode())]


def test_a_refusal_logs_the_checked_url_without_the_callers_query() -> None:
    exc = SignatureError("signature does not match", "https://bridge.example.test/twiml?x=evil")
    assert exc.checked_url == "https://bridge.example.test/twiml"
    assert SignatureError("missing X-Twilio-Signature").checked_url is None
