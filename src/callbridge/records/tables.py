"""The call-record tables, as SQLAlchemy Core tables (the migrations create the same schema).

Names carry a `callbridge_` prefix so that the tables can live in an application's existing
database next to its own. Times are UTC; seconds-since-epoch values from the entries are
converted on the way in.

Keys are what makes every write idempotent: a call's own row on `call_id`; each entry on
(`call_id`, `seq`); a Twilio status callback on (`call_sid`, `sequence`, `status`).
"""

from __future__ import annotations

import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

NO_SEQUENCE = -1  # status callbacks without Twilio's SequenceNumber (part of a primary key)


class UtcDateTime(TypeDecorator[datetime.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on both backends.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so the value is stored as naive
    UTC text, whose fixed format also sorts correctly.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: call records are kept in UTC")
        value = value.astimezone(datetime.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.UTC)
        return value.astimezone(datetime.UTC)


def json_type() -> TypeEngine[Any]:
    return JSON().with_variant(JSONB(), "postgresql")


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

calls = Table(
    "callbridge_calls",
    metadata,
    Column("call_id", String, primary_key=True),
    Column("call_sid", String),
    Column("stream_sid", String),
    Column("direction", String),  # inbound | outbound; None when only Twilio told us
    Column("from_number", String),
    Column("to_number", String),
    Column("instance_id", String),
    # False for rows made before (or without) the call's CallOpened: a status callback for a
    # call we never streamed (then call_id == call_sid), or entries that arrived first.
    Column("opened", Boolean, nullable=False, server_default=false()),
    Column("started_at", UtcDateTime, nullable=False),
    Column("ended_at", UtcDateTime),
    Column("ended_by", String),
    Column("end_reason", Text),
    # Twilio's latest status callback, kept here so that listing by status is one indexed read.
    Column("twilio_status", String),
    Column("twilio_status_sequence", Integer),
    Column("twilio_status_at", UtcDateTime),
    Column("resumes", Integer, nullable=False, server_default=text("0")),
    Column("frames_from_twilio", BigInteger),
    Column("frames_to_agent", BigInteger),
    Column("frames_to_twilio", BigInteger),
    Column("dropped_frames", json_type()),
    # What the bot's set-up decided (migration 0003): the bot, the custom parameters the
    # call was placed with (values NULL when STORE_TRANSCRIPTS=false), and the outcome.
    Column("bot_name", String),
    Column("parameters", json_type()),
    Column("setup_outcome", String),
    Column("setup_detail", String),
    Column("setup_error", Text),
    Index("ix_callbridge_calls_started", "started_at", "call_id"),
    Index("ix_callbridge_calls_call_sid", "call_sid"),
    Index("ix_callbridge_calls_open", "instance_id", "ended_at"),
)

call_statuses = Table(
    "callbridge_call_statuses",
    metadata,
    Column("call_sid", String, primary_key=True),
    Column("sequence", Integer, primary_key=True),  # NO_SEQUENCE when Twilio sent none
    Column("status", String, primary_key=True),
    Column("at", UtcDateTime, nullable=False),
    Column("call_id", String),
    Column("duration_seconds", Integer),
    Index("ix_callbridge_call_statuses_at", "at"),
)

agent_sessions = Table(
    "callbridge_agent_sessions",
    metadata,
    Column("call_id", String, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("at", UtcDateTime, nullable=False),
    Column("session_id", String, nullable=False),
    Column("resumed", Boolean, nullable=False),
)

transcript_entries = Table(
    "callbridge_transcript_entries",
    metadata,
    Column("call_id", String, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("at", UtcDateTime, nullable=False),
    Column("role", String, nullable=False),
    Column("text", Text),  # NULL when STORE_TRANSCRIPTS=false
    Column("reply_id", String),
    Column("interrupted", Boolean, nullable=False),
    Column("generated_seconds", Double),
    Column("heard_seconds", Double),
)

tool_calls = Table(
    "callbridge_tool_calls",
    metadata,
    Column("call_id", String, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("at", UtcDateTime, nullable=False),
    Column("tool_call_id", String, nullable=False),
    Column("name", String, nullable=False),
    Column("arguments", json_type()),  # NULL when STORE_TRANSCRIPTS=false
    Column("result", Text),  # NULL when STORE_TRANSCRIPTS=false
    Column("is_error", Boolean, nullable=False),
    Column("duration_ms", Double),
    Column("discarded", Boolean, nullable=False),
)

turn_latencies = Table(
    "callbridge_turn_latencies",
    metadata,
    Column("call_id", String, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("at", UtcDateTime, nullable=False),
    Column("reply_id", String),
    Column("to_first_audio_sent_ms", Double),
    Column("to_first_audio_played_ms", Double),
    # To the first audible audio (after the reply's silent lead-in): migration 0002.
    Column("to_first_audible_sent_ms", Double),
    Column("to_first_audible_played_ms", Double),
)

call_errors = Table(
    "callbridge_call_errors",
    metadata,
    Column("call_id", String, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("at", UtcDateTime, nullable=False),
    Column("source", String, nullable=False),
    Column("code", String, nullable=False),
    Column("message", Text, nullable=False),
)

# The actions on a call and what they came to: hang-ups, things said, keypad entries,
# silence check-ins, transfers, keypad tones, machine detection, voicemail, lost streams
# (migration 0005; `by` and `detail` and the rows of the former callbridge_call_verbs:
# 0006). `detail` never holds the keys a caller pressed.
call_actions = Table(
    "callbridge_call_actions",
    metadata,
    Column("call_id", String, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("at", UtcDateTime, nullable=False),
    Column("verb", String, nullable=False),
    Column("outcome", String, nullable=False),
    Column("target", String),
    Column("started_at", UtcDateTime),
    Column("by", String),  # agent, operator, silence, caller; NULL: nobody asked
    Column("detail", Text, nullable=False, server_default=""),
)

# The session configuration the agent confirmed, at the start and after each change
# (migration 0003). Secrets are never stored; prompts and greetings only with transcripts.
session_configs = Table(
    "callbridge_session_configs",
    metadata,
    Column("call_id", String, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("at", UtcDateTime, nullable=False),
    Column("config", json_type(), nullable=False),
)

# The tables whose rows belong to one call by call_id (purged with it).
CALL_CHILD_TABLES = (
    agent_sessions,
    transcript_entries,
    tool_calls,
    turn_latencies,
    call_errors,
    call_actions,
    session_configs,
)
