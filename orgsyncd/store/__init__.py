"""Persistence: the sqlmodel schema, the engine, and the repository modules (the only place with SQL)."""
