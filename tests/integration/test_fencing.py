"""Fencing: an attempt whose claim was taken over while it worked never records an outcome, so a
job is applied once however late the old holder wakes up. The takeover is simulated at the moments
a hung instance could be overtaken: after staging (both databases), and inside the transaction that
applies, just before the outcome is written (PostgreSQL; on SQLite that transaction holds the
database's write lock, so nobody can take over then)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from orgsyncd import faults
from orgsyncd.errors import NotFoundError
from tests.helpers import LIC, Env, roster

HEADER = ["primary_email_address", f"{LIC}_status"]


@pytest.mark.parametrize("point", ["after_stage", "after_apply"])
def test_an_attempt_taken_over_mid_way_applies_nothing(env: Env, point: str) -> None:
    if point == "after_apply" and env.db_url.startswith("sqlite"):
        pytest.skip("SQLite: nobody can write while the applying transaction holds the lock")
    path = env.dirs.inbox / "a.csv"
    path.write_text(roster(HEADER, [["a@example.com", "active"]]), encoding="utf-8")
    [job_id] = env.service.scan_inboxes()

    def take_over() -> None:  # what another instance does once our lease has run out
        with env.service.engine.begin() as conn:
            conn.execute(
                text("UPDATE job SET claim_token = 'theirs', instance = 'node-2' WHERE id = :j"),
                {"j": job_id},
            )

    with faults.hook(point, take_over):
        assert env.service.runner.run(env.service.jobs.get(job_id)) is None
    job = env.service.jobs.get(job_id)
    assert (job.status, job.instance, job.claim_token) == ("running", "node-2", "theirs")
    with pytest.raises(NotFoundError):  # nothing of our attempt was applied
        env.learner("a@example.com")
    assert [e.to_status for e in env.service.jobs.events(job_id)] == ["queued", "running"]
    assert not list(env.dirs.results.iterdir())
    assert not [p for p in env.dirs.spool.iterdir() if p.name.endswith(".tmp")]
