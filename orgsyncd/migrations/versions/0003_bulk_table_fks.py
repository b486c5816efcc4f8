"""drop the foreign keys of the bulk-written tables

Revision ID: bulk_table_fks
Revises: job_claims
Create Date: 2026-12-02

An import writes learner, license_assignment and membership with set-based statements, one plan
in one transaction, under the tenant's lock; nothing deletes learners or tenants (a revert drops
only groups nobody is in). On PostgreSQL each of these foreign keys was a per-row trigger (a
lookup and a row lock through SPI) that took about a third of a 1M-row first import. SQLite runs with foreign keys off, so there
they were never checked; they go on both backends so both have one schema.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "bulk_table_fks"
down_revision: str | None = "job_claims"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, referred table): PostgreSQL named them <table>_<column>_fkey; SQLite's are
# unnamed, so batch mode gets the same names through this naming convention.
_FKS = (
    ("learner", "tenant_id", "tenant"),
    ("license_assignment", "tenant_id", "tenant"),
    ("license_assignment", "learner_id", "learner"),
    ("membership", "group_id", "learner_group"),
    ("membership", "learner_id", "learner"),
)
_NAMING = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}


def _tables() -> dict[str, list[tuple[str, str]]]:
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, referred in _FKS:
        tables.setdefault(table, []).append((column, referred))
    return tables


def upgrade() -> None:
    for table, fks in _tables().items():
        with op.batch_alter_table(table, naming_convention=_NAMING) as batch_op:
            for column, _ in fks:
                batch_op.drop_constraint(f"{table}_{column}_fkey", type_="foreignkey")


def downgrade() -> None:
    for table, fks in _tables().items():
        with op.batch_alter_table(table, naming_convention=_NAMING) as batch_op:
            for column, referred in fks:
                batch_op.create_foreign_key(f"{table}_{column}_fkey", referred, [column], ["id"])
