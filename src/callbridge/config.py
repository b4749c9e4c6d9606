"""Settings from the environment or a `.env` file. The variable names are the interface."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from callbridge.verbs import is_address

DEFAULT_AGENT_URL = "wss://agents.assemblyai.com/v1/ws"
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_VOICE = re.compile(r"^[a-z][a-z0-9_-]*$")

# A variable with one of these prefixes that is not a setting is most likely a misspelt one.
_OUR_PREFIXES = ("CALLBRIDGE_", "TWILIO_", "ASSEMBLYAI_", "ASSEMBLY_")
# Read by others, so never reported: Twilio's helper library reads these two (callbridge
# hands it an empty environment, so they change nothing here), the test suite the last.
_READ_BY_OTHERS = frozenset({"TWILIO_EDGE", "TWILIO_REGION", "CALLBRIDGE_REQUIRE_SERVICES"})
_REMOVED = {
    "CALLBRIDGE_MEDIA_STREAM_PORT": "Media Streams are served on PORT",
    "CALLBRIDGE_MEDIA_STREAM_URL": "the stream URL is built from PUBLIC_URL",
}


DEFAULT_BOT_NAME = "default"  # CALLBRIDGE_BOT's, for the numbers CALLBRIDGE_NUMBERS leaves out
_BOT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.replace(",", " ").split():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"expected {what} pairs separated by spaces or commas, got {item!r}")
        pairs.append((key, value))
    return pairs


def parse_bots(text: str) -> dict[str, str]:
    """CALLBRIDGE_BOTS: `name=module:attribute` or `name=path/to/file.py:attribute` pairs."""
    bots: dict[str, str] = {}
    for name, spec in _pairs(text, "name=module:attribute"):
        if not _BOT_NAME.match(name):
            raise ValueError(
                f"bot name {name!r}: a letter, then letters, digits, '-' or '_' (40 at most)"
            )
        if name == DEFAULT_BOT_NAME:
            raise ValueError(f"bot name {name!r} is CALLBRIDGE_BOT's; pick another name")
        if name in bots:
            raise ValueError(f"bot {name!r} is named twice")
        if ":" not in spec:
            raise ValueError(f"bot {name!r}: expected module:attribute, got {spec!r}")
        bots[name] = spec
    return bots


def parse_numbers(text: str) -> dict[str, str]:
    """CALLBRIDGE_NUMBERS: `+15551230001=botname` pairs."""
    numbers: dict[str, str] = {}
    for number, name in _pairs(text, "+number=botname"):
        if not _E164.match(number):
            raise ValueError(f"{number!r} is not an E.164 number such as +15551234567")
        if number in numbers:
            raise ValueError(f"{number} is listed twice")
        numbers[number] = name
    return numbers


class ConfigError(Exception):
    """One line naming the variable and what is wrong with it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", env_ignore_empty=True, extra="ignore"
    )

    assemblyai_api_key: SecretStr | None = None
    assemblyai_agent_url: str = DEFAULT_AGENT_URL
    public_url: str | None = None
    # The seed project's name for PUBLIC_URL. Containers set HOSTNAME to their own name,
    # so it only counts when it is a URL.
    hostname: str | None = None
    host: str = "0.0.0.0"
    port: int = Field(default=3000, ge=1, le=65535)
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_phone_number: str | None = None
    target_phone_number: str | None = None
    twilio_api_base_url: str | None = None
    agent_voice: str | None = None
    callbridge_bot: str = "callbridge.bot:bot"
    # More bots by name (`sales=mybots:sales support=./support.py:bot`), and which Twilio
    # number each answers (`+15551230001=sales`); numbers not listed get CALLBRIDGE_BOT.
    callbridge_bots: str | None = None
    callbridge_numbers: str | None = None
    # How long a bot's per-call set-up may take before the call gets the bot's defaults.
    callbridge_setup_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    database_url: str = "sqlite:///callbridge.db"  # call records
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    callbridge_max_message_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)

    # Security and limits
    callbridge_insecure_skip_signatures: bool = False
    callbridge_trust_proxy_headers: bool = False
    max_calls: int = Field(default=200, ge=1, le=100_000)
    max_call_seconds: float = Field(default=3600.0, ge=5, le=4 * 3600)
    callbridge_idle_seconds: float = Field(default=10.0, ge=1, le=600)
    # The built-in bot's transfer target, "a person": an E.164 number or a sip: address.
    callbridge_transfer_to: str | None = None
    # The caller's silence (for bots without rules of their own): check in after this many
    # seconds, this many times (0: never), then say goodbye and hang up.
    callbridge_silence_prompt_seconds: float = Field(default=10.0, gt=0, le=600)
    callbridge_silence_prompts: int = Field(default=2, ge=0, le=10)
    # A hang-up waits for the agent's goodbye to be heard (Twilio's mark); at most this long.
    callbridge_goodbye_wait_seconds: float = Field(default=15.0, gt=0, le=120)
    # A stream that breaks without `stop`: how long the call waits for Twilio to open the
    # next one (the `<Redirect>` after `</Connect>`), keeping its agent session (0: the
    # call ends at once, and the TwiML has no `<Redirect>`).
    callbridge_stream_lost_seconds: float = Field(default=10.0, ge=0, le=60)
    callbridge_max_messages_per_second: int = Field(default=200, ge=60, le=100_000)
    # Connections: how long a client may take to send a request, how long an idle
    # keep-alive connection is kept, and how many connections one address may hold
    # (unset: twice MAX_CALLS plus 100, so Twilio is never refused; see README, Security).
    callbridge_request_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    callbridge_keepalive_seconds: float = Field(default=75.0, gt=0, le=3600)
    callbridge_max_connections_per_client: int | None = Field(default=None, ge=1)

    # Resilience
    drain_seconds: float = Field(default=30.0, ge=0, le=3600)
    callbridge_agent_retry_seconds: float = Field(default=10.0, ge=0, le=60)
    # The common audio frame relayed at C level when the compiled module is built (see
    # callbridge/fast_path); off: every frame takes the full path.
    callbridge_fast_path: bool = True
    # The upstream socket's library: picows (default, cheapest per frame) or aiohttp.
    callbridge_agent_transport: Literal["picows", "aiohttp"] = "picows"
    # Which library serves Media Streams on the main port: picows (default, a quarter less
    # server CPU per frame) or aiohttp (which serves everything else either way).
    callbridge_media_stream_transport: Literal["picows", "aiohttp"] = "picows"

    # Call records
    store_transcripts: bool = True
    retention_days: int | None = Field(default=None, ge=1)
    callbridge_api_token: SecretStr | None = None
    callbridge_spool_path: str = "callbridge-spool.jsonl"
    callbridge_instance_id: str | None = None

    # Scale-out (docs/scaling.md): instances answering one line share live state in Redis.
    redis_url: str | None = None
    max_calls_global: int | None = Field(default=None, ge=1, le=10_000_000)
    callbridge_redis_prefix: str = Field(default="callbridge", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    # An instance silent this long is lost: the others close its calls in the records.
    callbridge_instance_timeout_seconds: float = Field(default=15.0, ge=0.3, le=600)
    # With Redis unreachable: admit new calls on each instance's own limits, or refuse them.
    callbridge_redis_down: Literal["local", "refuse"] = "local"
    # Bind the port with SO_REUSEPORT, beside other processes (`serve --workers` sets it).
    callbridge_reuse_port: bool = False
    # The public URL that reaches this instance alone (the load balancer routes it here):
    # the base of the URLs a call comes back by (a failed transfer, keypad tones).
    callbridge_instance_url: str | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("assemblyai_agent_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("wss", "ws") or not parts.hostname:
            raise ValueError("must be a wss:// URL (ws:// only for local fakes)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis:// (or rediss://, unix://) URL")
        return value

    @field_validator("public_url", "twilio_api_base_url", "callbridge_instance_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://example.ngrok.app")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query string or fragment")
        return value.rstrip("/")

    @field_validator("public_url", "callbridge_instance_url")
    @classmethod
    def _public_https(cls, value: str | None) -> str | None:
        if value is not None:
            _require_https(value)
        return value

    @field_validator("callbridge_transfer_to")
    @classmethod
    def _transfer_to(cls, value: str | None) -> str | None:
        if value is not None and not is_address(value):
            raise ValueError("must be an E.164 number (+15551234567) or a sip: address")
        return value

    @field_validator("twilio_account_sid")
    @classmethod
    def _account_sid(cls, value: str | None) -> str | None:
        if value is not None and not _ACCOUNT_SID.match(value):
            raise ValueError("must look like AC followed by 32 hex digits (see the Twilio console)")
        return value

    @field_validator("twilio_phone_number", "target_phone_number")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is not None and not _E164.match(value):
            raise ValueError("must be an E.164 number such as +15551234567")
        return value

    @field_validator("callbridge_bots")
    @classmethod
    def _bots(cls, value: str | None) -> str | None:
        if value is not None:
            parse_bots(value)  # ValueError says what is wrong
        return value

    @field_validator("callbridge_numbers")
    @classmethod
    def _numbers(cls, value: str | None) -> str | None:
        if value is not None:
            parse_numbers(value)
        return value

    @model_validator(mode="after")
    def _numbers_name_bots(self) -> Settings:
        if self.callbridge_numbers:
            named = {DEFAULT_BOT_NAME, *parse_bots(self.callbridge_bots or "")}
            for number, name in parse_numbers(self.callbridge_numbers).items():
                if name not in named:
                    raise ValueError(
                        f"CALLBRIDGE_NUMBERS: {number} is given to bot {name!r}, which "
                        f"CALLBRIDGE_BOTS does not name (named: {', '.join(sorted(named))})"
                    )
        return self

    @property
    def bot_specs(self) -> dict[str, str]:
        """Every bot by name: `default` is CALLBRIDGE_BOT, the others CALLBRIDGE_BOTS's."""
        return {DEFAULT_BOT_NAME: self.callbridge_bot, **parse_bots(self.callbridge_bots or "")}

    @property
    def bot_numbers(self) -> dict[str, str]:
        """The bot's name for each Twilio number listed in CALLBRIDGE_NUMBERS."""
        return parse_numbers(self.callbridge_numbers or "")

    @field_validator("agent_voice")
    @classmethod
    def _voice(cls, value: str | None) -> str | None:
        if value is not None and not _VOICE.match(value):
            raise ValueError("voice names are lower-case words such as 'alba' (case matters)")
        return value

    @model_validator(mode="after")
    def _public_url_from_hostname(self) -> Settings:
        if self.public_url is None and self.hostname:
            parts = urlsplit(self.hostname)
            if parts.scheme in ("https", "http") and parts.hostname:
                try:
                    _require_https(self.hostname)
                except ValueError as exc:
                    raise ValueError(f"HOSTNAME (read as PUBLIC_URL): {exc}") from None
                self.public_url = self.hostname.rstrip("/")
        return self

    def masked(self) -> dict[str, object]:
        """Every setting by its variable name, secrets shown only as set or not set."""
        shown: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "<set, hidden>"
            elif isinstance(value, str) and "@" in value and "://" in value:
                value = _without_password(value)
            shown[name.upper()] = value
        shown["SIGNATURES_CHECKED"] = (
            self.auth_token is not None and not self.callbridge_insecure_skip_signatures
        )
        return shown

    @property
    def api_key(self) -> str | None:
        return self.assemblyai_api_key.get_secret_value() if self.assemblyai_api_key else None

    @property
    def auth_token(self) -> str | None:
        return self.twilio_auth_token.get_secret_value() if self.twilio_auth_token else None


def _require_https(url: str) -> None:
    """Twilio opens the media stream only on wss://, which the stream URL takes from this
    URL's scheme; plain http is for a server on this machine (the simulator, tests)."""
    parts = urlsplit(url)
    if parts.scheme != "https" and not _is_loopback(parts.hostname or ""):
        raise ValueError(
            "must be an https:// URL (Twilio opens media streams only over wss://); "
            "http:// only for localhost or 127.0.0.1"
        )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _without_password(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def setting_names() -> frozenset[str]:
    """The environment variables the settings are read from."""
    return frozenset(
        (field.validation_alias if isinstance(field.validation_alias, str) else name).upper()
        for name, field in Settings.model_fields.items()
    )


class UnknownVariable(NamedTuple):
    """A variable that looks meant for callbridge but is not one of its settings."""

    name: str
    source: str  # "environment", or the .env file it is in
    hint: str  # the closest setting, or why a former one is gone

    def message(self) -> str:
        return (
            f"{self.name} (in {self.source}) is not a callbridge setting and is ignored; "
            f"{self.hint}"
        )


def unknown_variables(
    environ: Mapping[str, str] | None = None, env_file: str | os.PathLike[str] | None = None
) -> list[UnknownVariable]:
    """Misspelt or former settings, one per name: those with our prefixes in the environment,
    and in `.env` also any name close to a setting's (that file is callbridge's own)."""
    known = setting_names()
    found: dict[str, UnknownVariable] = {}

    def check(name: str, source: str) -> None:
        name = name.upper()
        if name in known or name in _READ_BY_OTHERS or name in found:
            return
        if name in _REMOVED:
            found[name] = UnknownVariable(name, source, f"it was removed: {_REMOVED[name]}")
            return
        prefixed = name.startswith(_OUR_PREFIXES)
        if not prefixed and source == "environment":
            return  # the environment is everyone's
        close = _closest(name, known)
        if close is not None:
            found[name] = UnknownVariable(name, source, f"did you mean {close}?")
        elif prefixed:
            found[name] = UnknownVariable(name, source, "no setting has a similar name")

    for name in os.environ if environ is None else environ:
        check(name, "environment")
    if env_file is None:
        configured = Settings.model_config.get("env_file")
        env_file = configured if isinstance(configured, str | os.PathLike) else None
    if env_file is not None and Path(env_file).is_file():
        try:
            in_file = dotenv_values(env_file, encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            in_file = {}  # reading it for the settings reports the problem
        for name in in_file:
            check(name, str(env_file))
    return sorted(found.values())


def _closest(name: str, known: frozenset[str]) -> str | None:
    """The setting `name` most likely meant. Names are compared without our prefixes (which
    would make any two of ours look alike), the whole name breaking ties."""

    def score(setting: str) -> tuple[float, float]:
        bare = difflib.SequenceMatcher(None, _unprefixed(name), _unprefixed(setting)).ratio()
        return bare, difflib.SequenceMatcher(None, name, setting).ratio()

    best = max(sorted(known), key=score)
    return best if score(best)[0] >= 0.8 else None


def _unprefixed(name: str) -> str:
    for prefix in _OUR_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment and `.env`; raises ConfigError with one clear line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            message = f"{str(error['loc'][0]).upper()}: {message}"
        lines.append(message)  # a check across settings names them itself
    return "; ".join(lines)


def security_problem(settings: Settings) -> str | None:
    """Why the server must not start as configured, or None.

    Without the auth token nobody can tell Twilio's requests from anyone else's, so the
    stream URL would be open to whoever finds it (and would spend your agent minutes).
    """
    if settings.callbridge_insecure_skip_signatures:
        return None
    if settings.auth_token is None:
        return (
            "TWILIO_AUTH_TOKEN: not set, so Twilio's request signatures cannot be checked; "
            "set it (Twilio console, Account info), or CALLBRIDGE_INSECURE_SKIP_SIGNATURES=1 "
            "for local work only"
        )
    if settings.public_url is None and not settings.callbridge_trust_proxy_headers:
        return (
            "PUBLIC_URL: not set; signatures are computed over the public URL Twilio calls "
            "(or set CALLBRIDGE_TRUST_PROXY_HEADERS=1 behind a proxy that sets X-Forwarded-Host)"
        )
    return None
