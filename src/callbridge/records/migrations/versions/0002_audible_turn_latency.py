"""Turn latencies to the first audible reply audio (after the reply's silent lead-in).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = ("to_first_audible_sent_ms", "to_first_audible_played_ms")


def upgrade() -> None:
    with op.batch_alter_table("callbridge_turn_latencies") as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("callbridge_turn_latencies") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
