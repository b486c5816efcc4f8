"""safety: audit before-images for memberships, grace counter, job kind/file time/columns/audit range, decisions

Revision ID: safety
Revises: notify_outbox
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "safety"
down_revision: str | None = "notify_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MISSING = sa.text("missing_runs > 0")


def upgrade() -> None:
    op.add_column("audit_event", sa.Column("group_id", sa.Integer(), nullable=True))
    op.add_column(
        "audit_event", sa.Column("group_source", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True)
    )
    op.add_column(
        "learner", sa.Column("missing_runs", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.create_index(
        "ix_learner_missing", "learner", ["tenant_id"], sqlite_where=_MISSING, postgresql_where=_MISSING
    )
    op.add_column(
        "job",
        sa.Column(
            "kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False, server_default="import"
        ),
    )
    op.add_column("job", sa.Column("target_job_id", sa.Integer(), nullable=True))
    op.add_column("job", sa.Column("file_time", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.add_column("job", sa.Column("columns", sa.Text(), nullable=True))
    op.add_column("job", sa.Column("audit_from", sa.BigInteger(), nullable=True))
    op.add_column("job", sa.Column("audit_to", sa.BigInteger(), nullable=True))
    op.create_table(
        "job_decision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("decision", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("via", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("file_name", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("file_key", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "file_key", name="uq_job_decision_file"),
    )
    op.create_index("ix_job_decision_job", "job_decision", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_job_decision_job", table_name="job_decision")
    op.drop_table("job_decision")
    op.drop_index("ix_learner_missing", table_name="learner")
    with op.batch_alter_table("job") as batch_op:
        for column in ("audit_to", "audit_from", "columns", "file_time", "target_job_id", "kind"):
            batch_op.drop_column(column)
    with op.batch_alter_table("learner") as batch_op:
        batch_op.drop_column("missing_runs")
    with op.batch_alter_table("audit_event") as batch_op:
        batch_op.drop_column("group_source")
        batch_op.drop_column("group_id")
