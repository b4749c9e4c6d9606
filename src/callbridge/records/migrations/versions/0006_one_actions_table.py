"""One table for the actions on a call: the verbs' rows join the actions'.

Hang-ups, things said, keypad entries and silence check-ins (callbridge_call_verbs, 0004)
and transfers, keypad tones, machine detection, voicemail and lost streams
(callbridge_call_actions, 0005) were kept apart. The actions gain `by` and `detail`, every
verb row is copied in with its seq and time, and callbridge_call_verbs is dropped.

A call's entries share one numbering, so no verb row has the (call_id, seq) of an action
row; should one, the action row is kept (as a replayed write would keep the first).

Downgrade: the rows of the verbs 0004 recorded go back to callbridge_call_verbs (with
"operator" for a missing `by`); the other actions lose their `by` and `detail`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

# The verbs callbridge_call_verbs held.
_VERBS = ("hang-up", "say", "keypad-entry", "keypad-argument", "silence-check-in")

_ENTRY = ("call_id", "seq", "at", "verb", "outcome")


def _actions(*extra: str) -> sa.TableClause:
    return sa.table("callbridge_call_actions", *(sa.column(c) for c in (*_ENTRY, *extra)))


def _verbs() -> sa.TableClause:
    return sa.table("callbridge_call_verbs", *(sa.column(c) for c in (*_ENTRY, "by", "detail")))


def upgrade() -> None:
    with op.batch_alter_table("callbridge_call_actions") as batch:
        batch.add_column(sa.Column("by", sa.String(), nullable=True))
        # A plain default: SQLite adds such a column in place (also offline, `--sql`).
        batch.add_column(sa.Column("detail", sa.Text(), nullable=False, server_default=""))
    actions, verbs = _actions("by", "detail"), _verbs()
    taken = (
        sa.select(sa.literal(1))
        .select_from(actions)
        .where(actions.c.call_id == verbs.c.call_id, actions.c.seq == verbs.c.seq)
    )
    columns = [*_ENTRY, "by", "detail"]
    op.execute(
        actions.insert().from_select(
            columns,
            sa.select(*(verbs.c[c] for c in columns)).where(~sa.exists(taken)),
        )
    )
    op.drop_table("callbridge_call_verbs")


def downgrade() -> None:
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
    actions, verbs = _actions("by", "detail"), _verbs()
    was_verb = actions.c.verb.in_(_VERBS)
    columns = [*_ENTRY, "by", "detail"]
    op.execute(
        verbs.insert().from_select(
            columns,
            sa.select(
                *(actions.c[c] for c in _ENTRY),
                sa.func.coalesce(actions.c.by, "operator"),
                actions.c.detail,
            ).where(was_verb),
        )
    )
    op.execute(actions.delete().where(was_verb))
    with op.batch_alter_table("callbridge_call_actions") as batch:
        batch.drop_column("detail")
        batch.drop_column("by")
