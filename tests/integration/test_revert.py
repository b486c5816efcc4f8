"""`jobs revert`: an applied job undone from its audit trail, as a job of its own."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from sqlalchemy import text

from orgsyncd.core.results import Summary
from orgsyncd.errors import UsageError
from orgsyncd.reverts import RevertResult
from tests.helpers import LIC, PRO, Env, read_csv, roster

CLI = "cli:tester"
HEADER = [
    "unique_user_id",
    "primary_email_address",
    "preferred_first_name",
    "work_title",
    f"{LIC}_status",
    "group/Sales",
    "group/HR",
]


def base(env: Env) -> Summary:
    env.reconfigure(max_deactivation_ratio=1.0)
    rows = [
        ["U1", "a@example.com", "Ann", "Staff", "active", 1, 0],
        ["U2", "b@example.com", "Bob", "Staff", "active", 0, 1],
        ["U3", "c@example.com", "Cy", "Staff", "active", 1, 1],
        ["U4", "d@example.com", "Di", "Staff", "inactive", 0, 0],
    ]
    return env.run(roster(HEADER, rows), name="base.csv")


def state(env: Env) -> dict[str, Any]:
    """Everything a revert restores, keyed by email: fields, licence, open seats, groups."""
    tenant_id = env.service.jobs.tenant_id(env.tenant)
    with env.service.engine.connect() as conn:
        learners = conn.execute(
            text(
                "SELECT id, email, uid, first_name, last_name, title, status, license_type, missing_runs "
                "FROM learner WHERE tenant_id = :t"
            ),
            {"t": tenant_id},
        ).all()
        seats = conn.execute(
            text(
                "SELECT learner_id, license_type FROM license_assignment WHERE tenant_id = :t AND ended_at IS NULL"
            ),
            {"t": tenant_id},
        ).all()
        groups = conn.execute(
            text(
                "SELECT m.learner_id, g.name FROM membership m JOIN learner_group g ON g.id = m.group_id "
                "WHERE g.tenant_id = :t"
            ),
            {"t": tenant_id},
        ).all()
        names = conn.execute(
            text("SELECT name FROM learner_group WHERE tenant_id = :t"), {"t": tenant_id}
        ).all()
    email = {row[0]: row[1] for row in learners}
    return {
        "learners": {row[1]: tuple(row[2:]) for row in learners},
        "seats": sorted((email[lid], lic) for lid, lic in seats),
        "groups": sorted((email[lid], name) for lid, name in groups),
        "group_names": sorted(row[0] for row in names),
    }


def revert(env: Env, job_id: int | None, **kwargs: Any) -> RevertResult:
    assert job_id is not None
    return env.service.revert(job_id, CLI, **kwargs)


def results(env: Env, result: RevertResult) -> list[dict[str, str]]:
    return read_csv(env.dirs.results / f"revert-{result.target}.{result.job_id}.results.csv")


def test_revert_restores_fields_licences_groups_and_deactivates_the_created(env: Env) -> None:
    base(env)
    before = state(env)
    export_before = env.export()
    change = [
        ["U1", "a@example.com", "Ann", "Lead", "active", 0, 1],  # title, groups swapped
        ["U2", "b2@example.com", "Bob", "Staff", "inactive", 0, 1],  # new email, licence off
        ["U4", "d@example.com", "Di", "Staff", "active", 0, 0],  # licence on
        ["U5", "e@example.com", "Eve", "New", "active", 1, 0],  # created
    ]
    job = env.run(roster(HEADER, change), name="change.csv")
    assert job.status == "succeeded"
    result = revert(env, job.job_id)
    assert (result.status, result.restored, result.deactivated) == ("succeeded", 3, 1)
    after = state(env)
    eve = after["learners"].pop("e@example.com")
    assert eve[4:6] == ("deactivated", None)  # status, licence: deactivated, not deleted
    assert after == before
    assert env.export().splitlines()[:-1] == export_before.splitlines()  # Eve's row is added at the end
    lines = {line["primary_email_address"]: line for line in results(env, result)}
    assert {email: line["outcome"] for email, line in lines.items()} == {
        "a@example.com": "restored",
        "b@example.com": "restored",
        "d@example.com": "restored",
        "e@example.com": "deactivated",
    }
    assert (
        lines["a@example.com"]["changes"]
        == "work_title: Lead -> Staff; group/HR: 1 -> 0; group/Sales: 0 -> 1"
    )
    assert "primary_email_address: b2@example.com -> b@example.com" in lines["b@example.com"]["changes"]
    reverted = env.service.jobs.get(job.job_id)
    assert reverted.status == "reverted"
    with env.service.engine.connect() as conn:  # one "reverted" notification, for the job undone
        events = conn.execute(
            text("SELECT event FROM notify_event WHERE job_id = :j"), {"j": job.job_id}
        ).all()
    assert [e for (e,) in events if e == "reverted"] == ["reverted"]
    revert_job = env.service.jobs.get(result.job_id or 0)
    assert (revert_job.kind, revert_job.target_job_id, revert_job.status) == (
        "revert",
        job.job_id,
        "succeeded",
    )
    assert revert_job.counts == {"restored": 3, "deactivated": 1}
    summary = json.loads(
        (env.dirs.results / f"revert-{job.job_id}.{result.job_id}.summary.json").read_text(encoding="utf-8")
    )
    assert summary["status"] == "succeeded" and summary["reverts"] == job.job_id


def test_revert_keeps_licence_history(env: Env) -> None:
    base(env)
    off = env.run(roster(HEADER, [["U1", "a@example.com", "Ann", "Staff", "inactive", 1, 0]]), name="off.csv")
    result = revert(env, off.job_id)
    learner = env.learner("a@example.com")
    spans = env.service.learners.licence_history(learner.id)
    # The seat the job released is not un-ended: a new span starts with the revert.
    assert [(s.license_type, s.ended_job_id, s.started_job_id) for s in spans][-2:] == [
        (LIC, off.job_id, spans[0].started_job_id),
        (LIC, None, result.job_id),
    ]
    assert learner.license_type == LIC and learner.status == "invited"


def test_revert_of_a_full_import_restores_the_absent_and_their_groups(env: Env) -> None:
    env.reconfigure(inactive_group="Leavers")
    base(env)
    before = state(env)
    full = env.run(roster(HEADER, [["U1", "a@example.com", "Ann", "Staff", "active", 1, 0]]), mode="full")
    assert full.extra["deactivated_not_in_file"] == 3
    assert env.learner("c@example.com").groups == ["Leavers"]
    revert(env, full.job_id)
    assert state(env) == before  # Leavers was created by the job and is gone again


def test_groups_the_job_created_go_when_empty(env: Env) -> None:
    base(env)
    header = ["unique_user_id", "primary_email_address", "group/Berlin"]
    job = env.run(roster(header, [["U1", "a@example.com", 1]]), name="berlin.csv")
    assert "Berlin" in state(env)["group_names"]
    revert(env, job.job_id)
    assert "Berlin" not in state(env)["group_names"]
    assert "group/Berlin" not in env.export().splitlines()[0]


def test_a_later_change_is_a_conflict_unless_forced(env: Env) -> None:
    base(env)
    first = env.run(roster(HEADER, [["U1", "a@example.com", "Ann", "Lead", "active", 1, 0]]), name="1.csv")
    env.run(roster(HEADER, [["U1", "a@example.com", "Ann", "Boss", "active", 1, 0]]), name="2.csv")
    refused = revert(env, first.job_id)
    assert (refused.status, refused.code) == ("failed", "revert_conflict")
    assert "a@example.com" in (refused.message or "")
    [line] = results(env, refused)
    assert (line["outcome"], line["code"], line["primary_email_address"]) == (
        "error",
        "revert_conflict",
        "a@example.com",
    )
    assert env.learner("a@example.com").title == "Boss"  # nothing changed
    assert env.service.jobs.get(first.job_id or 0).status == "succeeded"
    forced = revert(env, first.job_id, force=True)
    assert forced.status == "succeeded"
    assert env.learner("a@example.com").title == "Staff"


def test_seats_are_respected(env: Env) -> None:
    base(env)
    off = env.run(roster(HEADER, [["U1", "a@example.com", "Ann", "Staff", "inactive", 1, 0]]), name="off.csv")
    env.reconfigure(licenses={LIC: 2})  # 2 of 2 seats now used (b, c)
    refused = revert(env, off.job_id)
    assert (refused.status, refused.code) == ("failed", "no_seats")
    assert "3 of 2 seats" in (refused.message or "")
    assert env.learner("a@example.com").license_type is None
    env.reconfigure(licenses={LIC: 3})
    assert revert(env, off.job_id).status == "succeeded"


def test_dry_run_prints_the_lines_and_changes_nothing(env: Env) -> None:
    base(env)
    job = env.run(roster(HEADER, [["U1", "a@example.com", "Ann", "Lead", "active", 1, 0]]), name="t.csv")
    before = state(env)
    out = io.StringIO()
    result = revert(env, job.job_id, dry_run=True, out=out)
    assert (result.job_id, result.status, result.restored) == (None, "succeeded", 1)
    assert (
        out.getvalue()
        .splitlines()[1]
        .startswith("restored,,,U1,a@example.com,Ann,,work_title: Lead -> Staff")
    )
    assert state(env) == before
    assert env.service.jobs.get(job.job_id or 0).status == "succeeded"
    assert not list(env.dirs.results.glob("revert-*"))


def test_a_revert_can_be_reverted(env: Env) -> None:
    base(env)
    job = env.run(
        roster(
            HEADER,
            [
                ["U1", "a@example.com", "Ann", "Lead", "inactive", 0, 1],
                ["U9", "z@example.com", "Z", "", "", 1, 0],
            ],
        ),
        name="t.csv",
    )
    applied = state(env)
    first = revert(env, job.job_id)
    again = revert(env, first.job_id)
    assert again.status == "succeeded"
    assert state(env) == applied


def test_grace_counts_are_restored(env: Env) -> None:
    env.reconfigure(deactivate_after_missing_runs=2)
    base(env)
    full = env.run(roster(HEADER, [["U1", "a@example.com", "Ann", "Staff", "active", 1, 0]]), mode="full")
    assert full.extra["missing_in_grace"] == 3
    revert(env, full.job_id)
    assert all(values[-1] == 0 for values in state(env)["learners"].values())  # missing_runs


def test_only_applied_jobs_can_be_reverted(env: Env) -> None:
    first = base(env)
    env.run(roster(HEADER, [["U1", "a@example.com", "Ann", "Staff", "inactive", 1, 0]]), name="x.csv")
    env.reconfigure(max_deactivation_ratio=0.0)
    held = env.run(roster(HEADER, [["U2", "b@example.com", "Bob", "Staff", "inactive", 0, 1]]), name="y.csv")
    assert held.status == "held"
    with pytest.raises(UsageError, match="only applied jobs"):
        revert(env, held.job_id)
    env.service.reject(held.job_id or 0, CLI)
    result = revert(env, first.job_id, force=True)
    with pytest.raises(UsageError, match=f"already reverted \\(by job {result.job_id}\\)"):
        revert(env, first.job_id)


def test_a_reverted_file_can_be_sent_again(env: Env) -> None:
    base(env)
    text_ = roster(HEADER, [["U1", "a@example.com", "Ann", "Lead", "active", 1, 0]])
    job = env.run(text_, name="t.csv")
    revert(env, job.job_id)
    again = env.run(text_, name="t.csv")
    assert again.status == "succeeded"  # not a duplicate of the reverted job
    assert env.learner("a@example.com").title == "Lead"


def test_reassigned_licence_goes_back(env: Env) -> None:
    env.reconfigure(licenses={LIC: 0, PRO: 0})
    header = ["unique_user_id", "primary_email_address", f"{LIC}_status", f"{PRO}_status"]
    env.run(roster(header, [["U1", "a@example.com", "active", ""]]), name="a.csv")
    before = state(env)
    job = env.run(roster(header, [["U1", "a@example.com", "", "active"]]), name="b.csv")
    assert env.learner("a@example.com").license_type == PRO
    revert(env, job.job_id)
    assert state(env) == before


def test_a_groups_from_membership_comes_back_with_its_source(env: Env) -> None:
    env.reconfigure(groups_from=["Department"], blank_means="clear", max_deactivation_ratio=1.0)
    env.run(roster(["primary_email_address", "Department"], [["a@example.com", "Sales"]]), name="a.csv")
    before = memberships(env)
    assert before == [("a@example.com", "Sales", "department")]
    # A group/ column for the same group, left blank (= not a member): the learner leaves it.
    job = env.run(roster(["primary_email_address", "group/Sales"], [["a@example.com", ""]]), name="b.csv")
    assert memberships(env) == []
    revert(env, job.job_id)
    assert memberships(env) == before  # back as the column's membership, so the column still moves it
    env.run(roster(["primary_email_address", "Department"], [["a@example.com", "Ops"]]), name="c.csv")
    assert memberships(env) == [("a@example.com", "Ops", "department")]


def memberships(env: Env) -> list[tuple[str, str, str | None]]:
    with env.service.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT l.email, g.name, m.source FROM membership m JOIN learner l ON l.id = m.learner_id "
                "JOIN learner_group g ON g.id = m.group_id WHERE l.tenant_id = :t ORDER BY g.name"
            ),
            {"t": env.service.jobs.tenant_id(env.tenant)},
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]
