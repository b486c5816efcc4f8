"""The data directory full or read-only (a small tmpfs mounted over it, cleaned up after): the job
fails clearly and stays queued, nothing half-written is visible, the database is not left ahead of
the files, and once there is room again the next run applies the job, exactly once.

Needs root (to mount); skipped with the reason otherwise. On SQLite the database sits in the data
directory, as by default, so it is full or read-only too; on PostgreSQL only the files are.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from orgsyncd import faults
from orgsyncd.jobrunner import storage_trouble
from orgsyncd.paths import archive_path, result_paths
from tests.conftest import PG_SKIP
from tests.helpers import LIC, Env, read_csv

HEADER = ["primary_email_address", "preferred_first_name", "work_title", f"{LIC}_status"]
DISK = "24m"


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "data"
    data.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", f"size={DISK},mode=0755", "tmpfs", str(data))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc}")
    try:
        yield data
    finally:
        subprocess.run(["umount", str(data)], check=False, capture_output=True)
        if os.path.ismount(data):
            subprocess.run(["umount", "-l", str(data)], check=False, capture_output=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def disk_env(
    request: pytest.FixtureRequest, tmp_path: Path, small_disk: Path, pg_url: str | None
) -> Iterator[Env]:
    if request.param == "sqlite":
        url = f"sqlite:///{small_disk / 'orgsyncd.db'}"
    elif pg_url is None:
        pytest.skip(PG_SKIP)
    else:
        url = pg_url
    env = Env(root=tmp_path, db_url=url, tenant=f"disk-{uuid.uuid4().hex[:8]}")
    yield env
    env.close()


def _file(k: int, rows: int = 2000) -> bytes:
    lines = [",".join(HEADER)] + [f"p{i}@example.com,P{i},t{k},active" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def _queue(env: Env, name: str, data: bytes) -> int:
    (env.dirs.inbox / name).write_bytes(data)
    queued = env.service.scan_inboxes(env.tenant)
    assert len(queued) == 1
    return queued[0]


@contextlib.contextmanager
def _full(disk: Path) -> Iterator[None]:
    """Fill the file system to the last byte, then give the room back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    try:
        yield
    finally:
        filler.unlink()


@contextlib.contextmanager
def _read_only(disk: Path) -> Iterator[None]:
    _mount("-o", "remount,ro", str(disk))
    try:
        yield
    finally:
        _mount("-o", "remount,rw", str(disk))


def _titles(env: Env) -> set[str | None]:
    rows = env.service.learners.page(env.service.jobs.tenant_id(env.tenant), limit=10_000)
    return {learner.title for learner in rows}


def _run_fails_cleanly(env: Env) -> None:
    """A run on a full or read-only disk applies nothing; if it cannot even read its database (SQLite
    on that disk), it says so in one error naming the disk, and changes nothing either."""
    try:
        done = env.service.run_due("hourly", env.tenant)
    except OperationalError as exc:
        assert env.db_url.startswith("sqlite") and storage_trouble(exc), exc
    else:
        assert done == []


def _assert_nothing_of(env: Env, job_id: int, name: str) -> None:
    """The job is not applied, and nothing of it is visible to the tenant."""
    job = env.service.jobs.get(job_id)
    assert job.status == "queued", (job.status, job.error_message)
    assert all(not p.exists() for p in result_paths(env.dirs, name, job_id))
    assert not archive_path(env.dirs, name, job_id).exists()
    visible = [p.name for sub in ("results", "archive") for p in (env.dirs.root / sub).iterdir()]
    assert not [n for n in visible if n.endswith(".tmp") or n.startswith(".")]
    assert Path(job.spool_path).read_bytes()  # the input is still queued, whole


def _assert_applied_once(env: Env, job_id: int, name: str, k: int) -> None:
    job = env.service.jobs.get(job_id)
    assert job.status == "succeeded" and job.finalized
    csv_path, json_path = result_paths(env.dirs, name, job_id)
    lines = read_csv(csv_path)
    assert len(lines) == 2000 and {line["outcome"] for line in lines} == {"updated"}
    assert json.loads(json_path.read_text())["counts"] == job.counts
    assert _titles(env) == {f"t{k}"}
    audits = env.service.learners.audit(env.learner("p0@example.com").id)
    assert [a.job_id for a in audits].count(job_id) == 1


@pytest.mark.parametrize("fault", ["full", "read_only"])
def test_a_full_or_read_only_disk_fails_the_job_clearly_and_the_next_run_applies_it(
    disk_env: Env, small_disk: Path, fault: str
) -> None:
    env = disk_env
    assert env.run(_file(1).decode(), name="day1.csv").status == "succeeded"
    job_id = _queue(env, "day2.csv", _file(2))
    trouble = _full(small_disk) if fault == "full" else _read_only(small_disk)
    with trouble:
        for _ in range(4):  # more runs than a crashing job gets attempts: a disk is not the file's fault
            _run_fails_cleanly(env)
    job = env.service.jobs.get(job_id)
    if env.db_url.startswith("postgresql"):  # (SQLite's database is on that disk: no room to say it)
        word = "No space left on device" if fault == "full" else "Read-only file system"
        assert job.error_message is not None and word in job.error_message, job.error_message
        assert [e.code for e in env.service.jobs.events(job_id)].count("storage_unavailable") == 4
    assert job.attempts == 0
    _assert_nothing_of(env, job_id, "day2.csv")
    assert _titles(env) == {"t1"}  # the database was not touched either

    done = env.service.run_due("hourly", env.tenant)
    assert [(r.job_id, r.status) for r in done] == [(job_id, "succeeded")]
    _assert_applied_once(env, job_id, "day2.csv", 2)


def test_read_only_after_the_commit_is_finished_by_the_next_run(disk_env: Env, small_disk: Path) -> None:
    """The worst moment: the job committed, then its results could not be moved into place. The
    database says so (not finalized), the tenant sees nothing half-done, and the next run (no
    restart needed) puts the results and the archive in place."""
    env = disk_env
    assert env.run(_file(1).decode(), name="day1.csv").status == "succeeded"
    job_id = _queue(env, "day2.csv", _file(2))
    remounted: list[bool] = []

    def remount() -> None:
        try:
            _mount("-o", "remount,ro", str(small_disk))
        except subprocess.CalledProcessError:
            # SQLite keeps its database open for writing on this disk, so the kernel refuses the
            # remount: the next write fails as a read-only disk would make it fail.
            remounted.append(False)
            raise OSError(errno.EROFS, "Read-only file system (simulated)", str(small_disk)) from None
        remounted.append(True)

    try:
        with faults.hook("after_commit", remount):
            _run_fails_cleanly(env)
        assert remounted
        job = env.service.jobs.get(job_id) if env.db_url.startswith("postgresql") else None
        if job is not None:  # (on SQLite the database is on the read-only disk: nothing to read yet)
            assert job.status == "succeeded" and not job.finalized
        assert all(not p.exists() for p in result_paths(env.dirs, "day2.csv", job_id))
    finally:
        if any(remounted):
            _mount("-o", "remount,rw", str(small_disk))
    assert env.service.run_due("hourly", env.tenant) == []  # nothing left to apply: only to finish
    _assert_applied_once(env, job_id, "day2.csv", 2)


def test_the_tmpfs_really_fills(small_disk: Path) -> None:
    """The fixture's premise: writing past the size fails with ENOSPC (else the tests above prove
    nothing)."""
    with _full(small_disk), pytest.raises(OSError) as info:
        (small_disk / "more").write_bytes(b"x" * 4096)
    assert info.value.errno == errno.ENOSPC
