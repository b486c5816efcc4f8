"""job claims: running state, instance, lease, claim token; job_event; slot_claim

Revision ID: job_claims
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "job_claims"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RUNNING = sa.text("status = 'running'")
_UNFINALIZED = sa.text("finalized = false")


def upgrade() -> None:
    op.add_column("job", sa.Column("instance", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
    op.add_column("job", sa.Column("claimed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.add_column("job", sa.Column("lease_expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.add_column("job", sa.Column("claim_token", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
    op.add_column("job", sa.Column("db_session", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
    op.create_index(
        "uq_job_running_tenant",
        "job",
        ["tenant_id"],
        unique=True,
        sqlite_where=_RUNNING,
        postgresql_where=_RUNNING,
    )
    op.create_index(
        "ix_job_running_lease",
        "job",
        ["lease_expires_at"],
        sqlite_where=_RUNNING,
        postgresql_where=_RUNNING,
    )
    op.create_index(
        "ix_job_unfinalized", "job", ["id"], sqlite_where=_UNFINALIZED, postgresql_where=_UNFINALIZED
    )

    op.create_table(
        "job_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("from_status", sqlmodel.sql.sqltypes.AutoString(length=24), nullable=True),
        sa.Column("to_status", sqlmodel.sql.sqltypes.AutoString(length=24), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("code", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_job_event_job", "job_event", ["job_id", "id"])
    op.create_index("ix_job_event_tenant", "job_event", ["tenant_id", "id"])

    op.create_table(
        "slot_claim",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("slot", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("instance", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("claimed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("lease_expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("done_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "tenant_id", "slot", name="uq_slot_claim"),
    )


def downgrade() -> None:
    op.drop_table("slot_claim")
    op.drop_index("ix_job_event_tenant", table_name="job_event")
    op.drop_index("ix_job_event_job", table_name="job_event")
    op.drop_table("job_event")
    op.drop_index("ix_job_unfinalized", table_name="job")
    op.drop_index("ix_job_running_lease", table_name="job")
    op.drop_index("uq_job_running_tenant", table_name="job")
    with op.batch_alter_table("job") as batch_op:
        for column in ("db_session", "claim_token", "lease_expires_at", "claimed_at", "instance"):
            batch_op.drop_column(column)
