"""Settings: PUBLIC_URL is one Twilio can open a media stream to."""

from __future__ import annotations

import pytest

from callbridge.config import ConfigError, load_settings


@pytest.mark.parametrize(
    "url",
    [
        "https://x.ngrok.app",
        "http://localhost:3000",
        "http://127.0.0.1:3000",
        "http://127.8.9.10",
        "http://[::1]:3000",
    ],
)
def test_public_url_is_https_or_on_this_machine(url: str) -> None:
    assert load_settings(_env_file=None, public_url=url).public_url == url


@pytest.mark.parametrize("url", ["http://x.ngrok.app", "http://10.0.0.5:3000", "http://0.0.0.0"])
def test_public_url_without_https_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^PUBLIC_URL: must be an https:// URL \(Twilio"):
        load_settings(_env_file=None, public_url=url)


def test_hostname_read_as_public_url_must_be_https_too() -> None:
    with pytest.raises(ConfigError, match=r"^HOSTNAME \(read as PUBLIC_URL\): must be an https"):
        load_settings(_env_file=None, hostname="http://x.ngrok.app")
    # Ignored when PUBLIC_URL is set, as it is when it is not a URL.
    settings = load_settings(
        _env_file=None, hostname="http://x.ngrok.app", public_url="https://y.ngrok.app"
    )
    assert settings.public_url == "https://y.ngrok.app"
    assert load_settings(_env_file=None, hostname="3f2a9c1d7e4b").public_url is None
