"""What the fault suites share: a workload whose every effect is predictable, an installation driven
through the real CLI and daemon as subprocesses, and the invariants checked after every fault.

The workload: each tenant gets files 1..N in order. File k sets every base learner's title to
``t<k>`` and creates one new learner ``new<k>``, so that
- applying file k exactly once leaves a known number of audit events with its job id (a second
  application, or half of one, shows there);
- the final titles say whether the files applied in order (a reordering leaves ``t<k>`` with k < N);
- each results file has exactly one known outcome per row.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from orgsyncd.store.db import normalize_url
from tests.helpers import LIC

TERMINAL = ("succeeded", "partially_succeeded", "failed", "rejected", "duplicate")
HEADER = ["primary_email_address", "preferred_first_name", "work_title", f"{LIC}_status"]
_LEAKY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


@dataclass(frozen=True)
class Workload:
    tenants: Sequence[str]
    files: int  # per tenant
    base: int  # learners every file updates

    def name(self, k: int) -> str:
        return f"roster-{k:03d}.csv"

    def content(self, tenant: str, k: int) -> bytes:
        lines = [",".join(HEADER)]
        lines += [f"b{i}@{tenant}.example.com,B{i},t{k},active" for i in range(self.base)]
        lines.append(f"new{k}@{tenant}.example.com,New{k},t{k},active")
        return ("\r\n".join(lines) + "\r\n").encode()

    def outcomes(self, k: int) -> list[str]:
        """The outcome of each row of file k, in order, when the files apply in order."""
        return ["created" if k == 1 else "updated"] * self.base + ["created"]

    def audit_count(self, k: int) -> int:
        return self.base + 1  # file 1: base + 1 created; later: base updated + 1 created


@dataclass
class Installation:
    """A data directory, a config file and a database, driven by ``orgsyncd`` subprocesses."""

    root: Path
    db_url: str
    tenants: Sequence[str]
    daemon_extra: dict[str, Any] = field(default_factory=dict)
    authorized_keys: dict[str, Path] = field(default_factory=dict)  # tenant -> key file, for SFTP
    _engine: Engine | None = None
    _snapshot: Any = None

    @property
    def config(self) -> Path:
        return self.root / "orgsyncd.toml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def tenant_dir(self, tenant: str, sub: str) -> Path:
        return self.data / "tenants" / tenant / sub

    def spool(self, tenant: str) -> Path:
        return self.data / "spool" / tenant

    def write_config(
        self, sftp_port: int = 0, metrics_port: int = 0, path: Path | None = None, **daemon: Any
    ) -> Path:
        hour = (time.gmtime().tm_hour + 12) % 24  # the schedule never fires during a test
        settings = {"database_url": self.db_url, **self.daemon_extra, **daemon}
        lines = ["[daemon]", f'data_dir = "{self.data}"', f'hourly_cron = "0 {hour} * * *"']
        lines += [f'daily_cron = "30 {hour} * * *"']
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        lines += ["", "[sftp]", f'listen = "127.0.0.1:{sftp_port}"']
        lines += ["", "[metrics]", f'listen = "127.0.0.1:{metrics_port}"', ""]
        for tenant in self.tenants:
            lines += [
                f'[tenants."{tenant}"]',
                *(
                    [f'authorized_keys = "{self.authorized_keys[tenant]}"']
                    if tenant in self.authorized_keys
                    else []
                ),
                f"licenses = {{ {LIC} = 0 }}",
                "max_deactivation_ratio = 1.0",
                "",
            ]
        self.root.mkdir(parents=True, exist_ok=True)
        target = path or self.config
        target.write_text("\n".join(lines), encoding="utf-8")
        return target

    # -- processes ---------------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORGSYNCD_") and k not in _LEAKY_ENV}
        return {**env, **extra}

    def popen(
        self, *args: str, env: dict[str, str] | None = None, log: str = "cli", config: Path | None = None
    ) -> subprocess.Popen[bytes]:
        out = (self.root / f"{log}.out").open("ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "orgsyncd", "--config", str(config or self.config), *args],
                cwd=self.root,
                env=self.env(**(env or {})),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            out.close()

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> int:
        proc = self.popen(*args, env=env)
        try:
            return proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def kill_after(self, proc: subprocess.Popen[bytes], seconds: float) -> int:
        """SIGKILL ``proc`` after ``seconds`` unless it ended first; its return code."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.wait(seconds)
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait()

    # -- files ---------------------------------------------------------------------------------------

    def upload(self, tenant: str, name: str, data: bytes) -> Path:
        """As the SFTP server does: written under a hidden name, then renamed into inbox/."""
        inbox = self.tenant_dir(tenant, "inbox")
        inbox.mkdir(parents=True, exist_ok=True)
        tmp = inbox / f".{name}.part"
        tmp.write_bytes(data)
        final = inbox / name
        tmp.rename(final)
        return final

    # -- the database ----------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(normalize_url(self.db_url), poolclass=_null_pool())
        return self._engine

    def query(self, sql: str, **params: Any) -> list[Any]:
        if self._snapshot is not None:
            return list(self._snapshot.execute(text(sql), params).all())
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every query inside reads one database snapshot: while instances race, separate reads
        could see a job queued and, a moment later, its committed effects."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
            else:
                conn.exec_driver_sql("BEGIN")
            self._snapshot = conn
            try:
                yield
            finally:
                self._snapshot = None
                conn.exec_driver_sql("ROLLBACK")

    def jobs(self, tenant: str) -> list[Any]:
        return self.query(
            "SELECT j.id, j.file_name, j.status, j.finalized, j.counts, j.attempts, j.error_message "
            "FROM job j JOIN tenant t ON t.id = j.tenant_id WHERE t.name = :t ORDER BY j.id",
            t=tenant,
        )

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- invariants -------------------------------------------------------------------------------------


