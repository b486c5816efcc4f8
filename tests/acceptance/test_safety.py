"""A held job as its tenant and operator meet it: the real daemon, a plan file to download, an
approval uploaded over SFTP (paramiko), a refused one from OpenSSH's own sftp client, and the
applied job reverted from the CLI."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import asyncssh
import pytest

from tests.acceptance.conftest import Daemons, Keys, Site, Tenant, openssh_sftp, paramiko_sftp, wait_until
from tests.helpers import LIC, roster

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the daemon's signals and inotify are Linux-only"),
    pytest.mark.skipif(shutil.which("sftp") is None, reason="needs the OpenSSH client"),
]

HEADER = ["primary_email_address", f"{LIC}_status"]


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_hold_plan_approve_by_sftp_then_revert(
    daemons: Daemons, site: Site, keys: Keys, tmp_path: Path
) -> None:
    site.write_config(
        [Tenant("acme", keys.public("acme"))], extra="sftp_approval = true\nmax_deactivations = 0\n"
    )
    base = tmp_path / "base.csv"
    base.write_text(
        roster(HEADER, [["a@example.com", "active"], ["b@example.com", "active"]]), encoding="utf-8"
    )
    assert site.cli("import", str(base), "--tenant", "acme").returncode == 0
    leaver = tmp_path / "leaver.csv"
    leaver.write_text(roster(HEADER, [["a@example.com", "inactive"]]), encoding="utf-8")
    held = site.cli("import", str(leaver), "--tenant", "acme")
    assert held.returncode == 1 and "is held" in held.stderr
    job_id = json.loads(held.stdout)["job_id"]
    daemons.start(["--config", str(site.config)])

    with paramiko_sftp(site.sftp_port, "acme", keys) as sftp:
        plan = io.BytesIO()
        sftp.getfo(f"/results/leaver.{job_id}.plan.csv", plan)
        [line] = rows(plan.getvalue().decode())
        assert (line["action"], line["primary_email_address"]) == ("deactivate", "a@example.com")
        sftp.putfo(io.BytesIO(b""), f"/inbox/approve-{job_id}")  # paramiko stats it after: it is still there
        answer = wait_until(
            lambda: _read(sftp, f"/results/approve-{job_id}.results.csv"), "the answer to the approval"
        )
    [decided] = rows(answer)
    assert (decided["outcome"], decided["code"]) == ("approved", "approved")
    fingerprint = asyncssh.read_public_key(keys.public("acme")).get_fingerprint()
    actor = f"sftp:acme@127.0.0.1 {fingerprint}"
    assert site.db("SELECT job_id, outcome, actor, via FROM job_decision") == [
        (job_id, "approved", actor, "sftp")
    ]
    assert site.db("SELECT actor FROM job_event WHERE job_id = ? AND code = 'approved'", job_id) == [(actor,)]
    shown = json.loads(site.cli("jobs", "show", str(job_id)).stdout)
    assert [(d["outcome"], d["actor"], d["via"]) for d in shown["decisions"]] == [("approved", actor, "sftp")]
    assert site.cli("run-now", "--tenant", "acme").returncode == 0
    assert site.job("leaver.csv") == (job_id, "acme", "succeeded")

    # The same decision again, from OpenSSH's sftp: refused, and the answer says why.
    (tmp_path / f"approve-{job_id}").write_bytes(b"")
    put = openssh_sftp(
        site.sftp_port, "acme", keys.private("acme"), [f"put approve-{job_id} inbox/"], tmp_path
    )
    assert put.returncode == 0, put.stderr
    refused = wait_until(lambda: _refusal(site, f"approve-{job_id}"), "the refusal of the second approval")
    assert f"job {job_id} is succeeded; only held jobs can be approved (approved by {actor}" in refused

    dry = site.cli("jobs", "revert", str(job_id), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert rows(dry.stdout)[0]["outcome"] == "restored"
    done = site.cli("jobs", "revert", str(job_id))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded" and result["counts"] == {"restored": 1, "deactivated": 0}
    assert site.job("leaver.csv") == (job_id, "acme", "reverted")
    assert site.db("SELECT license_type FROM learner WHERE email = 'a@example.com'") == [(LIC,)]
    revert_results = site.data / "tenants/acme/results" / f"revert-{job_id}.{result['job_id']}.results.csv"
    assert rows(revert_results.read_text(encoding="utf-8"))[0]["primary_email_address"] == "a@example.com"


def _read(sftp: object, path: str) -> str | None:
    out = io.BytesIO()
    try:
        sftp.getfo(path, out)  # type: ignore[attr-defined]
    except FileNotFoundError:
        return None
    return out.getvalue().decode()


def _refusal(site: Site, name: str) -> str | None:
    path = site.data / "tenants/acme/results" / f"{name}.results.csv"
    if not path.exists():
        return None
    [line] = rows(path.read_text(encoding="utf-8"))
    return line["message"] if line["code"] == "approval_refused" else None
