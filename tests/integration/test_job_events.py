"""Every job state change is one job_event row, written in the transaction that made the change."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlmodel import SQLModel

from orgsyncd.errors import InjectedFault, LeaseLost, UsageError
from orgsyncd.store.db import write_transaction
from orgsyncd.store.jobs import StateConflict, change_state
from tests.helpers import LIC, Env, roster

HEADER = ["primary_email_address", f"{LIC}_status"]


def people(n: int, start: int = 0) -> str:
    return roster(HEADER, [[f"p{i}@example.com", "active"] for i in range(start, start + n)])


def history(env: Env, job_id: int) -> list[tuple[str | None, str, str, str | None]]:
    return [(e.from_status, e.to_status, e.actor, e.code) for e in env.service.jobs.events(job_id)]


def test_an_import_records_queued_then_its_outcome(env: Env) -> None:
    summary = env.run(people(2), actor="cli:alice")
    me = env.service.actor
    assert me.startswith("instance:")
    events = history(env, summary.job_id)
    assert events[0] == (None, "queued", "cli:alice", None)
    assert events[-1][1:] == ("succeeded", me, None)
    tenant_id = env.service.jobs.tenant_id(env.tenant)
    assert {e.tenant_id for e in env.service.jobs.events(summary.job_id)} == {tenant_id}


def test_hold_approve_and_reject_name_who_decided(env: Env) -> None:
    env.reconfigure(max_deactivation_ratio=0.10)
    env.run(people(20), name="base.csv")
    held = env.run(people(10), name="full_a.csv")
    assert held.status == "held"
    env.service.approve(held.job_id, "cli:bob")
    env.service.run_due()
    me = env.service.actor
    assert history(env, held.job_id) == [
        (None, "queued", me, None),
        ("queued", "running", me, None),
        ("running", "held", me, "threshold_exceeded"),
        ("held", "queued", "cli:bob", "approved"),
        ("queued", "running", me, None),
        ("running", "succeeded", me, None),
    ]
    threshold = [e for e in env.service.jobs.events(held.job_id) if e.to_status == "held"]
    assert threshold[0].code == "threshold_exceeded" and "of 20" in (threshold[0].message or "")

    second = env.run(people(5), name="full_b.csv")
    env.service.reject(second.job_id, "cli:carol")
    assert history(env, second.job_id)[-1] == ("held", "rejected", "cli:carol", "rejected")


def test_a_failed_file_and_its_retry_are_recorded(env: Env) -> None:
    failed = env.run(roster(["primary_email_address", "gold_status"], [["a@example.com", "active"]]))
    assert failed.status == "failed"
    assert history(env, failed.job_id)[-1][3] == "unknown_license"
    env.service.retry(failed.job_id, "cli:dan")
    assert history(env, failed.job_id)[-1] == ("failed", "queued", "cli:dan", "retried")


def test_a_refused_change_records_nothing(env: Env) -> None:
    summary = env.run(people(1))
    before = history(env, summary.job_id)
    with pytest.raises(UsageError, match="only held"):
        env.service.approve(summary.job_id, "cli:eve")
    with write_transaction(env.service.engine) as conn:
        with pytest.raises(StateConflict):
            change_state(conn, summary.job_id, "queued", actor="cli:eve", allowed=("held",))
        with pytest.raises(LeaseLost):
            change_state(conn, summary.job_id, "queued", actor="cli:eve", token="not-the-token")
    assert history(env, summary.job_id) == before
    assert env.service.jobs.get(summary.job_id).status == "succeeded"


def test_a_rolled_back_change_leaves_no_event(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    path = env.dirs.inbox / "a.csv"
    path.write_text(people(2), encoding="utf-8")
    [job_id] = env.service.scan_inboxes()
    monkeypatch.setenv("ORGSYNCD_FAULT", "before_commit")  # after the outcome was written
    with pytest.raises(InjectedFault):
        env.service.runner.run(env.service.jobs.get(job_id))
    me = env.service.actor
    assert history(env, job_id) == [
        (None, "queued", me, None),
        ("queued", "running", me, None),
        ("running", "queued", me, "injected_fault"),  # the attempt rolled back: no outcome
    ]
    job = env.service.jobs.get(job_id)
    assert job.status == "queued" and job.lease_expires_at is None


def test_the_migrations_build_the_schema_the_models_describe(env: Env) -> None:
    """tables.py and migrations/versions stay in step (on both backends)."""
    assert env.service.engine is not None  # built and migrated
    with env.service.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        heads = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert diff == []
    assert len(heads) == 1