@dataclass
class Report:
    """What a check found; ``problems`` must stay empty."""

    problems: list[str] = field(default_factory=list)
    applied: dict[str, list[int]] = field(default_factory=dict)  # tenant -> k of applied files

    def fail(self, message: str) -> None:
        self.problems.append(message)


def check_at_rest(inst: Installation, work: Workload, uploaded: dict[str, int]) -> Report:
    """What must hold at any moment, including right after a SIGKILL: nothing half-applied, nothing
    applied out of order or twice, no results file ahead of the database, no input lost.

    While instances race, the files are looked at before the database (a file moves on only after
    its job committed, so a results or archive file seen first is in the snapshot read after) and
    the database is read in one snapshot."""
    report = Report()
    for tenant in work.tenants:
        files = _Listing.take(inst, work, tenant, uploaded.get(tenant, 0))
        with inst.snapshot():
            jobs = inst.jobs(tenant)
            audits = _audit_counts(inst, tenant)
            titles = _titles(inst, tenant)
        by_file = _by_file(jobs, report, tenant)
        applied: list[int] = []
        for k in range(1, uploaded.get(tenant, 0) + 1):
            job = by_file.get(work.name(k))
            count = audits.get(job.id, 0) if job else 0
            done = job is not None and job.status in TERMINAL
            if job is not None and count not in (0, work.audit_count(k)):
                report.fail(f"{tenant} file {k} (job {job.id}) half applied: {count} audit events")
            if job is not None and count and not done:
                report.fail(f"{tenant} file {k} (job {job.id}) has effects but is {job.status}")
            if done:
                applied.append(k)
            files.check_input_kept(tenant, k, job, report)
            files.check_results_not_ahead(tenant, k, job, report)
        if applied != list(range(1, len(applied) + 1)):
            report.fail(f"{tenant}: applied out of order: {applied}")
        report.applied[tenant] = applied
        _check_titles(work, tenant, titles, applied, report)
        _check_no_temporaries_visible(inst, tenant, report)
    return report


def check_final(inst: Installation, work: Workload) -> Report:
    """After recovery: every file applied exactly once, in order, its results matching the database."""
    report = check_at_rest(inst, work, dict.fromkeys(work.tenants, work.files))
    for tenant in work.tenants:
        jobs = inst.jobs(tenant)
        if len(jobs) != work.files:
            report.fail(f"{tenant}: {len(jobs)} jobs for {work.files} files")
        events = _terminal_events(inst, tenant)
        for job in jobs:
            k = int(job.file_name.split("-")[1].split(".")[0])
            if job.status != "succeeded" or not job.finalized:
                report.fail(
                    f"{tenant} job {job.id} ({job.file_name}) is {job.status}, finalized={job.finalized}"
                )
            if events.get(job.id, 0) != 1:
                report.fail(f"{tenant} job {job.id} reached a final status {events.get(job.id, 0)} times")
            _check_results_match(inst, work, tenant, k, job, report)
        _check_inbox_and_spool_empty(inst, tenant, report)
        _check_no_stray_results(inst, tenant, {j.id for j in jobs}, report)
        _check_apply_order(inst, work, tenant, report)
    return report


