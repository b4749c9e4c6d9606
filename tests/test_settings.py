"""Settings: .env.example matches what the code reads, misspelt names are pointed out, and
PUBLIC_URL is one Twilio can open a media stream to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from callbridge.config import ConfigError, load_settings, setting_names, unknown_variables

ENV_EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"
# Read, but not offered: HOSTNAME is an older name for PUBLIC_URL, taken only when it is a URL
# (containers set it to their own name), so a new .env should say PUBLIC_URL.
NOT_OFFERED = frozenset({"HOSTNAME"})


def example_variables() -> list[str]:
    """Every `NAME=` line of .env.example, set or commented out."""
    return re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)


def test_env_example_offers_every_setting_the_code_reads() -> None:
    missing = setting_names() - NOT_OFFERED - set(example_variables())
    assert not missing, f"add these to .env.example: {sorted(missing)}"


def test_env_example_offers_only_settings_the_code_reads() -> None:
    unread = set(example_variables()) - setting_names()
    assert not unread, f".env.example offers variables nothing reads: {sorted(unread)}"


def test_env_example_names_each_setting_once() -> None:
    names = example_variables()
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_env_example_has_no_misspelt_names(tmp_path: Path) -> None:
    assert unknown_variables(environ={}, env_file=ENV_EXAMPLE) == []


def test_misspelt_names_are_reported_with_the_closest_setting(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "CALLBRIDGE_SPOL_PATH=spool.jsonl\n"
        "PUBLC_URL=https://x.ngrok.app\n"  # no prefix, but .env is callbridge's own file
        "COMPOSE_PROJECT_NAME=bridge\n"  # another tool's, and like no setting
        "TWILIO_AUTHTOKEN=twice\n"  # also in the environment: reported once
    )
    environ = {
        "TWILIO_AUTHTOKEN": "x",
        "ASSEMBLY_API_KEY": "x",
        "callbridge_idle_secs": "5",  # names are read regardless of case
        "CALLBRIDGE_MEDIA_STREAM_PORT": "3001",
        "CALLBRIDGE_WHATEVER": "1",
        "PUBLC_URL": "x",  # the environment is everyone's: only our prefixes count there
        "PATH": "/usr/bin",
    }
    found = {v.name: (v.source, v.hint) for v in unknown_variables(environ, env_file)}
    assert found == {
        "CALLBRIDGE_SPOL_PATH": (str(env_file), "did you mean CALLBRIDGE_SPOOL_PATH?"),
        "PUBLC_URL": (str(env_file), "did you mean PUBLIC_URL?"),
        "TWILIO_AUTHTOKEN": ("environment", "did you mean TWILIO_AUTH_TOKEN?"),
        "ASSEMBLY_API_KEY": ("environment", "did you mean ASSEMBLYAI_API_KEY?"),
        "CALLBRIDGE_IDLE_SECS": ("environment", "did you mean CALLBRIDGE_IDLE_SECONDS?"),
        "CALLBRIDGE_MEDIA_STREAM_PORT": (
            "environment",
            "it was removed: Media Streams are served on PORT",
        ),
        "CALLBRIDGE_WHATEVER": ("environment", "no setting has a similar name"),
    }


def test_settings_and_what_others_read_are_not_reported(tmp_path: Path) -> None:
    environ = {name: "x" for name in setting_names()}
    # Twilio's helper library reads these; the test suite the last.
    environ |= {"TWILIO_EDGE": "dublin", "TWILIO_REGION": "ie1", "CALLBRIDGE_REQUIRE_SERVICES": "1"}
    assert unknown_variables(environ, tmp_path / "no-such.env") == []


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


@pytest.mark.parametrize("value", ["+15551234567", "sip:desk@pbx.example.com"])
def test_transfer_to_is_a_number_or_a_sip_address(value: str) -> None:
    assert load_settings(_env_file=None, callbridge_transfer_to=value).callbridge_transfer_to


@pytest.mark.parametrize("value", ["5551234567", "desk@example.com", "tel:+1555"])
def test_transfer_to_anything_else_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^CALLBRIDGE_TRANSFER_TO: must be an E\.164 number"):
        load_settings(_env_file=None, callbridge_transfer_to=value)


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://:pw@h/1", "unix:///run/r.sock"])
def test_redis_url_takes_the_redis_schemes(url: str) -> None:
    assert load_settings(_env_file=None, redis_url=url).redis_url == url


def test_redis_url_of_another_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL: must be a redis://"):
        load_settings(_env_file=None, redis_url="http://h:6379")


def test_instance_url_is_an_http_url_like_public_url() -> None:
    settings = load_settings(_env_file=None, callbridge_instance_url="https://x.example/i/a/")
    assert settings.callbridge_instance_url == "https://x.example/i/a"
    assert settings.masked()["CALLBRIDGE_INSTANCE_URL"] == "https://x.example/i/a"
    local = load_settings(_env_file=None, callbridge_instance_url="http://127.0.0.1:8080/i/a")
    assert local.callbridge_instance_url == "http://127.0.0.1:8080/i/a"
    assert load_settings(_env_file=None).callbridge_instance_url is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://x.example/i/a", r"must be an https:// URL \(Twilio"),
        ("wss://x.example/i/a", "must be an http"),
        ("https://x.example/i/a?x=1", "must not have a query string"),
    ],
)
def test_an_unusable_instance_url_is_refused(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=rf"^CALLBRIDGE_INSTANCE_URL: {why}"):
        load_settings(_env_file=None, callbridge_instance_url=url)
