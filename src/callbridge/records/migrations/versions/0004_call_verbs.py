"""What was done to each call: hang-ups, things said, keypad entries, silence check-ins.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "callbridge_call_verbs",
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verb", sa.String(), nullable=False),
        sa.Column("by", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("call_id", "seq", name="pk_callbridge_call_verbs"),
    )


def downgrade() -> None:
    op.drop_table("callbridge_call_verbs")
