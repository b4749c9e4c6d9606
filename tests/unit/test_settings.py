"""Where TwiML sends Twilio's stream when streams have a listener of their own."""

from __future__ import annotations

from typing import Any

from callbridge.config import Settings


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_streams_stay_on_the_main_port_by_default() -> None:
    assert settings(public_url="https://bridge.example.com").media_stream_base() is None


def test_the_stream_listener_defaults_to_public_urls_host_on_its_port() -> None:
    s = settings(public_url="https://bridge.example.com", callbridge_media_stream_port=3001)
    assert s.media_stream_base() == "wss://bridge.example.com:3001"
    s = settings(public_url="http://127.0.0.1:3000", callbridge_media_stream_port=3001)
    assert s.media_stream_base() == "ws://127.0.0.1:3001"


def test_an_explicit_stream_url_wins() -> None:
    s = settings(
        public_url="https://bridge.example.com",
        callbridge_media_stream_port=3001,
        callbridge_media_stream_url="wss://streams-abcd.ngrok.app/",
    )
    assert s.media_stream_base() == "wss://streams-abcd.ngrok.app"
