"""learner pages keep room for updated rows (PostgreSQL fillfactor 90)

Revision ID: learner_fillfactor
Revises: safety
Create Date: 2026-12-02

A re-import changes a few names and titles of many learners. With full pages each new row
version goes to another page and adds an entry to all four learner indexes; with room on the
page it is a HOT update that touches no index (a third of the CPU time for such updates). Only
pages written from now on keep the room; SQLite has no such setting.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "learner_fillfactor"
down_revision: str | None = "safety"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILLFACTOR = 90  # tables.LEARNER_FILLFACTOR when this revision was written


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE learner SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE learner RESET (fillfactor)")