def _check_apply_order(inst: Installation, work: Workload, tenant: str, report: Report) -> None:
    """The files' changes were written in upload order (audit ids grow with time)."""
    rows = inst.query(
        "SELECT j.file_name, min(a.id) FROM audit_event a JOIN job j ON j.id = a.job_id "
        "JOIN tenant t ON t.id = j.tenant_id WHERE t.name = :t GROUP BY j.file_name",
        t=tenant,
    )
    order = [name for name, _ in sorted(rows, key=lambda row: row[1])]
    if order != [work.name(k) for k in range(1, work.files + 1)]:
        report.fail(f"{tenant}: files applied in the order {order}")


def _by_file(jobs: list[Any], report: Report, tenant: str) -> dict[str, Any]:
    counts = Counter(job.file_name for job in jobs)
    for name, count in counts.items():
        if count > 1:
            report.fail(f"{tenant}: {name} became {count} jobs")
    return {job.file_name: job for job in jobs}


def _audit_counts(inst: Installation, tenant: str) -> dict[int, int]:
    rows = inst.query(
        "SELECT a.job_id, count(*) FROM audit_event a JOIN job j ON j.id = a.job_id "
        "JOIN tenant t ON t.id = j.tenant_id WHERE t.name = :t GROUP BY a.job_id",
        t=tenant,
    )
    return {int(job_id): int(count) for job_id, count in rows}


def _terminal_events(inst: Installation, tenant: str) -> dict[int, int]:
    rows = inst.query(
        "SELECT e.job_id, count(*) FROM job_event e JOIN tenant t ON t.id = e.tenant_id "
        f"WHERE t.name = :t AND e.to_status IN {TERMINAL!r} GROUP BY e.job_id",
        t=tenant,
    )
    return {int(job_id): int(count) for job_id, count in rows}


def _titles(inst: Installation, tenant: str) -> dict[str, str]:
    rows = inst.query(
        "SELECT l.email, l.title FROM learner l JOIN tenant t ON t.id = l.tenant_id WHERE t.name = :t",
        t=tenant,
    )
    return dict(rows)


def _check_titles(
    work: Workload, tenant: str, titles: dict[str, str], applied: list[int], report: Report
) -> None:
    last = applied[-1] if applied else 0
    expected_new = {f"new{k}@{tenant}.example.com" for k in applied}
    if {e for e in titles if e.startswith("new")} != expected_new:
        report.fail(
            f"{tenant}: new learners {sorted(e for e in titles if e.startswith('new'))} for files {applied}"
        )
    base = [titles.get(f"b{i}@{tenant}.example.com") for i in range(work.base)]
    want = f"t{last}" if last else None
    wrong = [t for t in base if t != want]
    if wrong:
        report.fail(f"{tenant}: {len(wrong)} base learners' title is not {want!r} (e.g. {wrong[0]!r})")


@dataclass
class _Listing:
    """Where each upload of a tenant is, looked at in the order files move (inbox, spool, archive,
    then results), and once more backwards for "in two places": a file renamed from spool to
    archive between two forward looks would be seen in both."""

    forward: dict[int, set[str]]
    backward: dict[int, set[str]]
    changed: dict[int, list[str]]
    results: dict[int, list[str]]

    @classmethod
    def take(cls, inst: Installation, work: Workload, tenant: str, uploaded: int) -> _Listing:
        ks = range(1, uploaded + 1)
        changed: dict[int, list[str]] = {k: [] for k in ks}
        forward = {k: _places(inst, work, tenant, k, changed[k]) for k in ks}
        results_dir = inst.tenant_dir(tenant, "results")
        results = {k: [p.name for p in results_dir.glob(f"{work.name(k)[:-4]}.*")] for k in ks}
        backward = {k: _places(inst, work, tenant, k, changed[k], reverse=True) for k in ks}
        return cls(forward, backward, changed, results)

    def check_input_kept(self, tenant: str, k: int, job: Any, report: Report) -> None:
        """The upload is in exactly one place with its bytes: inbox, spool (queued) or archive (done)."""
        for path in self.changed[k]:
            report.fail(f"{tenant} file {k}: {path} differs from the upload")
        if "archive*" in self.backward[k] or {"archive", "spool"} <= self.backward[k]:
            report.fail(f"{tenant} file {k}: archived and spooled, or archived twice: {self.backward[k]}")
        if "archive" in self.forward[k] and (job is None or job.status not in TERMINAL):
            report.fail(f"{tenant} file {k}: archived but its job is {job.status if job else 'missing'}")
        if not self.forward[k]:
            report.fail(f"{tenant} file {k}: the upload is gone (not in inbox, spool or archive)")

    def check_results_not_ahead(self, tenant: str, k: int, job: Any, report: Report) -> None:
        found = self.results[k]
        if found and (job is None or job.status not in TERMINAL):
            report.fail(f"{tenant} file {k}: results {found} before the job finished")


