"""Claims, leases and takeovers between real orgsyncd processes sharing one database and data
directory, on SQLite and PostgreSQL (lease_s = 2 s, so each test takes seconds).

- ``run-now`` killed (SIGKILL) inside a job: the job shows ``running`` on the dead instance; the
  next run takes it over and it applies exactly once.
- ``run-now`` hung (SIGSTOP) inside a job: ``jobs list`` names the instance that has it; another
  run leaves it alone while the lease holds, takes it over once the lease ran out, and applies it;
  when the stopped process resumes (SIGCONT), its attempt is refused (fencing): nothing applied twice.
- a job that runs longer than lease_s keeps it (heartbeats): another run leaves it alone.
- ``orgsyncd import`` of a tenant another instance is busy with names that instance and its lease.
- two processes firing the same daily slot export each tenant once (slot_claim rows).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import PG_SKIP
from tests.faultkit import Installation, Workload, check_final, installation, wait_for

LEASE_S = 2.0
HUNG_LEASE_S = 8.0  # room for two CLI commands on a busy machine before it runs out


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str | None) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orgsyncd.db'}"
    if pg_url is None:
        pytest.skip(PG_SKIP)
    return pg_url


@contextlib.contextmanager
def site(
    tmp_path: Path, backend: str, files: int = 2, lease_s: float = LEASE_S
) -> Iterator[tuple[Installation, Workload]]:
    work = Workload(tenants=[f"claim-{uuid.uuid4().hex[:6]}"], files=files, base=40)
    with installation(tmp_path / "site", backend, work.tenants, lease_s=lease_s) as inst:
        assert inst.run("jobs", "list") == 0  # the schema in place
        for k in range(1, files + 1):
            inst.upload(work.tenants[0], work.name(k), work.content(work.tenants[0], k))
        yield inst, work


def events(inst: Installation, job_id: int) -> list[tuple[str | None, str, str, str | None]]:
    rows = inst.query(
        "SELECT from_status, to_status, actor, code FROM job_event WHERE job_id = :j ORDER BY id", j=job_id
    )
    return [tuple(row) for row in rows]


def running(inst: Installation) -> list[object]:
    return inst.query(
        "SELECT j.id, j.instance, j.lease_expires_at, j.db_session FROM job j JOIN tenant t "
        "ON t.id = j.tenant_id WHERE j.status = 'running' AND t.name = :t",
        t=inst.tenants[0],
    )


def cli(inst: Installation, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orgsyncd", "--config", str(inst.config), *args],
        cwd=inst.root,
        env=inst.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _stopped(pid: int) -> bool:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0] == "T"


def test_a_killed_run_is_taken_over_and_applied_once(tmp_path: Path, backend: str) -> None:
    with site(tmp_path, backend) as (inst, work):
        killed = inst.popen("run-now", env={"ORGSYNCD_FAULT": "after_apply:kill"})
        assert killed.wait(60) == -signal.SIGKILL
        [(job_id, holder, _, _)] = running(inst)  # left running, on the dead instance
        assert str(holder).endswith(f":{killed.pid}")
        assert inst.run("run-now") == 0
        report = check_final(inst, work)
        assert not report.problems, report.problems
        trail = events(inst, job_id)
        assert [(f, t, c) for f, t, _, c in trail] == [
            (None, "queued", None),
            ("queued", "running", None),
            ("running", "queued", "instance_gone"),  # the takeover: its attempt rolled back
            ("queued", "running", None),
            ("running", "succeeded", None),
        ]
        assert trail[1][2] != trail[3][2]  # claimed by two instances


@pytest.mark.parametrize("point", ["after_stage", "after_apply"])
def test_a_hung_run_keeps_its_lease_then_loses_it_and_its_late_commit_is_refused(
    tmp_path: Path, backend: str, point: str
) -> None:
    """after_stage: stopped before the transaction that applies; it wakes up to find the job taken
    over. after_apply (PostgreSQL): stopped inside it, holding row locks; the taker ends its session.
    (On SQLite a process stopped inside that transaction holds the database's write lock, and
    nobody can take over until it goes on.)"""
    if point == "after_apply" and backend.startswith("sqlite"):
        pytest.skip("SQLite: a process stopped while it writes blocks every other writer")
    with site(tmp_path, backend, lease_s=HUNG_LEASE_S) as (inst, work):
        hung = inst.popen("run-now", env={"ORGSYNCD_FAULT": f"{point}:stop@1"}, log="hung")
        try:
            wait_for(lambda: _stopped(hung.pid), "the run to stop mid-job", 60)
            [(job_id, holder, _, session)] = running(inst)
            assert str(holder).endswith(f":{hung.pid}") and session
            listed = cli(inst, "jobs", "list")
            line = next(x for x in listed.stdout.splitlines() if x.split()[0] == str(job_id))
            assert "running" in line and f"instance {holder} since" in line and "lease until" in line
            shown = json.loads(cli(inst, "jobs", "show", str(job_id)).stdout)
            assert shown["status"] == "running" and shown["instance"] == holder
            assert shown["claimed_at"] and shown["lease_expires_at"]
            assert shown["running"].startswith(f"running on instance {holder} since")

            early = cli(inst, "run-now")  # the lease holds: the job and its tenant are left alone
            assert early.returncode == 0, early.stderr
            assert f"job {job_id}" in early.stderr and f"running on instance {holder}" in early.stderr
            assert running(inst)[0][1] == holder

            wait_for(lambda: _lease_over(inst, job_id), "the lease to run out", 2 * HUNG_LEASE_S)
            assert inst.run("run-now") == 0  # takes it over and applies everything
            assert [job.status for job in inst.jobs(work.tenants[0])] == ["succeeded"] * work.files
        finally:
            os.kill(hung.pid, signal.SIGCONT)
        assert hung.wait(60) == 0  # it resumes, finds the job taken over, applies nothing
        report = check_final(inst, work)
        assert not report.problems, report.problems
        codes = [code for _, _, _, code in events(inst, job_id)]
        assert "lease_expired" in codes
        hung_log = (inst.root / "hung.out").read_text()
        assert "job_attempt_void" in hung_log, hung_log[-2000:]


def _lease_over(inst: Installation, job_id: int) -> bool:
    rows = inst.query("SELECT lease_expires_at FROM job WHERE id = :j", j=job_id)
    lease = rows[0][0]
    if isinstance(lease, str):  # SQLite hands back text
        lease = datetime.fromisoformat(lease)
    if lease.tzinfo is None:
        lease = lease.replace(tzinfo=UTC)
    return bool(datetime.now(UTC) > lease)


def test_a_job_held_by_a_live_instance_is_named_by_import(tmp_path: Path, backend: str) -> None:
    with site(tmp_path, backend, files=1, lease_s=HUNG_LEASE_S) as (inst, work):
        hung = inst.popen("run-now", env={"ORGSYNCD_FAULT": "after_stage:stop@1"}, log="hung")
        try:
            wait_for(lambda: _stopped(hung.pid), "the run to stop mid-job", 60)
            [(job_id, holder, _, _)] = running(inst)
            extra = inst.root / "extra.csv"
            extra.write_bytes(work.content(work.tenants[0], 1))
            refused = cli(inst, "import", str(extra), "--tenant", work.tenants[0])
            assert refused.returncode == 1
            assert f"job {job_id} of tenant" in refused.stderr
            assert f"running on instance {holder} since" in refused.stderr, refused.stderr
            assert "another orgsyncd process" not in refused.stderr
        finally:
            os.kill(hung.pid, signal.SIGCONT)
        assert hung.wait(60) == 0


def test_a_live_instance_keeps_its_job_past_the_lease(tmp_path: Path, backend: str) -> None:
    """The heartbeat: a job that takes longer than lease_s is renewed, so another run leaves it."""
    with site(tmp_path, backend, files=1) as (inst, work):
        slow = inst.popen("run-now", env={"ORGSYNCD_FAULT": f"after_stage:pause{3 * LEASE_S}"}, log="slow")
        wait_for(lambda: running(inst), "the job to be claimed", 60)
        time.sleep(1.5 * LEASE_S)  # past the first lease: only renewals keep it
        other = cli(inst, "run-now")
        assert other.returncode == 0, other.stderr
        assert slow.wait(60) == 0
        report = check_final(inst, work)
        assert not report.problems, report.problems
        [job] = inst.jobs(work.tenants[0])
        codes = [code for _, _, _, code in events(inst, job.id)]
        assert "lease_expired" not in codes and "instance_gone" not in codes, codes


SLOT_WORK = """
import json, sys, time
from datetime import date
from orgsyncd.config import load_settings
from orgsyncd.service import Service

