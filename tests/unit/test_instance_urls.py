"""The URLs a call comes back by: this instance's own base (CALLBRIDGE_INSTANCE_URL, else
PUBLIC_URL), its WebSocket form, and what an instance tells the others about itself."""

from __future__ import annotations

from callbridge.server.call_registry import CallRegistry
from callbridge.server.instance_urls import direct_url, own_base_url, ws_base
from callbridge.server.shared_state import LocalState
from tests.conftest import PUBLIC_URL, make_settings

OWN = "https://callbridge.example.test/i/a"


def test_the_own_base_is_the_instance_url_else_the_public_url() -> None:
    assert own_base_url(make_settings(callbridge_instance_url=OWN + "/")) == OWN
    assert own_base_url(make_settings()) == PUBLIC_URL
    assert own_base_url(make_settings(public_url=None)) is None


def test_the_websocket_form_follows_the_scheme() -> None:
    assert ws_base("https://h.example/p/") == "wss://h.example/p"
    assert ws_base("http://127.0.0.1:8080/i/a") == "ws://127.0.0.1:8080/i/a"


def test_only_an_instance_url_addresses_one_of_several_instances() -> None:
    redis = "redis://127.0.0.1:6379/0"
    assert direct_url(make_settings(redis_url=redis, callbridge_instance_url=OWN)) == OWN
    # PUBLIC_URL reaches any of them: it addresses none.
    assert direct_url(make_settings(redis_url=redis)) is None
    # Alone, PUBLIC_URL reaches this one.
    assert direct_url(make_settings()) == PUBLIC_URL


async def test_one_instance_knows_only_its_own_url() -> None:
    shared = LocalState(CallRegistry(), "box", OWN)
    assert await shared.instance_url("box") == OWN
    assert await shared.instance_url("other") is None
    assert await LocalState(CallRegistry(), "box").instance_url("box") is None
