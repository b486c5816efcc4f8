"""Use cases the adapters (CLI, SFTP, watcher, scheduler) call. No adapter code lives here."""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar
from zoneinfo import ZoneInfo

import structlog

from orgsyncd import faults
from orgsyncd.config import Settings
from orgsyncd.core.header import EMAIL, FIRST, LAST, TITLE, UID
from orgsyncd.core.results import Summary, escape
from orgsyncd.dbhealth import DatabaseHealth, DatabaseUnavailable, database_unavailable
from orgsyncd.decisions import Decisions, parse_decision_name
from orgsyncd.errors import OrgsyncError, UsageError
from orgsyncd.heartbeat import Heartbeat
from orgsyncd.jobprogress import progress_path, read_progress, status_line
from orgsyncd.jobrunner import JobRunner, Progress
from orgsyncd.notify.dispatcher import Notifier
from orgsyncd.paths import (
    TenantDirs,
    is_temporary_name,
    mode_from_name,
    report_path,
    result_paths,
    tenant_dirs,
)
from orgsyncd.reverts import RevertResult, Reverts
from orgsyncd.store.claims import claim_slot, reclaim_abandoned, renew_slot, slot_done
from orgsyncd.store.db import make_engine, migrate
from orgsyncd.store.jobs import (
    HELD,
    QUEUED,
    RUNNING,
    JobRecord,
    JobStore,
    instance_actor,
    running_text,
    utcnow,
)
from orgsyncd.store.learners import LearnerStore

