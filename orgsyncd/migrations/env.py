"""Alembic environment: always run online, on the connection orgsyncd hands in."""

from alembic import context
from sqlmodel import SQLModel

from orgsyncd.store import tables  # noqa: F401  (registers the models)

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
