"""notification outbox: notify_event, notify_delivery, tenant_silence

Revision ID: notify_outbox
Revises: membership_source
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "notify_outbox"
down_revision: str | None = "membership_source"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NEW = sa.text("status = 'new'")
_PENDING = sa.text("status = 'pending'")
_STR = sqlmodel.sql.sqltypes.AutoString
_TIME = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "notify_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", _STR(length=36), nullable=False),
        sa.Column("event", _STR(length=32), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", _STR(length=16), nullable=False),
        sa.Column("created_at", _TIME(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_notify_event_new", "notify_event", ["id"], sqlite_where=_NEW, postgresql_where=_NEW)
    op.create_table(
        "notify_delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("notify_event_id", sa.Integer(), nullable=False),
        sa.Column("destination", _STR(length=64), nullable=False),
        sa.Column("status", _STR(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", _TIME(), nullable=False),
        sa.Column("claimed_by", _STR(length=64), nullable=True),
        sa.Column("claim_until", _TIME(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", _TIME(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("notify_event_id", "destination", name="uq_notify_delivery"),
    )
    op.create_index(
        "ix_notify_delivery_due",
        "notify_delivery",
        ["next_at"],
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )
    op.create_table(
        "tenant_silence",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("watching_since", _TIME(), nullable=False),
        sa.Column("alerted_for", _TIME(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id"),
    )


def downgrade() -> None:
    op.drop_table("tenant_silence")
    op.drop_index("ix_notify_delivery_due", table_name="notify_delivery")
    op.drop_table("notify_delivery")
    op.drop_index("ix_notify_event_new", table_name="notify_event")
    op.drop_table("notify_event")