log = structlog.get_logger("orgsyncd.service")
RunKind = Literal["hourly", "daily", "now"]
_SPOOL_SEP = "__"
_HASH_CHUNK = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class JobResult:
    job_id: int
    tenant: str
    file: str
    status: str


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class Service:
    """Everything orgsyncd does, over one database. Thread-safe: each call uses its own
    connection and transaction."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance = settings.daemon.instance_name or default_instance_name()
        self.actor = instance_actor(self.instance)
        self.engine = make_engine(settings.daemon.db_url)
        self.jobs = JobStore(self.engine)
        self.learners = LearnerStore(self.engine)
        self.runner = JobRunner(settings, self.engine, self.jobs, self.actor, self.instance)
        self.notifier = Notifier(settings, self.engine, self.jobs, self.instance)
        self.reverts = Reverts(self.engine, self.jobs, self.runner)
        self.decisions = Decisions(self.engine, self.jobs, self.runner)
        self.on_job_finished: Callable[[str, str, dict[str, int], float], None] | None = None
        self.stop_requested = threading.Event()
        # Set by the daemon: queuing then waits for an unreachable database (retrying with
        # backoff) instead of failing; commands run once and say what failed.
        self.db_health: DatabaseHealth | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def create_dirs(self) -> None:
        """Every tenant's directories (what SFTP serves; no database needed)."""
        for name in self.settings.tenants:
            self.dirs(name).create()

    def migrate(self) -> None:
        """Schema up to date, tenant directories present, interrupted work completed."""
        migrate(self.engine)
        self.create_dirs()
        for name in self.settings.tenants:
            self.jobs.tenant_id(name)
        self.recover()

    def reload(self, settings: Settings) -> None:
        self.settings = settings
        self.runner.settings = settings
        self.notifier.reload(settings)
        for name in settings.tenants:
            self.dirs(name).create()
            self.jobs.tenant_id(name)

    def recover(self) -> None:
        """Finish what a crash interrupted: result files and archive moves of committed jobs,
        jobs whose instance died while running them (back to the queue), and spooled files that
        never got their job row."""
        self._finish_interrupted("job_finalized_after_restart")
        for name in self.settings.tenants:
            self._reclaim(name)
            self._register_orphans(name)

    def _reclaim(self, tenant: str) -> None:
        """The tenant's running job goes back to the queue if its instance is gone or its lease
        ran out (it hung): see ``store/claims.py``."""
        reclaim_abandoned(self.engine, self.jobs.tenant_id(tenant), actor=self.actor)

    def _finish_interrupted(self, event: str) -> None:
        """Committed jobs whose result files or archive move did not happen (a crash, a full or
        read-only disk right after the commit): done now, before anything new runs."""
        for job in self.jobs.unfinalized():
            if job.tenant not in self.settings.tenants:
                continue
            try:
                self.runner.finalize(job)
            except OSError as exc:  # still full or read-only: the next run tries again
                log.error("job_finalize_failed", job_id=job.id, tenant=job.tenant, error=str(exc))
                continue
            log.info(event, job_id=job.id, tenant=job.tenant)

    def job_progress(self, job: JobRecord) -> dict[str, Any] | None:
        """How far a running job is (written by whichever process runs it), or None."""
        return read_progress(progress_path(self.dirs(job.tenant).spool, job.id))

    def status_text(self) -> str:
        """The daemon's one-line status: the jobs it runs now and how far, then the queue."""
        running = [status_line(p.snapshot()) for p in list(self.runner.running.values())]
        queued = f"{self.queue_depth()} job(s) queued"
        return "; ".join([*running, queued])

    def send_notifications(self) -> int:
        """Send what the outbox has due, once, now: a command run without the daemon should not
        leave its events waiting for one. A failure is retried later (by the daemon, if any)."""
        try:
            return self.notifier.round()
        except Exception:
            log.warning("notify_round_failed", exc_info=True)
            return 0

    def close(self) -> None:
        self.engine.dispose()

    def dirs(self, tenant: str) -> TenantDirs:
        return tenant_dirs(self.settings.daemon.data_dir, tenant)

    # -- queueing -----------------------------------------------------------------------------

    def patiently(self, fn: Callable[[], T]) -> T:
        """``fn()``; in the daemon, retried with backoff while the database is unreachable (until
        it answers or the daemon stops)."""
        if self.db_health is None:
            return fn()
        return self.db_health.call(fn, self.stop_requested)

    def enqueue_file(
        self, tenant: str, path: Path, actor: str | None = None, *, patient: bool = True
    ) -> int | None:
        """Queue one complete file from a tenant's inbox. Idempotent: None when it is already
        queued, gone, a temporary name or not a regular file. ``patient=False``: do not wait for
        an unreachable database (the SFTP server's call; the file is queued by the watcher, or
        by the orphan sweep if it was linked into the spool already).

        The spool gets a hard link named after the file's inode and mtime, so exactly one of any
        number of watchers, rescans or instances wins (the link fails for the others), while the
        upload stays visible in inbox/ until its job is processed: SFTP clients that check the
        file right after writing it (paramiko's put) find it, and operators see what is pending.
        """
        if tenant not in self.settings.tenants or is_temporary_name(path.name):
            return None
        wait = self.patiently if patient else _at_once
        if parse_decision_name(path.name):  # approve-<job> / reject-<job>: a decision, not a roster
            self.decisions.take_file(tenant, path, actor, wait)
            return None
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
            return None  # not a plain file, or already linked into the spool
        spool = self.dirs(tenant).spool / f"{info.st_ino:x}-{info.st_mtime_ns:x}{_SPOOL_SEP}{path.name}"
        spool.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, spool)
        except (FileExistsError, FileNotFoundError):
            return None  # another watcher or instance took it first, or it is gone
        faults.checkpoint("after_spool_link")  # a crash here leaves an orphan that recover() queues
        return wait(lambda: self._register(tenant, spool, actor))

    def _register(self, tenant: str, spool: Path, actor: str | None = None) -> int | None:
        try:  # the spool entry is a hard link of the upload: its mtime is when the upload completed
            arrived = datetime.fromtimestamp(spool.stat().st_mtime, UTC)
        except FileNotFoundError:
            return None  # processed and archived meanwhile by whoever registered it
        sha256, size = sha256_file(spool)
        cfg = self.settings.tenant(tenant)
        deferred = cfg.cadence == "daily" or size > self.settings.daemon.daily_threshold_bytes
        name = spool.name.split(_SPOOL_SEP, 1)[1]
        job_id = self.jobs.add(
            tenant=tenant,
            file_name=name,
            spool_path=str(spool),
            sha256=sha256,
            size=size,
            deferred=deferred,
            actor=actor or self.actor,
            received_at=arrived,
        )
        if job_id is not None:
            log.info("job_queued", tenant=tenant, job_id=job_id, file=name, bytes=size, deferred=deferred)
        return job_id

    def register_orphans(self, min_age_s: float = 0.0) -> None:
        """Register spooled inputs that have no job, older than ``min_age_s`` (the daemon's
        rescans: a queuer that linked a file and then lost the database left one)."""
        before = time.time() - min_age_s
        for name in sorted(self.settings.tenants):
            self.patiently(functools.partial(self._register_orphans, name, before))

    def _register_orphans(self, tenant: str, before: float | None = None) -> bool:
        """Register spooled inputs that have no job (their queuer crashed, or is still hashing);
        with ``before``, only those that arrived before that time. True when any was added."""
        spool_dir = self.dirs(tenant).spool
        if not spool_dir.is_dir():
            return False
        added = False
        for entry in spool_dir.iterdir():
            is_input = _SPOOL_SEP in entry.name and not entry.name.endswith(".tmp") and entry.is_file()
            if is_input and parse_decision_name(entry.name.split(_SPOOL_SEP, 1)[1]):
                if before is None:  # at start-up only: now, its taker may be deciding it still
                    self.decisions.recover_spooled(tenant, entry)
                continue
            if not is_input or (before is not None and _mtime(entry) >= before):
                continue
            if not self.jobs.has_spool_path(str(entry)) and self._register(tenant, entry) is not None:
                added = True
        return added

    def _queue_earlier_arrivals(self, tenant: str, head: JobRecord) -> bool:
        """Before a tenant's head job runs, queue whatever arrived before it and is not a job yet
        (another watcher or instance may be half-way through queuing it): True when that changed
        the queue, so the head is read again."""
        received = head.received_at
        before = (received if received.tzinfo else received.replace(tzinfo=UTC)).timestamp()
        added = False
        inbox = self.dirs(tenant).inbox
        for entry in sorted(inbox.iterdir(), key=_mtime) if inbox.is_dir() else []:
            if _mtime(entry) < before and self.enqueue_file(tenant, entry) is not None:
                added = True
        # then the spool: what another queuer linked (even just now, after the inbox look) but has
        # not registered yet
        return self._register_orphans(tenant, before) or added

    def scan_inboxes(self, tenant: str | None = None, min_age_s: float = 0.0) -> list[int]:
        """Queue every complete file found in inboxes (start-up scan and periodic rescan); files
        modified less than ``min_age_s`` ago are left for the next scan."""
        queued: list[int] = []
        cutoff = time.time() - min_age_s
        for name in [tenant] if tenant else sorted(self.settings.tenants):
            inbox = self.dirs(name).inbox
            if not inbox.is_dir():
                continue
            for entry in sorted(inbox.iterdir(), key=_mtime):
                if min_age_s and _mtime(entry) > cutoff:
                    continue
                job_id = self.enqueue_file(name, entry)
                if job_id is not None:
                    queued.append(job_id)
        return queued

    def queue_depth(self) -> int:
        return self.jobs.queue_depth(list(self.settings.tenants))

    # -- processing ---------------------------------------------------------------------------

    def run_due(self, kind: RunKind = "now", tenant: str | None = None) -> list[JobResult]:
        """Process queued jobs, each tenant's in order. The hourly run leaves deferred jobs (big
        files, daily-cadence tenants) to the daily run; 'daily' and 'now' take everything."""
        if tenant is not None:
            self.settings.tenant(tenant)
        self._finish_interrupted("job_finalized_late")
        done: list[JobResult] = []
        for name in [tenant] if tenant else sorted(self.settings.tenants):
            done.extend(self._drain(name, include_deferred=kind != "hourly"))
        return done

    def _drain(self, tenant: str, include_deferred: bool) -> Iterator[JobResult]:
        while not self.stop_requested.is_set():
            self._reclaim(tenant)
            job = self.jobs.next_for_tenant(tenant, include_deferred)
            if job is None:  # empty, blocked, or its running job is another instance's
                return
            if self._queue_earlier_arrivals(tenant, job):
                continue
            summary = self._run_guarded(job)
            if summary is None:
                return
            yield JobResult(job.id, tenant, job.file_name, summary.status)

    def _run_guarded(
        self, job: JobRecord, progress: Progress | None = None, mode: str | None = None
    ) -> Summary | None:
        """Run a job; an unexpected failure rolls it back and leaves it queued for the next run,
        until it has failed MAX_ATTEMPTS times (the runner records that)."""
        clock = time.monotonic()
        try:
            summary = self.runner.run(job, mode=mode, progress=progress)
        except OrgsyncError:
            raise
        except Exception as exc:
            if database_unavailable(exc) is not None:
                raise self._interrupted(job, exc) from exc
            return None  # the runner put it back in the queue, or failed it after its last attempt
        self.notifier.wake()  # the outcome may have written an event
        if summary is not None and self.on_job_finished is not None:
            self.on_job_finished(job.tenant, summary.status, summary.counts, time.monotonic() - clock)
        return summary

    def _interrupted(self, job: JobRecord, exc: Exception) -> DatabaseUnavailable:
        """The job lost the database: not the file's fault, and no attempt is counted (nothing can
        be recorded anyway). The server rolled its transaction back (or, had it committed just
        before, the next run finalizes it); what is on disk is left for the next attempt to
        overwrite. The run must stop here and raise this: in the daemon it is retried once the
        database answers (``Daemon._patiently``), and runs this job again."""
        reason = database_unavailable(exc) or "unreachable"
        log.info("job_interrupted", tenant=job.tenant, job_id=job.id, reason=reason)
        return DatabaseUnavailable(reason)

    def import_file(
        self,
        tenant: str,
        source: Path,
        *,
        mode: str | None = None,
        dry_run: bool = False,
        progress: Progress | None = None,
        actor: str | None = None,
    ) -> Summary:
        """`orgsyncd import`: one file, now, in the foreground."""
        cfg = self.settings.tenant(tenant)
        if not source.is_file():
            raise UsageError(f"{source} is not a readable file")
        if dry_run:
            chosen = mode or mode_from_name(source.name) or cfg.sync_mode
            return self.runner.dry_run(tenant, source, mode=chosen, progress=progress)
        self._refuse_if_held(tenant)
        spool = self.dirs(tenant).spool / f"{uuid.uuid4().hex[:16]}{_SPOOL_SEP}{source.name}"
        spool.parent.mkdir(parents=True, exist_ok=True)
        _copy(source, spool)
        job_id = self._register(tenant, spool, actor)
        assert job_id is not None
        summary = self.runner.run(self.jobs.get(job_id), mode=mode, progress=progress, in_order=False)
        if summary is None:
            raise OrgsyncError(self.not_run_reason(job_id))
        return summary

    def not_run_reason(self, job_id: int) -> str:
        """Why job *job_id* was not run just now, naming the instance that has it or its tenant."""
        job = self.jobs.get(job_id)
        if job.status == RUNNING:
            return f"job {job_id} is {running_text(job)}; see 'orgsyncd jobs show {job_id}'"
        if job.status != "queued":
            return f"job {job_id} was processed by {job.instance or 'another instance'}; see 'orgsyncd jobs show {job_id}'"
        busy = self.jobs.running_of(job.tenant)
        if busy is not None:
            return (
                f"job {job_id} stays queued: job {busy.id} of tenant {job.tenant!r} is {running_text(busy)}; "
                f"it runs after that one (at the next run, or 'orgsyncd run-now --tenant {job.tenant}')"
            )
        return f"job {job_id} stays queued; see 'orgsyncd jobs show {job_id}'"

    def job_files(self, job: JobRecord) -> dict[str, str | None]:
        """Where the job's files are on this host: its input (queued: the spool; processed: the
        archive), results, summary and report; None for a file that is not there (not written yet, pruned)."""
        dirs = self.dirs(job.tenant)
        results, summary = result_paths(dirs, job.file_name, job.id)
        report = report_path(dirs, job.file_name, job.id)
        paths = {
            "input": self.runner.input_path(job),
            "results": results,
            "summary": summary,
            "report": report,
        }
        return {name: str(path) if path.exists() else None for name, path in paths.items()}

    def _refuse_if_held(self, tenant: str) -> None:
        held = self.jobs.recent(tenant=tenant, status=HELD, limit=1)
        if held:
            raise UsageError(
                f"job {held[0].id} of tenant {tenant!r} is held and blocks later files; "
                f"approve it ('orgsyncd jobs approve {held[0].id}') or reject it first"
            )

    # -- operator actions ---------------------------------------------------------------------

    def approve(self, job_id: int, actor: str) -> JobRecord:
        """A held job goes back to the queue, ahead of the tenant's other jobs, and skips the
        guards when it runs. *actor* is who decided (``cli:<user>``, ``sftp:...``); the decision
        is recorded (see ``decisions.py``)."""
        job = self.decisions.decide(job_id, "approve", actor)
        log.info("job_approved", job_id=job_id, tenant=job.tenant, actor=actor)
        return job

    def reject(self, job_id: int, actor: str) -> JobRecord:
        job = self.decisions.decide(job_id, "reject", actor)
        log.info("job_rejected", job_id=job_id, tenant=job.tenant, actor=actor)
        return job

    def revert(
        self,
        job_id: int,
        actor: str,
        *,
        force: bool = False,
        dry_run: bool = False,
        out: TextIO | None = None,
    ) -> RevertResult:
        """Undo applied job *job_id* as a new job of kind ``revert`` (see ``reverts.py``)."""
        return self.reverts.revert(job_id, actor=actor, force=force, dry_run=dry_run, out=out)

    def retry(self, job_id: int, actor: str) -> JobRecord:
        """A failed job runs again (e.g. after the tenant's config was fixed)."""
        current = self.jobs.get(job_id)
        source = self.runner.input_path(current)
        if not source.exists():
            raise UsageError(f"job {job_id}'s input file is gone (pruned?); upload the file again")
        if source != Path(current.spool_path):
            os.replace(source, current.spool_path)
        job = self.jobs.transition(
            job_id,
            ["failed"],
            "retried",
            QUEUED,
            actor=actor,
            code="retried",
            finalized=False,
            attempts=0,
            error_code=None,
            error_message=None,
        )
        log.info("job_retried", job_id=job_id, tenant=job.tenant, actor=actor)
        return job

    # -- exports and maintenance --------------------------------------------------------------

    def export(self, tenant: str, out: TextIO, progress: Progress | None = None) -> int:
        """Write the tenant's roster in the import format; returns the number of learners."""
        cfg = self.settings.tenant(tenant)
        tenant_id = self.jobs.tenant_id(tenant)
        groups = self.learners.group_names(tenant_id)
        licences = cfg.license_types
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(
            [
                UID,
                FIRST,
                LAST,
                EMAIL,
                TITLE,
                *(f"{lic}_status" for lic in licences),
                *(escape(f"group/{n}") for _, n in groups),
            ]
        )
        count = 0
        for uid, first, last, email, title, held, *flags in self.learners.export_rows(
            tenant_id, [g for g, _ in groups]
        ):
            status = ["active" if held == lic else "inactive" for lic in licences]
            writer.writerow(
                [_cell(uid), _cell(first), _cell(last), _cell(email), _cell(title), *status, *flags]
            )
            count += 1
            if progress is not None and not count & 0x3FFF:
                progress(count)
        return count

    def export_to_dir(self, tenant: str, day: date | None = None) -> Path:
        day = day or datetime.now(UTC).date()
        target = self.dirs(tenant).exports / f"roster-{day.isoformat()}.csv"
        tmp = self.dirs(tenant).spool / f".export-{uuid.uuid4().hex[:8]}.tmp"
        with tmp.open("w", encoding="utf-8", newline="") as out:
            count = self.export(tenant, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        log.info("export_written", tenant=tenant, file=target.name, learners=count)
        return target

    def daily_maintenance(self, day: date | None = None) -> list[str]:
        """Every tenant's export to exports/, and files past retention_days pruned: once per day
        across all instances sharing the database (a slot claim per piece of work, keyed by the
        local date, so the DST night's second 02:00 does not do it again either). Returns what
        this instance did (``kind/tenant``); the rest was done, or is being done, by another."""
        day = day or datetime.now(ZoneInfo(self.settings.daemon.timezone)).date()
        slot = day.isoformat()
        done: list[str] = []
        for name in sorted(self.settings.tenants):
            tenant_id = self.jobs.tenant_id(name)
            work = functools.partial(self._daily_tenant, name, day)
            if self._once_per_slot("daily", tenant_id, slot, name, work):
                done.append(f"daily/{name}")
        if self._once_per_slot("outbox_prune", 0, slot, "", self._prune_outbox):
            done.append("outbox_prune")
        return done

    def _daily_tenant(self, name: str, day: date) -> None:
        try:
            self.export_to_dir(name, day)
        except Exception:
            log.exception("export_failed", tenant=name)
        self.prune(name)

    def _prune_outbox(self) -> None:
        self.notifier.outbox.prune(utcnow() - timedelta(days=self.settings.daemon.retention_days))

    def _once_per_slot(
        self, kind: str, tenant_id: int, slot: str, tenant: str, work: Callable[[], None]
    ) -> bool:
        """Do *work* if this instance claims the slot first (or takes over an abandoned claim);
        False when another instance has it or did it."""
        lease_s = self.settings.daemon.lease_s
        hold = claim_slot(self.engine, kind, tenant_id, slot, instance=self.instance, lease_s=lease_s)
        if hold is None:
            log.info("slot_work_elsewhere", kind=kind, slot=slot, tenant=tenant or None)
            return False
        beat = Heartbeat(self.engine, lease_s, lambda c: renew_slot(c, hold, lease_s), kind=kind, slot=slot)
        with beat:
            work()
        if not slot_done(self.engine, hold):
            log.warning("slot_claim_lost", kind=kind, slot=slot, tenant=tenant or None)
        return True

    def prune(self, tenant: str, now: float | None = None) -> int:
        cutoff = (now or time.time()) - self.settings.daemon.retention_days * 86400
        removed = 0
        dirs = self.dirs(tenant)
        for folder in (dirs.results, dirs.archive, dirs.exports):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.info("pruned", tenant=tenant, files=removed)
        return removed


def default_instance_name() -> str:
    """``[daemon] instance_name`` when unset: the host name and the process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _at_once(fn: Callable[[], T]) -> T:
    return fn()


def _cell(value: str | None) -> str:
    return escape(value) if value else ""


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _copy(source: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    with source.open("rb") as src, tmp.open("wb") as dst:
        while chunk := src.read(_HASH_CHUNK):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    info = source.stat()  # the copy keeps the file's mtime: its HRIS timestamp (hold_stale_files)
    os.utime(tmp, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.replace(tmp, target)