def _places(
    inst: Installation, work: Workload, tenant: str, k: int, changed: list[str], reverse: bool = False
) -> set[str]:
    """Which of inbox, spool and archive hold upload k (``archive*`` when archived more than once)."""
    name = work.name(k)
    data = work.content(tenant, k)
    spool = inst.spool(tenant)

    def inbox() -> list[Path]:
        path = inst.tenant_dir(tenant, "inbox") / name
        return [path] if path.exists() else []

    def spooled() -> list[Path]:
        return list(spool.glob(f"*__{name}")) if spool.is_dir() else []

    def archived() -> list[Path]:
        return list(inst.tenant_dir(tenant, "archive").glob(f"{name[:-4]}.*.csv"))

    looks = [("inbox", inbox), ("spool", spooled), ("archive", archived)]
    places: set[str] = set()
    for place, look in reversed(looks) if reverse else looks:
        paths = look()
        if paths:
            places.add(place)
        if place == "archive" and len(paths) > 1:
            places.add("archive*")
        for path in paths if place != "inbox" else []:
            with contextlib.suppress(FileNotFoundError):  # moved on since it was listed
                if path.read_bytes() != data:
                    changed.append(str(path))
    return places


def _check_no_temporaries_visible(inst: Installation, tenant: str, report: Report) -> None:
    for sub in ("results", "archive", "exports"):
        folder = inst.tenant_dir(tenant, sub)
        if folder.is_dir():
            hidden = [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
            if hidden:
                report.fail(f"{tenant}: temporary files visible in {sub}/: {hidden}")


def _check_results_match(
    inst: Installation, work: Workload, tenant: str, k: int, job: Any, report: Report
) -> None:
    stem = work.name(k)[:-4]
    results = inst.tenant_dir(tenant, "results")
    csv_path = results / f"{stem}.{job.id}.results.csv"
    json_path = results / f"{stem}.{job.id}.summary.json"
    if not (csv_path.exists() and json_path.exists()):
        report.fail(f"{tenant} job {job.id}: results missing ({csv_path.exists()}, {json_path.exists()})")
        return
    with csv_path.open(encoding="utf-8", newline="") as fh:
        lines = list(csv.DictReader(fh))
    outcomes = [line["outcome"] for line in lines if line["row"] != "0"]
    if outcomes != work.outcomes(k):
        report.fail(
            f"{tenant} job {job.id}: results outcomes {Counter(outcomes)} != {Counter(work.outcomes(k))}"
        )
    summary = json.loads(json_path.read_text(encoding="utf-8"))
    db_counts = json.loads(job.counts) if job.counts else None
    if summary.get("counts") != db_counts or summary.get("job_id") != job.id:
        report.fail(f"{tenant} job {job.id}: summary {summary.get('counts')} != database {db_counts}")
    if db_counts and {o: n for o, n in db_counts.items() if n and o != "warning"} != dict(Counter(outcomes)):
        report.fail(
            f"{tenant} job {job.id}: database counts {db_counts} != results lines {Counter(outcomes)}"
        )


def _check_inbox_and_spool_empty(inst: Installation, tenant: str, report: Report) -> None:
    inbox = [p.name for p in inst.tenant_dir(tenant, "inbox").iterdir()]
    spool = [p.name for p in inst.spool(tenant).iterdir()] if inst.spool(tenant).is_dir() else []
    if inbox or spool:
        report.fail(f"{tenant}: left behind in inbox {inbox}, spool {spool}")


def _check_no_stray_results(inst: Installation, tenant: str, job_ids: set[int], report: Report) -> None:
    for path in inst.tenant_dir(tenant, "results").iterdir():
        job_id = int(path.name.split(".")[1])
        if job_id not in job_ids:
            report.fail(f"{tenant}: results file {path.name} of no job")


def wait_for(condition: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def installation(root: Path, db_url: str, tenants: Sequence[str], **daemon: Any) -> Iterator[Installation]:
    inst = Installation(root=root, db_url=db_url, tenants=tenants, daemon_extra=daemon)
    inst.write_config()
    try:
        yield inst
    finally:
        inst.close()
