"""Approve and reject: from the CLI and by decision files in the inbox, each decision recorded."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from orgsyncd import decisions
from orgsyncd.core.results import Summary
from orgsyncd.errors import UsageError
from tests.helpers import LIC, Env, read_csv, roster

HEADER = ["primary_email_address", f"{LIC}_status"]
SFTP = "sftp:acme@192.0.2.7 SHA256:abcdef"


def held_job(env: Env, **config: Any) -> Summary:
    env.reconfigure(sftp_approval=True, max_deactivations=0, **config)
    env.run(roster(HEADER, [["a@example.com", "active"], ["b@example.com", "active"]]), name="base.csv")
    held = env.run(roster(HEADER, [["a@example.com", "inactive"]]), name="leaver.csv")
    assert held.status == "held"
    return held


def upload(env: Env, name: str, body: bytes = b"", actor: str | None = SFTP) -> Path:
    path = env.dirs.inbox / name
    path.write_bytes(body)
    assert env.service.enqueue_file(env.tenant, path, actor) is None  # a decision is never a job
    return path


def answer(env: Env, name: str) -> tuple[dict[str, str], dict[str, Any]]:
    [line] = read_csv(env.dirs.results / f"{name}.results.csv")
    summary = json.loads((env.dirs.results / f"{name}.summary.json").read_text(encoding="utf-8"))
    return line, summary


def recorded(env: Env) -> list[tuple[Any, ...]]:
    with env.service.engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                text(
                    "SELECT job_id, decision, outcome, actor, via, file_name FROM job_decision "
                    "WHERE tenant_id = :t ORDER BY id"
                ),
                {"t": env.service.jobs.tenant_id(env.tenant)},
            )
        ]


def age(path: Path) -> None:
    """As if the file had been there for a while: a rescan takes it (ctime cannot be set, so the
    grace period is shortened instead)."""
    os.utime(path)


def test_approve_file_releases_the_held_job(env: Env) -> None:
    held = held_job(env)
    name = f"approve-{held.job_id}"
    path = upload(env, name)
    job = env.service.jobs.get(held.job_id or 0)
    assert (job.status, job.approved) == ("queued", True)
    line, summary = answer(env, name)
    assert (line["row"], line["outcome"], line["code"]) == ("0", "approved", "approved")
    assert SFTP in line["message"]
    assert summary["outcome"] == "approved" and summary["actor"] == SFTP and summary["via"] == "sftp"
    assert recorded(env) == [(held.job_id, "approve", "approved", SFTP, "sftp", name)]
    [event] = [e for e in env.service.jobs.events(held.job_id or 0) if e.code == "approved"]
    assert event.actor == SFTP  # the state change itself names who decided
    assert path.exists()  # SFTP clients stat what they uploaded; a later rescan removes it
    [result] = env.service.run_due()
    assert (result.job_id, result.status) == (held.job_id, "succeeded")
    assert env.learner("a@example.com").license_type is None


def test_reject_file_drops_the_held_job(env: Env) -> None:
    held = held_job(env)
    upload(env, f"reject-{held.job_id}")
    job = env.service.jobs.get(held.job_id or 0)
    assert job.status == "rejected"
    assert env.summary_json(held)["status"] == "rejected"
    assert SFTP in env.summary_json(held)["message"]
    assert env.learner("a@example.com").license_type == LIC


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("not_held", "is succeeded; only held jobs can be approved"),
        ("unknown", "there is no job 999 of this tenant"),
        ("not_empty", "a decision file must be empty; this one has 29 bytes"),
        ("switched_off", "does not take decisions by file (sftp_approval is off)"),
    ],
)
def test_refused_decisions_change_nothing_and_say_why(env: Env, case: str, reason: str) -> None:
    held = held_job(env)
    job_id = held.job_id
    body = b""
    if case == "not_held":
        job_id = env.service.jobs.recent(tenant=env.tenant, status="succeeded")[0].id  # base.csv
    elif case == "unknown":
        job_id = 999
    elif case == "not_empty":
        body = b"primary_email_address\nx@y.z\n\n"
    elif case == "switched_off":
        env.reconfigure(sftp_approval=False)
    name = f"approve-{job_id}"
    upload(env, name, body)
    assert env.service.jobs.get(held.job_id or 0).status == "held"
    line, summary = answer(env, name)
    assert (line["outcome"], line["code"]) == ("error", "approval_refused")
    assert reason in line["message"]
    assert summary["code"] == "approval_refused"
    assert recorded(env)[-1][:3] == (job_id, "approve", "refused")


def test_another_tenants_job_is_refused_like_an_unknown_one(env: Env, tmp_path: Path) -> None:
    other = Env(root=tmp_path / "other", db_url=env.db_url, tenant=f"{env.tenant}-other")
    try:
        theirs = held_job(other)
        held_job(env)
        upload(env, f"approve-{theirs.job_id}")
        assert other.service.jobs.get(theirs.job_id or 0).status == "held"
        line, _ = answer(env, f"approve-{theirs.job_id}")
        assert line["message"] == f"there is no job {theirs.job_id} of this tenant"
    finally:
        other.close()


def test_a_second_decision_names_the_first(env: Env) -> None:
    held = held_job(env)
    env.service.approve(held.job_id or 0, "cli:ops")
    upload(env, f"reject-{held.job_id}")
    line, _ = answer(env, f"reject-{held.job_id}")
    assert "is queued; only held jobs can be rejected (approved by cli:ops at " in line["message"]


def test_watcher_leaves_a_fresh_file_to_the_sftp_layer_and_rescans_tidy_up(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = held_job(env)
    name = f"approve-{held.job_id}"
    path = upload(env, name, actor=None)  # the watcher: no sender known, and the file is new
    assert env.service.jobs.get(held.job_id or 0).status == "held"
    assert env.service.enqueue_file(env.tenant, path, SFTP) is None  # the upload's own report
    assert env.service.jobs.get(held.job_id or 0).status == "queued"
    assert env.service.scan_inboxes() == []  # taken already, not settled yet: it stays
    assert path.exists()
    monkeypatch.setattr(decisions, "DECISION_GRACE_S", 0.0)
    env.service.scan_inboxes()
    assert not path.exists() and not list(env.dirs.spool.glob(f"*__{name}"))
    assert len(recorded(env)) == 1  # seen three times, decided once


def test_a_file_placed_by_other_means_is_decided_as_the_inbox(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = held_job(env)
    monkeypatch.setattr(decisions, "DECISION_GRACE_S", 0.0)
    (env.dirs.inbox / f"reject-{held.job_id}").write_bytes(b"\n")  # `echo > reject-N` is empty enough
    env.service.scan_inboxes()
    assert env.service.jobs.get(held.job_id or 0).status == "rejected"
    assert recorded(env)[-1][3:5] == (f"inbox:{env.tenant}", "inbox")


def test_changed_times_do_not_make_a_second_decision(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    held = held_job(env)
    path = upload(env, f"approve-{held.job_id}")
    os.utime(path, (time.time() - 3600, time.time() - 3600))  # a client's set-modtime after upload
    monkeypatch.setattr(decisions, "DECISION_GRACE_S", 0.0)
    env.service.scan_inboxes()
    assert len(recorded(env)) == 1
    assert answer(env, f"approve-{held.job_id}")[0]["outcome"] == "approved"


def test_a_decision_file_taken_before_a_crash_is_decided_at_start(env: Env) -> None:
    held = held_job(env)
    name = f"approve-{held.job_id}"
    path = env.dirs.inbox / name
    path.write_bytes(b"")
    info = path.stat()
    os.link(path, env.dirs.spool / f"{info.st_ino:x}-{info.st_mtime_ns:x}__{name}")  # taken, then a crash
    env.service.recover()
    assert env.service.jobs.get(held.job_id or 0).status == "queued"
    assert recorded(env)[-1][3] == f"inbox:{env.tenant}"
    env.service.recover()
    assert len(recorded(env)) == 1


def test_cli_decisions_are_recorded_too(env: Env) -> None:
    held = held_job(env)
    env.service.reject(held.job_id or 0, "cli:alice")
    with pytest.raises(UsageError, match="only held jobs can be approved"):
        env.service.approve(held.job_id or 0, "cli:bob")
    assert recorded(env) == [
        (held.job_id, "reject", "rejected", "cli:alice", "cli", None),
        (held.job_id, "approve", "refused", "cli:bob", "cli", None),
    ]
