"""kill -9 of an orgsyncd process at every named moment of a job, and at random moments, on SQLite
and PostgreSQL. After every kill the installation at rest must be consistent (nothing half-applied,
nothing out of order, no results file ahead of the database, no upload lost), and after a clean run
every file must have applied exactly once with results that match the database.

The process killed is ``orgsyncd run-now`` (the hourly run's code path, in its own process) or the
daemon (``orgsyncd serve``, whose start-up catch-up run processes the queue). Named kills use the
fault points of ``orgsyncd/faults.py`` (``ORGSYNCD_FAULT=<point>:kill@<n>``: the n-th time the
process reaches the point); random kills send SIGKILL after a random delay.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.acceptance.conftest import free_port
from tests.conftest import PG_SKIP
from tests.faultkit import Installation, Workload, check_at_rest, check_final, installation

# Every moment of a job, in the order a job passes them (see the checkpoints in orgsyncd/).
NAMED = (
    "after_spool_link",  # queuing: the upload hard-linked into the spool, no job row yet
    "during_stage",  # staging: rows half loaded into the staging table
    "after_stage",
    "after_plan",
    "after_apply",  # applying: written, not committed
    "during_results",  # writing the results file (temporary name), mid-way
    "before_commit",
    "after_commit",  # committed; results not moved, input not archived
    "after_results_moved",  # results in place, input still in the spool
    "after_archive",  # input archived, job not yet marked finalized
)
KILLED = -9


@dataclass
class Tally:
    named: int = 0
    random: int = 0
    survived: int = 0  # the process finished before its kill came


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str | None) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orgsyncd.db'}"
    if pg_url is None:
        pytest.skip(PG_SKIP)
    return pg_url


def _tenants() -> list[str]:
    suffix = uuid.uuid4().hex[:6]
    return [f"kill-a-{suffix}", f"kill-b-{suffix}"]


def campaign(
    inst: Installation, work: Workload, plan: list[str], rng: random.Random, serve_every: int = 0
) -> Tally:
    """Run ``plan`` (fault point names, or "random"), one killed process each, uploading the files
    one per tenant per step; check the installation at rest after every kill; finish cleanly."""
    tally = Tally()
    uploaded = dict.fromkeys(work.tenants, 0)
    startup = _startup_seconds(inst)
    for step, kind in enumerate(plan):
        _upload_next(inst, work, uploaded)
        use_serve = serve_every and step % serve_every == serve_every - 1
        args = _serve_args(inst) if use_serve else ("run-now",)
        if kind == "random":
            proc = inst.popen(*args)
            code = inst.kill_after(proc, rng.uniform(0.0, startup + 1.5))
        else:
            env = {"ORGSYNCD_FAULT": f"{kind}:kill@{rng.choice((1, 2))}"}
            proc = inst.popen(*args, env=env)
            code = proc.wait(120) if not use_serve else inst.kill_after(proc, startup + 20)
        if code == KILLED and kind == "random":
            tally.random += 1
        elif code == KILLED:
            tally.named += 1
        else:
            tally.survived += 1
        report = check_at_rest(inst, work, uploaded)
        assert not report.problems, f"after step {step} ({kind}, exit {code}): {report.problems}"
    while any(n < work.files for n in uploaded.values()):
        _upload_next(inst, work, uploaded)
    assert inst.run("run-now") == 0, (inst.root / "cli.out").read_text()[-3000:]
    report = check_final(inst, work)
    assert not report.problems, report.problems
    return tally


def _upload_next(inst: Installation, work: Workload, uploaded: dict[str, int]) -> None:
    for tenant in work.tenants:
        if uploaded[tenant] < work.files:
            uploaded[tenant] += 1
            inst.upload(tenant, work.name(uploaded[tenant]), work.content(tenant, uploaded[tenant]))


def _serve_args(inst: Installation) -> tuple[str, ...]:
    inst.write_config(sftp_port=free_port(), metrics_port=free_port())
    return ("serve",)


def _startup_seconds(inst: Installation) -> float:
    """How long a process takes to get to work here (imports, config, migrations), to aim the
    random kills at the work rather than the interpreter's start."""
    clock = time.monotonic()
    assert inst.run("jobs", "list") == 0, (inst.root / "cli.out").read_text()[-3000:]
    return time.monotonic() - clock


def test_kill_at_every_named_moment_and_at_random(tmp_path: Path, backend: str) -> None:
    rng = random.Random(7)
    work = Workload(tenants=_tenants(), files=6, base=300)
    plan = [*NAMED, "random", "random"]
    with installation(tmp_path / "site", backend, work.tenants) as inst:
        tally = campaign(inst, work, plan, rng, serve_every=4)
    print(f"kill trials on {backend.split(':')[0]}: {tally}")
    assert tally.named >= len(NAMED) - 2  # a point may find no work left once; most must land


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_many_kills(tmp_path: Path, backend: str, seed: int) -> None:
    rng = random.Random(seed)
    work = Workload(tenants=_tenants(), files=25, base=2000)
    plan = [*NAMED * 2, *["random"] * 20]
    rng.shuffle(plan)
    with installation(tmp_path / "site", backend, work.tenants) as inst:
        tally = campaign(inst, work, plan, rng, serve_every=5)
    print(f"kill trials on {backend.split(':')[0]}, seed {seed}: {tally}")
    assert tally.named + tally.random >= len(plan) // 2
