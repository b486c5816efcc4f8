"""Several instances racing on one database and one data directory: 10 tenants x 20 files uploaded
while two daemons watch the inboxes (both see every file) and three processes run the queue over and
over (``orgsyncd run-now``, the hourly run's code path). In the middle one runner is killed with
SIGKILL while it works a job, and one daemon too; the others finish everything.

Afterwards each tenant's files applied exactly once, all of them (no gap), in upload order, with
results matching the database (tests/faultkit.py's invariants), and the installation was consistent
every time it was looked at while the race ran.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import free_port
from tests.conftest import PG_SKIP
from tests.faultkit import Installation, Workload, check_at_rest, check_final, installation, wait_for

RUNNERS = 3


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str | None) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orgsyncd.db'}"
    if pg_url is None:
        pytest.skip(PG_SKIP)
    return pg_url


class Race:
    """Runners that start ``orgsyncd run-now`` again and again until told to stop."""

    def __init__(self, inst: Installation) -> None:
        self.inst = inst
        self.stop = threading.Event()
        self.current: dict[int, subprocess.Popen[bytes]] = {}
        self.runs = 0
        self.killed = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(RUNNERS)]

    def _loop(self, index: int) -> None:
        while not self.stop.is_set():
            proc = self.inst.popen("run-now", log=f"runner-{index}")
            self.current[index] = proc
            code = proc.wait(300)
            self.runs += 1
            self.killed += code == -signal.SIGKILL
            if code not in (0, -signal.SIGKILL):
                self.errors.append(f"runner {index} exited {code}")

    def kill_one_mid_job(self, index: int, timeout: float = 60) -> None:
        """SIGKILL runner ``index`` while it is inside a job (it has written a progress file)."""
        spools = [self.inst.spool(t) for t in self.inst.tenants]
        wait_for(
            lambda: any(s.glob("*.progress.json") for s in spools if s.is_dir()), "a job in progress", timeout
        )
        proc = self.current[index]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)

    def __enter__(self) -> Race:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(360)
        for proc in self.current.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def daemons(inst: Installation, count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = []
    for index in range(count):
        own = inst.root / f"daemon-{index}.toml"  # its own ports; everything else as the others'
        inst.write_config(sftp_port=free_port(), metrics_port=free_port(), path=own)
        procs.append(inst.popen("serve", log=f"daemon-{index}", config=own))
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def race(inst: Installation, work: Workload, rng: random.Random) -> int:
    """Upload everything while the runners race, kill one runner mid-job and one daemon half-way;
    return how many runs the runners made."""
    uploaded = dict.fromkeys(work.tenants, 0)
    half = work.files // 2
    assert inst.run("jobs", "list") == 0  # the schema in place before anyone looks at it
    with daemons(inst, 2) as watchers, Race(inst) as runners:
        for k in range(1, work.files + 1):
            for tenant in rng.sample(list(work.tenants), len(work.tenants)):
                inst.upload(tenant, work.name(k), work.content(tenant, k))
                uploaded[tenant] = k
            time.sleep(rng.uniform(0.0, 0.15))
            if k == half:
                runners.kill_one_mid_job(0)
                watchers[1].kill()
            if k % 5 == 0:
                report = check_at_rest(inst, work, uploaded)
                assert not report.problems, f"during the race (file {k}): {report.problems}"
        try:
            wait_for(lambda: _all_done(inst, work), "every job done", timeout=240)
        except AssertionError as exc:
            states = inst.query("SELECT status, finalized, count(*) FROM job GROUP BY status, finalized")
            raise AssertionError(f"{exc}; jobs by (status, finalized): {states}") from None
    assert not runners.errors, runners.errors
    assert runners.killed == 1 and watchers[1].returncode == -signal.SIGKILL
    assert inst.run("run-now") == 0  # a last clean run: nothing left, nothing changes
    return runners.runs


def _all_done(inst: Installation, work: Workload) -> bool:
    rows = inst.query("SELECT count(*) FROM job WHERE status IN ('succeeded') AND finalized")
    wanted = len(work.tenants) * work.files
    return int(rows[0][0]) >= wanted and not any(
        any(inst.tenant_dir(t, "inbox").iterdir()) for t in work.tenants
    )


def _tenants(count: int) -> list[str]:
    suffix = uuid.uuid4().hex[:6]
    return [f"race-{i}-{suffix}" for i in range(count)]


def test_three_runners_and_two_daemons_race_one_killed(tmp_path: Path, backend: str) -> None:
    work = Workload(tenants=_tenants(10), files=20, base=20)
    with installation(tmp_path / "site", backend, work.tenants) as inst:
        runs = race(inst, work, random.Random(3))
        report = check_final(inst, work)
        assert not report.problems, report.problems
    print(f"race on {backend.split(':')[0]}: {len(work.tenants) * work.files} jobs, {runs} runs")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_many_races(tmp_path: Path, backend: str, seed: int) -> None:
    work = Workload(tenants=_tenants(10), files=30, base=200)
    with installation(tmp_path / "site", backend, work.tenants) as inst:
        race(inst, work, random.Random(seed))
        report = check_final(inst, work)
        assert not report.problems, report.problems
