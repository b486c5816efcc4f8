"""Jobs: queueing from inboxes, order, held/approve/reject/retry, duplicates, crash safety."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from orgsyncd.errors import InjectedFault, UsageError
from tests.helpers import LIC, Env, read_csv, roster

HEADER = ["primary_email_address", f"{LIC}_status"]


def drop(env: Env, name: str, text: str) -> Path:
    path = env.dirs.inbox / name
    path.write_text(text, encoding="utf-8")
    return path


def people(n: int, status: str = "active", start: int = 0) -> str:
    return roster(HEADER, [[f"p{i}@example.com", status] for i in range(start, start + n)])


def test_enqueue_is_idempotent_and_ignores_temporary_names(env: Env) -> None:
    path = drop(env, "a.csv", people(1))
    drop(env, "b.csv.part", people(1))
    drop(env, ".hidden.csv", people(1))
    first = env.service.enqueue_file(env.tenant, path)
    assert first is not None
    assert env.service.enqueue_file(env.tenant, path) is None  # already taken into the spool
    assert env.service.scan_inboxes() == []
    # The upload stays visible in inbox/ until its job is processed.
    assert sorted(p.name for p in env.dirs.inbox.iterdir()) == [".hidden.csv", "a.csv", "b.csv.part"]
    job = env.service.jobs.get(first)
    assert (job.status, job.file_name, job.size) == (
        "queued",
        "a.csv",
        path.stat().st_size,
    )
    assert len(job.sha256) == 64
    env.service.run_due()  # processed: the upload leaves inbox/
    assert sorted(p.name for p in env.dirs.inbox.iterdir()) == [".hidden.csv", "b.csv.part"]


def test_job_files_say_where_input_and_results_are(env: Env) -> None:
    job_id = env.service.enqueue_file(env.tenant, drop(env, "w.csv", people(1)))
    assert job_id is not None
    queued = env.service.job_files(env.service.jobs.get(job_id))
    assert queued["input"] is not None and Path(queued["input"]).parent == env.dirs.spool
    assert (queued["results"], queued["summary"]) == (None, None)  # not written yet
    env.service.run_due()
    done = env.service.job_files(env.service.jobs.get(job_id))
    assert done == {
        "input": str(env.dirs.archive / f"w.{job_id}.csv"),
        "results": str(env.dirs.results / f"w.{job_id}.results.csv"),
        "summary": str(env.dirs.results / f"w.{job_id}.summary.json"),
        "report": str(env.dirs.results / f"w.{job_id}.report.html"),
    }


def test_jobs_of_a_tenant_run_in_arrival_order(env: Env) -> None:
    drop(env, "1.csv", roster(["primary_email_address", "work_title"], [["a@example.com", "first"]]))
    env.service.scan_inboxes()
    drop(env, "2.csv", roster(["primary_email_address", "work_title"], [["a@example.com", "second"]]))
    env.service.scan_inboxes()
    results = env.service.run_due("hourly")
    assert [(r.file, r.status) for r in results] == [("1.csv", "succeeded"), ("2.csv", "succeeded")]
    assert env.learner("a@example.com").title == "second"
    assert env.service.queue_depth() == 0
    assert sorted(p.name for p in env.dirs.archive.iterdir()) == [
        f"1.{results[0].job_id}.csv",
        f"2.{results[1].job_id}.csv",
    ]


def test_unsupported_file_type_gets_a_result_and_is_archived(env: Env) -> None:
    drop(env, "roster.xls", "PK\x03\x04 not a csv")
    env.service.scan_inboxes()
    [result] = env.service.run_due()
    assert result.status == "failed"
    [line] = read_csv(env.dirs.results / f"roster.{result.job_id}.results.csv")
    assert (line["row"], line["outcome"], line["code"]) == ("0", "error", "unsupported_file_type")
    assert (env.dirs.archive / f"roster.{result.job_id}.xls").exists()


def test_duplicate_file_names_the_earlier_job(env: Env) -> None:
    text = people(2)
    first = env.run(text, name="a.csv")
    second = env.run(text, name="b.csv")
    assert second.status == "duplicate"
    data = env.summary_json(second)
    assert data["status"] == "duplicate" and data["duplicate_of"] == first.job_id
    assert env.results(second)[0]["code"] == "duplicate_file"


def test_daily_cadence_and_big_files_wait_for_the_daily_run(env: Env) -> None:
    env.reconfigure(cadence="daily")
    drop(env, "a.csv", people(1))
    env.service.scan_inboxes()
    assert env.service.run_due("hourly") == []
    assert [r.status for r in env.service.run_due("daily")] == ["succeeded"]


def full_setup(env: Env) -> None:
    env.reconfigure(max_deactivation_ratio=0.10)
    env.run(people(20), name="base.csv")


def test_full_mode_threshold_holds_then_approve_applies(env: Env) -> None:
    full_setup(env)
    held = env.run(people(15), name="full_today.csv")  # 5 of 20 would go: 25% > 10%
    assert held.status == "held"
    lines = env.results(held)
    assert (lines[0]["row"], lines[0]["outcome"], lines[0]["code"]) == ("0", "error", "threshold_exceeded")
    assert "5 of 20" in lines[0]["message"]
    assert env.learner("p19@example.com").license_type == LIC  # nothing applied
    # A held job blocks the tenant's later files.
    drop(env, "later.csv", people(1, start=100))
    env.service.scan_inboxes()
    assert env.service.run_due() == []
    with pytest.raises(UsageError, match="held"):
        env.service.import_file(env.tenant, env.write(people(1, start=200)))
    env.service.approve(held.job_id, "cli:test")
    results = env.service.run_due()
    assert (results[0].job_id, results[0].status) == (held.job_id, "succeeded")
    assert results[1].file == "later.csv"
    assert env.learner("p19@example.com").status == "deactivated"
    summary = env.summary_json(held)
    assert summary["status"] == "succeeded" and summary["deactivated_not_in_file"] == 5


def test_full_mode_reject_applies_nothing(env: Env) -> None:
    full_setup(env)
    held = env.run(people(10), name="full_x.csv")
    env.service.reject(held.job_id, "cli:test")
    assert env.service.jobs.get(held.job_id).status == "rejected"
    assert env.summary_json(held)["status"] == "rejected"
    assert (env.dirs.archive / f"full_x.{held.job_id}.csv").exists()
    assert env.learner("p15@example.com").license_type == LIC
    with pytest.raises(UsageError, match="only held"):
        env.service.approve(held.job_id, "cli:test")


def test_full_mode_under_threshold_deactivates_the_absent(env: Env) -> None:
    env.reconfigure(max_deactivation_ratio=0.5, inactive_group="Leavers")
    env.run(people(10), name="base.csv")
    summary = env.run(people(8), name="full_now.csv")
    assert summary.status == "succeeded" and summary.extra["deactivated_not_in_file"] == 2
    gone = env.learner("p9@example.com")
    assert (gone.status, gone.license_type, gone.groups) == ("deactivated", None, ["Leavers"])
    actions = [(event.action, event.after) for event in env.service.learners.audit(gone.id)]
    assert [a for a, _ in actions] == ["created", "deactivated", "group_added"]
    assert actions[2][1] == "Leavers"  # the move to the inactive group is audited too


def test_full_mode_error_rows_still_count_as_present(env: Env) -> None:
    env.reconfigure(max_deactivation_ratio=1.0)
    env.run(people(3), name="base.csv")
    text = roster(
        HEADER, [["p0@example.com", "active"], ["p1@example.com", "typo"], ["p2@example.com", "active"]]
    )
    summary = env.run(text, name="full_b.csv")
    assert summary.extra["deactivated_not_in_file"] == 0
    assert env.learner("p1@example.com").license_type == LIC


def test_max_deactivations_absolute_limit(env: Env) -> None:
    env.reconfigure(max_deactivation_ratio=1.0, max_deactivations=1)
    env.run(people(10), name="base.csv")
    assert env.run(people(8), name="full_c.csv").status == "held"


def test_retry_after_fixing_the_config(env: Env) -> None:
    failed = env.run(
        roster(["primary_email_address", "gold_status"], [["a@example.com", "active"]]), name="g.csv"
    )
    assert failed.status == "failed"
    env.reconfigure(licenses={LIC: 0, "gold": 0})
    env.service.retry(failed.job_id, "cli:test")
    [result] = env.service.run_due()
    assert (result.job_id, result.status) == (failed.job_id, "succeeded")
    assert env.learner("a@example.com").license_type == "gold"
    with pytest.raises(UsageError):
        env.service.retry(result.job_id, "cli:test")


def test_dry_run_changes_nothing(env: Env) -> None:
    env.run(people(2), name="base.csv")
    summary = env.run(people(3), name="more.csv", dry_run=True)
    assert summary.counts["created"] == 1 and summary.counts["unchanged"] == 2
    assert summary.extra["dry_run"] is True
    assert env.service.learners.count(env.service.jobs.tenant_id(env.tenant)) == 2
    assert [j.file_name for j in env.service.jobs.recent(tenant=env.tenant)] == ["base.csv"]


def test_a_dry_run_that_would_be_held_names_no_job_to_approve(env: Env) -> None:
    full_setup(env)
    summary = env.run(people(15), name="full_today.csv", dry_run=True)
    assert summary.status == "held" and "5 of 20" in summary.extra["message"]
    assert "jobs approve" not in summary.extra["message"]  # there is no job: nothing to approve
    real = env.run(people(15), name="full_today.csv")
    assert f"orgsyncd jobs approve {real.job_id}'" in real.extra["message"]


@pytest.mark.parametrize("point", ["after_stage", "after_plan", "after_apply", "before_commit"])
def test_a_crash_before_commit_leaves_the_database_untouched(
    env: Env, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.reconfigure(max_deactivation_ratio=1.0)
    env.run(people(3), name="base.csv")
    before = env.export()
    drop(env, "next.csv", people(3, status="inactive"))
    env.service.scan_inboxes()
    monkeypatch.setenv("ORGSYNCD_FAULT", point)
    with pytest.raises(InjectedFault):
        env.service.runner.run(env.service.jobs.recent(tenant=env.tenant, status="queued")[0])
    assert env.export() == before
    assert env.service.jobs.recent(tenant=env.tenant, status="queued")[0].file_name == "next.csv"
    assert not list(env.dirs.results.glob("next.*"))
    monkeypatch.delenv("ORGSYNCD_FAULT")
    [result] = env.service.run_due()
    assert result.status == "succeeded"
    assert env.learner("p0@example.com").status == "deactivated"
    assert len(list(env.dirs.results.glob("next.*"))) == 3  # results, summary, report


def test_a_crash_after_commit_is_finished_at_the_next_start(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop(env, "a.csv", people(2))
    env.service.scan_inboxes()
    monkeypatch.setenv("ORGSYNCD_FAULT", "after_commit")
    with pytest.raises(InjectedFault):
        env.service.run_due()
    monkeypatch.delenv("ORGSYNCD_FAULT")
    job = env.service.jobs.recent(tenant=env.tenant)[0]
    assert job.status == "succeeded" and not job.finalized
    assert not list(env.dirs.results.iterdir())
    env.service.recover()  # what start-up does
    assert sorted(p.name for p in env.dirs.results.iterdir()) == [
        f"a.{job.id}.report.html",
        f"a.{job.id}.results.csv",
        f"a.{job.id}.summary.json",
    ]
    assert (env.dirs.archive / f"a.{job.id}.csv").exists()
    assert env.service.jobs.get(job.id).finalized
    assert env.service.run_due() == []  # never applied twice


def test_an_orphaned_spool_file_becomes_a_job_at_start(env: Env) -> None:
    orphan = env.dirs.spool / "0123456789abcdef__lost.csv"
    orphan.write_text(people(1), encoding="utf-8")
    env.service.recover()
    [job] = env.service.jobs.recent(tenant=env.tenant)
    assert (job.file_name, job.status) == ("lost.csv", "queued")
    env.service.recover()
    assert len(env.service.jobs.recent(tenant=env.tenant)) == 1


def test_export_writes_dated_file_and_prune_removes_old_files(env: Env) -> None:
    env.run(people(2), name="base.csv")
    target = env.service.export_to_dir(env.tenant)
    assert target.parent == env.dirs.exports and target.name.startswith("roster-")
    assert len(read_csv(target)) == 2
    old = env.dirs.results / "old.1.results.csv"
    old.write_text("x", encoding="utf-8")
    os.utime(old, (0, 0))
    assert env.service.prune(env.tenant) == 1
    assert not old.exists() and target.exists()


def test_the_same_name_uploaded_again_is_a_new_job(env: Env) -> None:
    path = drop(env, "daily.csv", people(1))
    first = env.service.enqueue_file(env.tenant, path)
    path.unlink()  # an SFTP upload of the same name replaces the file (a new inode)
    drop(env, "daily.csv", people(2))
    second = env.service.enqueue_file(env.tenant, path)
    assert first is not None and second is not None and first != second
    env.service.run_due()
    assert not path.exists()


def test_periodic_rescan_leaves_files_that_are_still_being_written(env: Env) -> None:
    fresh = drop(env, "fresh.csv", people(1))
    old = drop(env, "old.csv", people(1))
    os.utime(old, (time.time() - 60, time.time() - 60))
    assert len(env.service.scan_inboxes(min_age_s=2.0)) == 1
    assert [j.file_name for j in env.service.jobs.recent(tenant=env.tenant)] == ["old.csv"]
    assert len(env.service.scan_inboxes()) == 1 and fresh.exists()


def test_a_stop_request_ends_the_run_between_jobs(env: Env) -> None:
    for name in ("1.csv", "2.csv"):
        drop(env, name, roster(["primary_email_address", "work_title"], [["a@example.com", name]]))
        env.service.scan_inboxes()
    env.service.stop_requested.set()
    assert env.service.run_due() == []
    env.service.stop_requested.clear()
    assert [r.file for r in env.service.run_due()] == ["1.csv", "2.csv"]


def test_daily_maintenance_exports_every_tenant_and_prunes(env: Env) -> None:
    env.run(people(3), name="base.csv")
    stale = env.dirs.archive / "old.1.csv"
    stale.write_text("x", encoding="utf-8")
    os.utime(stale, (0, 0))
    env.service.daily_maintenance()
    [export] = list(env.dirs.exports.glob("roster-*.csv"))
    assert sorted(r["primary_email_address"] for r in read_csv(export)) == [
        f"p{i}@example.com" for i in range(3)
    ]
    assert not stale.exists()
    assert (env.dirs.archive / f"base.{env.service.jobs.recent(tenant=env.tenant)[0].id}.csv").exists()