service = Service(load_settings(sys.argv[1]))
service.migrate()
while time.time() < float(sys.argv[2]):  # both fire the same slot at the same moment
    time.sleep(0.005)
print("DONE " + json.dumps(service.daily_maintenance(date(2031, 5, 6))), flush=True)
"""


def test_two_processes_firing_the_daily_slot_export_each_tenant_once(tmp_path: Path, backend: str) -> None:
    tenants = [f"slot-{i}-{uuid.uuid4().hex[:6]}" for i in range(4)]
    with installation(tmp_path / "site", backend, tenants, lease_s=LEASE_S) as inst:
        assert inst.run("jobs", "list") == 0
        at = str(time.time() + 4)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", SLOT_WORK, str(inst.config), at],
                cwd=inst.root,
                env=inst.env(ORGSYNCD_DAEMON__INSTANCE_NAME=f"node-{i}"),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for i in range(2)
        ]
        outputs = [proc.communicate(timeout=60)[0] for proc in procs]
        done = [json.loads(out.split("DONE ", 1)[1]) for out in outputs]
        assert all(proc.returncode == 0 for proc in procs)
        mine = sorted(item for items in done for item in items if item.startswith("daily/"))
        assert mine == sorted(f"daily/{t}" for t in tenants)  # each tenant by exactly one of them
        rows = inst.query(
            "SELECT t.name, s.instance, s.done_at IS NOT NULL FROM slot_claim s "
            "JOIN tenant t ON t.id = s.tenant_id WHERE s.kind = 'daily' AND s.slot = '2031-05-06'"
        )
        ours = {name: (instance, done) for name, instance, done in rows if name in tenants}
        assert set(ours) == set(tenants) and all(done for _, done in ours.values())
        for tenant in tenants:
            assert (inst.tenant_dir(tenant, "exports") / "roster-2031-05-06.csv").is_file()
