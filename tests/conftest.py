"""Shared fixtures: a database per test on SQLite, and on PostgreSQL when ORGSYNCD_TEST_PG_URL is
set (one throwaway database per run; tests isolate themselves by tenant name)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_ENV = "ORGSYNCD_TEST_PG_URL"
PG_SKIP = f"{PG_ENV} is not set; the PostgreSQL variant of this test is skipped"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@contextmanager
def fresh_pg_database(base: str) -> Iterator[str]:
    """A new database on the server of ``base`` (any database name in it is only for connecting)."""
    import psycopg
    from sqlalchemy.engine import make_url

    from orgsyncd.store.db import normalize_url

    url = make_url(normalize_url(base))
    name = f"orgsyncd_t_{uuid.uuid4().hex[:10]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str | None]:
    """A fresh database on the server named by ORGSYNCD_TEST_PG_URL, dropped after the run."""
    base = os.environ.get(PG_ENV)
    if not base:
        yield None
        return
    with fresh_pg_database(base) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str | None) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orgsyncd.db'}"
    if pg_url is None:
        pytest.skip(PG_SKIP)
    return pg_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own, with no schema yet (for migrations)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(PG_SKIP)
    with fresh_pg_database(base) as url:
        yield url


@pytest.fixture
def tenant_name(db_url: str) -> str:
    """Unique per test on the shared PostgreSQL database, so tests never see each other's rows."""
    return "acme" if db_url.startswith("sqlite") else f"acme-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def env(tmp_path: Path, db_url: str, tenant_name: str) -> Iterator[object]:
    from tests.helpers import Env

    environment = Env(root=tmp_path, db_url=db_url, tenant=tenant_name)
    yield environment
    try:
        assert environment.broken_references() == {}, "an import left rows pointing at nothing"
    finally:
        environment.close()
