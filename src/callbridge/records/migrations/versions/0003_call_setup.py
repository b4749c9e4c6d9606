"""What a bot's per-call set-up decided, and the session configuration the agent confirmed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(JSONB(), "postgresql")


_CALL_COLUMNS = (
    ("bot_name", sa.String()),
    ("parameters", _json()),
    ("setup_outcome", sa.String()),
    ("setup_detail", sa.String()),
    ("setup_error", sa.Text()),
)


def upgrade() -> None:
    with op.batch_alter_table("callbridge_calls") as batch:
        for name, type_ in _CALL_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    op.create_table(
        "callbridge_session_configs",
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("config", _json(), nullable=False),
        sa.PrimaryKeyConstraint("call_id", "seq", name="pk_callbridge_session_configs"),
    )


def downgrade() -> None:
    op.drop_table("callbridge_session_configs")
    with op.batch_alter_table("callbridge_calls") as batch:
        for name, _ in reversed(_CALL_COLUMNS):
            batch.drop_column(name)
