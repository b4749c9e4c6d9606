"""Call records: calls, Twilio status callbacks, agent sessions, transcript, tool calls,
turn latencies, errors.

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _entry_key() -> list[sa.Column[object]]:
    return [
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", _utc(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "callbridge_calls",
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("call_sid", sa.String(), nullable=True),
        sa.Column("stream_sid", sa.String(), nullable=True),
        sa.Column("direction", sa.String(), nullable=True),
        sa.Column("from_number", sa.String(), nullable=True),
        sa.Column("to_number", sa.String(), nullable=True),
        sa.Column("instance_id", sa.String(), nullable=True),
        sa.Column("opened", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("ended_at", _utc(), nullable=True),
        sa.Column("ended_by", sa.String(), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.Column("twilio_status", sa.String(), nullable=True),
        sa.Column("twilio_status_sequence", sa.Integer(), nullable=True),
        sa.Column("twilio_status_at", _utc(), nullable=True),
        sa.Column("resumes", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("frames_from_twilio", sa.BigInteger(), nullable=True),
        sa.Column("frames_to_agent", sa.BigInteger(), nullable=True),
        sa.Column("frames_to_twilio", sa.BigInteger(), nullable=True),
        sa.Column("dropped_frames", _json(), nullable=True),
        sa.PrimaryKeyConstraint("call_id", name="pk_callbridge_calls"),
    )
    op.create_index("ix_callbridge_calls_started", "callbridge_calls", ["started_at", "call_id"])
    op.create_index("ix_callbridge_calls_call_sid", "callbridge_calls", ["call_sid"])
    op.create_index("ix_callbridge_calls_open", "callbridge_calls", ["instance_id", "ended_at"])

    op.create_table(
        "callbridge_call_statuses",
        sa.Column("call_sid", sa.String(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("call_id", sa.String(), nullable=True),
        sa.Column("duration_seconds", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint(
            "call_sid", "sequence", "status", name="pk_callbridge_call_statuses"
        ),
    )
    op.create_index("ix_callbridge_call_statuses_at", "callbridge_call_statuses", ["at"])

    op.create_table(
        "callbridge_agent_sessions",
        *_entry_key(),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("resumed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("call_id", "seq", name="pk_callbridge_agent_sessions"),
    )
    op.create_table(
        "callbridge_transcript_entries",
        *_entry_key(),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("reply_id", sa.String(), nullable=True),
        sa.Column("interrupted", sa.Boolean(), nullable=False),
        sa.Column("generated_seconds", sa.Double(), nullable=True),
        sa.Column("heard_seconds", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("call_id", "seq", name="pk_callbridge_transcript_entries"),
    )
    op.create_table(
        "callbridge_tool_calls",
        *_entry_key(),
        sa.Column("tool_call_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("arguments", _json(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("is_error", sa.Boolean(), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=True),
        sa.Column("discarded", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("call_id", "seq", name="pk_callbridge_tool_calls"),
    )
    op.create_table(
        "callbridge_turn_latencies",
        *_entry_key(),
        sa.Column("reply_id", sa.String(), nullable=True),
        sa.Column("to_first_audio_sent_ms", sa.Double(), nullable=True),
        sa.Column("to_first_audio_played_ms", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("call_id", "seq", name="pk_callbridge_turn_latencies"),
    )
    op.create_table(
        "callbridge_call_errors",
        *_entry_key(),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("code", sa.String(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("call_id", "seq", name="pk_callbridge_call_errors"),
    )


def downgrade() -> None:
    for table in (
        "callbridge_call_errors",
        "callbridge_turn_latencies",
        "callbridge_tool_calls",
        "callbridge_transcript_entries",
        "callbridge_agent_sessions",
        "callbridge_call_statuses",
        "callbridge_calls",
    ):
        op.drop_table(table)
