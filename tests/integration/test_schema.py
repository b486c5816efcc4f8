"""Migrations bring an existing database, with its data, to the schema of the models (both backends)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlmodel import SQLModel

import orgsyncd
from orgsyncd.store import tables  # noqa: F401  (registers the models)
from orgsyncd.store.db import make_engine, migrate
from orgsyncd.store.tables import LEARNER_FILLFACTOR
from tests.helpers import LIC, Env, roster

MIGRATIONS = Path(orgsyncd.__file__).resolve().parent / "migrations"
AT = "2026-01-01 00:00:00.000000"


def upgrade_to(engine: Engine, revision: str) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()


def seed_before_0002(engine: Engine) -> None:
    """One learner with a licence and a group, written the way revision 0001's schema holds them."""
    statements = [
        "INSERT INTO tenant (id, name) VALUES (1, 'acme')",
        "INSERT INTO learner (id, tenant_id, uid, email, first_name, last_name, title, status, "
        f"license_type, created_at, updated_at) VALUES (7, 1, NULL, 'ann@example.com', 'Ann', 'Old', "
        f"'Engineer', 'invited', '{LIC}', '{AT}', '{AT}')",
        "INSERT INTO learner_group (id, tenant_id, name, name_key) VALUES (3, 1, 'Engineering', 'engineering')",
        "INSERT INTO membership (group_id, learner_id) VALUES (3, 7)",
        f"INSERT INTO license_assignment (tenant_id, learner_id, license_type, started_at) VALUES (1, 7, '{LIC}', '{AT}')",
    ]
    with engine.begin() as conn:
        for sql in statements:
            conn.execute(text(sql))
        if engine.dialect.name == "postgresql":  # the rows above chose their ids
            for table in ("tenant", "learner", "learner_group"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 100)"))


def test_dropping_the_bulk_tables_foreign_keys_keeps_the_data(empty_db_url: str, tmp_path: Path) -> None:
    engine = make_engine(empty_db_url)
    try:
        upgrade_to(engine, "0001")
        assert inspect(engine).get_foreign_keys("membership")  # what the migration removes
        seed_before_0002(engine)
        migrate(engine)
        with engine.connect() as conn:
            schema = inspect(conn)
            for table in ("learner", "license_assignment", "membership"):
                assert schema.get_foreign_keys(table) == [], table
            for table in ("learner_group", "job"):  # small tables keep theirs
                assert [fk["referred_table"] for fk in schema.get_foreign_keys(table)] == ["tenant"]
            assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
            if conn.dialect.name == "postgresql":  # alembic does not compare storage parameters
                options = conn.execute(text("SELECT reloptions FROM pg_class WHERE relname = 'learner'"))
                assert options.scalar_one() == [f"fillfactor={LEARNER_FILLFACTOR}"]
            learner = conn.execute(
                text("SELECT email, last_name, license_type FROM learner WHERE id = 7")
            ).one()
            assert tuple(learner) == ("ann@example.com", "Old", LIC)
            assert conn.execute(text("SELECT group_id, learner_id FROM membership")).all() == [(3, 7)]
    finally:
        engine.dispose()
    # The migrated database keeps working: the same learner is updated, not created again.
    env = Env(root=tmp_path, db_url=empty_db_url, tenant="acme")
    try:
        header = ["primary_email_address", "preferred_last_name", "work_title", "group/Engineering"]
        summary = env.run(roster(header, [["ann@example.com", "New", "Engineer", 0]]))
        assert env.outcomes(summary) == [("2", "updated", "")]
        assert env.learner("ann@example.com").last_name == "New"
        assert env.learner("ann@example.com").groups == []
        assert env.broken_references() == {}
    finally:
        env.close()


def test_a_dangling_reference_is_found(env: Env) -> None:
    env.run(roster(["primary_email_address", "group/Engineering"], [["bo@example.com", 1]]))
    assert env.broken_references() == {}
    with env.service.engine.begin() as conn:
        tenant = env.service.jobs.tenant_id(env.tenant)
        group = conn.execute(
            text("SELECT id FROM learner_group WHERE tenant_id = :t"), {"t": tenant}
        ).scalar_one()
        conn.execute(text("INSERT INTO membership (group_id, learner_id) VALUES (:g, -1)"), {"g": group})
    try:
        assert env.broken_references() == {"membership.learner_id": 1}
    finally:
        with env.service.engine.begin() as conn:
            conn.execute(text("DELETE FROM membership WHERE learner_id = -1"))
