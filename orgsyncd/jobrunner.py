"""Runs one import job end to end: input file -> staged rows -> plan -> apply -> result files.

Crash safety: result files are written to temporary names in the tenant's spool before the
transaction that applies the job commits; only after the commit are they renamed into
``results/`` and the input moved to ``archive/`` (``finalize``). A crash before the commit leaves
the database as it was and the job queued; a crash after it is completed by ``finalize`` at the
next start. So a job is applied once and its result files appear once.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import time
import zlib
from collections.abc import Callable, Generator, Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import starmap
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from orgsyncd import faults
from orgsyncd.config import Settings, TenantConfig
from orgsyncd.core import guards
from orgsyncd.core.changes import PLAN_HEADER, ChangeWriter
from orgsyncd.core.header import HeaderRules, Issue, Layout, analyse_header
from orgsyncd.core.reader import Record, is_encrypted, line_ending
from orgsyncd.core.report import HeldPlan, IssueGroup, ReportData, SeatUsage, render
from orgsyncd.core.results import ResultsWriter, Summary, empty_counts, summary_status, write_json
from orgsyncd.core.rows import RowRules, RowValidator, roster_rows
from orgsyncd.core.workbook import is_workbook_name
from orgsyncd.dbhealth import database_unavailable, exception_chain
from orgsyncd.errors import FileRejected, LeaseLost, OrgsyncError
from orgsyncd.heartbeat import Heartbeat
from orgsyncd.jobprogress import JobProgress, progress_path
from orgsyncd.paths import (
    TenantDirs,
    archive_path,
    atomic_replace,
    is_roster_name,
    mode_from_name,
    plan_path,
    report_path,
    result_paths,
    tenant_dirs,
)
from orgsyncd.sources import RosterSource, TenantFormat, open_source, table_key, tenant_format
from orgsyncd.store.claims import Claim, claim_job, release, renew
from orgsyncd.store.db import import_cache, write_transaction
from orgsyncd.store.history import last_file_time, last_full_columns
from orgsyncd.store.importer import (
    Applier,
    Plan,
    Planner,
    PlanRequest,
    ResultLine,
    create_staging,
    drop_staging,
    load_staging,
    result_lines,
    spooled,
)
from orgsyncd.store.jobs import (
    QUEUED,
    RUNNING,
    TERMINAL,
    JobRecord,
    JobStore,
    StateConflict,
    change_state,
    utcnow,
)
from orgsyncd.store.plan_file import plan_changes
from orgsyncd.store.reporting import plan_issues, seats_in_use
from orgsyncd.store.revert import last_audit_id

log = structlog.get_logger("orgsyncd.import")
Progress = Callable[[int], None]
_PROGRESS_EVERY = 16_384
MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Staged:
    layout: Layout
    rows: int
    source: RosterSource


@dataclass(frozen=True, slots=True, kw_only=True)
class _Run:
    """One attempt at one job: what every step of it needs."""

    job: JobRecord
    tenant: TenantConfig
    dirs: TenantDirs
    mode: str
    started: datetime
    source: Path
    tracker: JobProgress
    file_time: datetime | None = None  # the HRIS timestamp (hold_stale_files)
    claim: Claim | None = None  # this attempt's hold on the job (None: an operator's outcome)

    @property
    def token(self) -> str | None:
        """Names this attempt's temporary files: a taken-over attempt never writes into ours."""
        return self.claim.token if self.claim is not None else self.job.claim_token


def _request(
    staged: Staged, tenant: TenantConfig, tenant_id: int, job_id: int, mode: str, approved: bool
) -> PlanRequest:
    """One request for both planning and applying, so they agree on groups and the time."""
    return PlanRequest(
        tenant_id=tenant_id,
        tenant=tenant,
        job_id=job_id,
        mode=mode,
        approved=approved,
        groups=[name for _, name in staged.layout.groups],
        sources=[key for _, key in staged.layout.sources],
        has_uid="unique_user_id" in staged.layout.text,
        rows=staged.rows,
        now=utcnow(),
    )


class JobRunner:
    def __init__(self, settings: Settings, engine: Engine, jobs: JobStore, actor: str, instance: str) -> None:
        self.settings = settings
        self.engine = engine
        self.jobs = jobs
        self.running: dict[int, JobProgress] = {}  # jobs this process runs now, for its status line
        self.claims: dict[int, Claim] = {}  # and its claims on them
        self.actor = actor  # who the job_event rows of this runner's outcomes name
        self.instance = instance  # the name its claims carry

    # -- public -----------------------------------------------------------------------------

    def run(
        self,
        job: JobRecord,
        *,
        mode: str | None = None,
        progress: Progress | None = None,
        in_order: bool = True,
    ) -> Summary | None:
        """Claim queued *job* and process it. None when it was not there to take (another instance
        has it or its tenant, or it is no longer the tenant's head: see ``claim_job``), or when
        another instance took it over while we worked (our attempt is void, nothing of it applied).

        An unexpected failure rolls the attempt back and puts the job back in the queue, or fails
        it after its MAX_ATTEMPTS-th attempt; the exception propagates."""
        tenant = self.settings.tenant(job.tenant)
        dirs = tenant_dirs(self.settings.daemon.data_dir, job.tenant)
        dirs.create()
        lease_s = self.settings.daemon.lease_s
        with self.engine.connect() as conn:
            claim = claim_job(
                conn, job.id, instance=self.instance, actor=self.actor, lease_s=lease_s, in_order=in_order
            )
            if claim is None:
                return None
            run = self._new_run(job, tenant, dirs, mode, claim)
            self.running[job.id] = run.tracker
            self.claims[job.id] = claim
            try:
                with (
                    structlog.contextvars.bound_contextvars(
                        tenant=job.tenant, job_id=job.id, file=job.file_name
                    ),
                    Heartbeat(self.engine, lease_s, lambda c: renew(c, claim, lease_s), job_id=job.id),
                ):
                    return self._attempt(conn, run, progress)
            except LeaseLost as exc:
                log.warning("job_attempt_void", tenant=job.tenant, job_id=job.id, reason=str(exc))
                self.discard_temporaries(job, claim.token)
                return None
            except Exception as exc:
                if self._attempt_failed(run, exc) == "void":
                    return None  # taken over (our session was ended): nothing of ours applied
                raise
            except BaseException:  # interrupted: the job goes back to the queue at once
                self._release(run, QUEUED, code="attempt_stopped", message="the attempt was stopped")
                raise
            finally:
                self.running.pop(job.id, None)
                self.claims.pop(job.id, None)
                run.tracker.finished()

    def release_all(self, message: str) -> None:
        """Put the jobs this process still runs back in the queue (it is about to exit without
        waiting for them; if one commits after all, its outcome stands and this is a no-op)."""
        for claim in list(self.claims.values()):
            try:  # SQLite: the job's own transaction may hold the lock; the next start reclaims it
                with write_transaction(self.engine, busy_ms=2000) as conn:
                    release(
                        conn, claim, QUEUED, actor=self.actor, code="attempt_stopped", message=message,
                        lease_expires_at=None, db_session=None,
                    )  # fmt: skip
            except (StateConflict, LeaseLost, SQLAlchemyError):
                continue
            log.warning("job_requeued_at_exit", job_id=claim.job_id)

    def _new_run(
        self, job: JobRecord, tenant: TenantConfig, dirs: TenantDirs, mode: str | None, claim: Claim
    ) -> _Run:
        source = self.input_path(job)
        return _Run(
            job=job,
            tenant=tenant,
            dirs=dirs,
            # A held job re-runs in the mode it was planned in (an `import --mode` override too).
            mode=mode or job.mode or mode_from_name(job.file_name) or tenant.sync_mode,
            started=utcnow(),
            source=source,
            tracker=JobProgress(
                job_id=job.id,
                tenant=job.tenant,
                file=job.file_name,
                size=job.size,
                path=progress_path(dirs.spool, job.id),
            ),
            file_time=self.file_time(job.file_name, source),
            claim=claim,
        )

    def _attempt(self, conn: Connection, run: _Run, progress: Progress | None) -> Summary | None:
        job = run.job
        if not is_roster_name(job.file_name):
            return self._file_failed(run, self._unsupported(job))
        earlier = self.jobs.earlier_applied(job.tenant_id, job.sha256, job.id)
        if earlier is not None:
            return self._duplicate(run, earlier)
        return self._import(conn, run, progress)

    # -- an attempt that did not get to an outcome ------------------------------------------

    def _attempt_failed(self, run: _Run, exc: Exception) -> str:
        """Record a failed attempt; ``void`` when another instance had taken the job over (this
        attempt's failure is then nobody's business), else ``failed``."""
        job = run.job
        status = self._status_now(run)
        if status == "taken_over":  # the lease ran out and it was reclaimed (our session ended)
            log.warning("job_attempt_void", tenant=job.tenant, job_id=job.id, reason=repr(exc))
            self.discard_temporaries(job, run.token)
            return "void"
        if database_unavailable(exc) is not None:
            # Nothing can be recorded, and the server rolled the attempt back. The claim is
            # reclaimed once the database answers (its session is gone); no attempt is counted.
            return "failed"
        if isinstance(exc, OrgsyncError):  # ours (an injected fault): rolled back, not counted
            self._release(run, QUEUED, code=exc.code, message=str(exc))
            return "failed"
        if status != "ours":  # it committed: its results wait to be moved in, keep them
            log.error("job_finish_interrupted", tenant=job.tenant, job_id=job.id, error=repr(exc))
            return "failed"
        self.discard_temporaries(job, run.token)  # an aborted attempt's results must never be moved in
        trouble = storage_trouble(exc)
        if trouble is not None:
            self._storage_failed(run, trouble)
            return "failed"
        attempts = job.attempts + 1
        log.exception("job_attempt_failed", tenant=job.tenant, job_id=job.id, attempts=attempts)
        message = f"internal error on attempt {attempts}: {type(exc).__name__}: {exc}"
        last = attempts >= MAX_ATTEMPTS
        self._release(
            run,
            "failed" if last else QUEUED,
            code="internal_error",
            message=message,
            attempts=attempts,
            error_message=message,
            **({"error_code": "internal_error"} if last else {}),
        )
        return "failed"

    def _status_now(self, run: _Run) -> str:
        """``ours`` (still running on our claim), ``taken_over`` (reclaimed, and maybe finished,
        by another), ``finished`` (our outcome committed), or ``unknown``."""
        try:
            job = self.jobs.get(run.job.id)
        except SQLAlchemyError:
            return "unknown"  # cannot tell: keep what is on disk, the next attempt overwrites it
        if job.claim_token != run.token or job.status == QUEUED:  # (the token stays on the outcome)
            return "taken_over"
        return "ours" if job.status == RUNNING else "finished"

    def _storage_failed(self, run: _Run, trouble: str) -> None:
        """The disk is full or read-only: not the file's fault and not a bug, so the attempt does
        not count; the job goes back to the queue and runs again at the next run."""
        job = run.job
        message = f"the data directory cannot be written ({trouble}); the job runs again at the next run"
        log.error("job_storage_unavailable", tenant=job.tenant, job_id=job.id, reason=trouble)
        self._release(run, QUEUED, code="storage_unavailable", message=message, error_message=message)

    def _release(self, run: _Run, to_status: str, **values: Any) -> None:
        """End our claim without an outcome; nothing to do if the job finished or was taken over."""
        assert run.claim is not None
        try:
            with write_transaction(self.engine) as conn:
                release(
                    conn, run.claim, to_status, actor=self.actor, lease_expires_at=None,
                    db_session=None, **values,
                )  # fmt: skip
        except (StateConflict, LeaseLost):
            pass
        except SQLAlchemyError:  # the database is away (or on the same full disk): the lease runs out
            log.warning("job_release_unrecorded", tenant=run.job.tenant, job_id=run.job.id)

    def dry_run(
        self, tenant_name: str, source: Path, *, mode: str, progress: Progress | None = None
    ) -> Summary:
        """Stage and plan in a transaction that is rolled back: what would change, changing nothing."""
        tenant = self.settings.tenant(tenant_name)
        tenant_id = self.jobs.tenant_id(tenant_name)
        started = utcnow()
        summary = Summary(
            None, tenant_name, source.name, "", mode, "", received_at=started, started_at=started
        )
        summary.extra["dry_run"] = True
        with (
            self.engine.connect() as conn,
            conn.begin(),
            open_source(source, tenant_name, tenant, max_bytes=self._max_bytes) as roster,
        ):
            try:
                staged = self._stage(conn, roster, tenant_name, tenant, progress, mode)
            except FileRejected as exc:
                summary.status, summary.finished_at = "failed", utcnow()
                summary.counts["error"] = 1
                summary.extra["error"] = {"code": exc.code, "message": exc.message}
                return summary
            request = _request(staged, tenant, tenant_id, 0, mode, approved=False)
            plan = Planner(conn, request).plan()
            plan.holds += self._guards(conn, request, staged, self.file_time(source.name, source))
            self._fill(summary, plan, staged.layout.warnings)
            _note_delimiter(summary, tenant, roster)
            conn.rollback()
        return summary

    def file_time(self, name: str, path: Path) -> datetime | None:
        """A file's HRIS timestamp: from its name, else its mtime (kept by SFTP clients that
        preserve times, and by ``orgsyncd import``'s copy)."""
        found = guards.time_from_name(name, ZoneInfo(self.settings.daemon.timezone))
        if found is not None:
            return found
        try:
            return datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except FileNotFoundError:
            return None

    def finalize(self, job: JobRecord) -> None:
        """Move result files into results/ and the input into archive/. Idempotent."""
        dirs = tenant_dirs(self.settings.daemon.data_dir, job.tenant)
        # The committed attempt's files: the job keeps the token of the claim that recorded it.
        for tmp, final in self._moves(dirs, job, job.claim_token):
            _move_if_there(tmp, final)
        faults.checkpoint("after_results_moved")
        spool = Path(job.spool_path)
        if job.status in TERMINAL and spool.exists():
            _unlink_inbox_copy(dirs.inbox / job.file_name, spool)
            _move_if_there(spool, archive_path(dirs, job.file_name, job.id))
        faults.checkpoint("after_archive")
        # (a run killed mid-job leaves its progress file; the job is done now, whoever finished it)
        progress = progress_path(dirs.spool, job.id)
        for leftover in (progress, progress.with_name(progress.name + ".tmp")):
            leftover.unlink(missing_ok=True)
        if job.status in TERMINAL:  # what attempts killed or taken over left behind
            for leftover in dirs.spool.glob(f"{job.id}.*.tmp"):
                leftover.unlink(missing_ok=True)
        self.jobs.mark_finalized(job.id)

    # -- the import proper ------------------------------------------------------------------

    def _import(self, conn: Connection, run: _Run, progress: Progress | None) -> Summary | None:
        clock = time.monotonic()
        import_cache(conn)
        run.tracker.phase_started("staging")

        def staging_progress(done: int) -> None:
            run.tracker.bytes_read(done)
            if progress is not None:
                progress(done)

        outcome = self._stage_plan_apply(conn, run, staging_progress)
        if isinstance(outcome, FileRejected):
            return self._file_failed(run, outcome)
        if outcome is not None:
            seconds = round(time.monotonic() - clock, 3)
            log.info("import_finished", status=outcome.status, counts=outcome.counts, seconds=seconds)
            self.finalize(self.jobs.get(run.job.id))
        return outcome

    def _stage_plan_apply(
        self, conn: Connection, run: _Run, progress: Progress | None
    ) -> Summary | FileRejected | None:
        scratch = run.dirs.spool / f"{_tag(run.job.id, run.token)}.sheet.csv.tmp"
        with open_source(run.source, run.job.tenant, run.tenant, scratch, self._max_bytes) as source:
            try:
                with conn.begin():
                    staged = self._stage(conn, source, run.job.tenant, run.tenant, progress, run.mode)
            except FileRejected as exc:
                drop_staging(conn)
                conn.commit()
                return exc
            faults.checkpoint("after_stage")
            return self._plan_and_apply(conn, run, staged)

    def _plan_and_apply(self, conn: Connection, run: _Run, staged: Staged) -> Summary | None:
        job = run.job
        request = _request(staged, run.tenant, job.tenant_id, job.id, run.mode, job.approved)
        conn.execution_options(sqlite_immediate=True)
        try:
            with conn.begin():
                self._check_claim(conn, run)  # taken over while we were staging: stop here
                run.tracker.phase_started("planning", staged.rows)
                plan = Planner(conn, request).plan()
                if not job.approved:
                    plan.holds += self._guards(conn, request, staged, run.file_time)
                faults.checkpoint("after_plan")
                summary = self._summary(run)
                self._fill(summary, plan, staged.layout.warnings)
                _note_delimiter(summary, run.tenant, staged.source)
                before = seats_in_use(conn, job.tenant_id)
                after = before
                audit: dict[str, int] = {}
                written = False
                if plan.holds:
                    self._write_plan(conn, run, request, summary)
                else:
                    audit["audit_from"] = last_audit_id(conn) + 1
                    run.tracker.phase_started("applying")
                    if conn.dialect.name == "postgresql":
                        self._apply_writing_results(conn, run, request, plan, summary, staged)
                        written = True
                    else:
                        Applier(conn, request).apply(plan.counts)
                    audit["audit_to"] = last_audit_id(conn)
                    after = seats_in_use(conn, job.tenant_id)
                faults.checkpoint("after_apply")
                if not written:
                    run.tracker.phase_started("writing_results", staged.rows)
                    lines = result_lines(conn, plan.default_outcome)
                    self._write_results(run, summary, staged, lines, plan.default_outcome, plan.holds)
                issues = [*_file_issue_groups(staged.layout.warnings), *plan_issues(conn)]
                self._write_report(run, summary, _seat_rows(run.tenant, before, after), issues, plan)
                self._finish(
                    conn,
                    run,
                    summary,
                    error_code=plan.holds[0].code if plan.holds else None,
                    error_message=summary.extra.get("message") if plan.holds else None,
                    file_time=run.file_time,
                    columns=json.dumps(guards.column_set(staged.layout.names)),
                    **audit,
                )
                faults.checkpoint("before_commit")
        except StateConflict:
            return None  # another process recorded an outcome first; ours rolled back
        finally:
            conn.execution_options(sqlite_immediate=False)
            drop_staging(conn)
            conn.commit()
        faults.checkpoint("after_commit")
        return summary

    def _apply_writing_results(
        self, conn: Connection, run: _Run, request: PlanRequest, plan: Plan, summary: Summary, staged: Staged
    ) -> None:
        """PostgreSQL: the server applies the plan while this process writes the results file.
        Each would otherwise wait for the other (the apply is the server's work, the results are
        Python's), and the results follow from the plan alone, which the apply does not change:
        its result lines are copied to a scratch file first, then the apply runs in a thread on
        this connection (nothing else uses it meanwhile). Either failing fails the job, as before;
        nothing is committed until both are done."""
        lines = spooled(result_lines(conn, plan.default_outcome), run.dirs.spool)
        context = contextvars.copy_context()  # the job's log context, in the apply thread too
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="apply") as pool:
            applying = pool.submit(context.run, Applier(conn, request).apply, plan.counts)
            try:
                run.tracker.phase_started("writing_results", staged.rows)
                self._write_results(run, summary, staged, lines, plan.default_outcome, plan.holds)
            finally:
                futures.wait([applying])  # the connection is free again only once the apply ends
                lines.close()
        applying.result()

    def _check_claim(self, conn: Connection, run: _Run) -> None:
        status, token, instance = self.jobs.claim_of(conn, run.job.id)
        if status != RUNNING or token != run.token:
            raise LeaseLost(f"job {run.job.id} was taken over by {instance}; this attempt is void")

    @property
    def _max_bytes(self) -> int:
        return self.settings.daemon.max_roster_bytes

    def _guards(
        self, conn: Connection, request: PlanRequest, staged: Staged, file_time: datetime | None
    ) -> list[guards.Hold]:
        """The guards that compare the file with the tenant's last applied ones (the threshold is
        the planner's)."""
        tenant, found = request.tenant, []
        if tenant.hold_stale_files:
            found.append(
                guards.stale_file(file_time, last_file_time(conn, request.tenant_id), request.job_id)
            )
        if tenant.hold_on_header_change and request.mode == "full":
            previous = last_full_columns(conn, request.tenant_id)
            found.append(guards.header_changed(previous, staged.layout.names, request.job_id))
        return [hold for hold in found if hold is not None]

    def _write_plan(self, conn: Connection, run: _Run, request: PlanRequest, summary: Summary) -> None:
        """A held job's plan file: one line per learner it would change."""
        with atomic_text(self._plan_tmp(run.dirs, run.job.id, run.token)) as out:
            writer = ChangeWriter(out, PLAN_HEADER)
            changes = plan_changes(
                conn, request.groups, run.mode, run.tenant.inactive_group, len(request.sources)
            )
            for change in changes:
                writer.plan(change)
        final = plan_path(run.dirs, run.job.file_name, run.job.id)
        summary.extra["plan"] = {"file": f"results/{final.name}", "learners": writer.count}

    def _stage(
        self,
        conn: Connection,
        source: RosterSource,
        name: str,
        tenant: TenantConfig,
        progress: Progress | None,
        mode: str,
    ) -> Staged:
        fmt = tenant_format(name, tenant)
        with contextlib.closing(source.records(progress=progress)) as records:  # closed on errors too
            layout = self._header(records, name, tenant, fmt, source)
            rules = RowRules(tenant.blank_means, tenant.default_license)
            seed = _fingerprint_seed(layout, tenant, fmt)
            validator = RowValidator(layout, rules, seed=seed, mapping=fmt.mapping)
            groups, sources = len(layout.groups), len(layout.sources)
            create_staging(conn, groups, sources)
            validated = starmap(validator.validate, roster_rows(records, layout))
            rows = load_staging(conn, faults.stream(validated, "during_stage"), groups, sources)
        if rows == 0 and mode == "full":
            # A full file says who exists: an empty one would deactivate everyone.
            raise FileRejected(
                "empty_roster",
                "this full file has a header but no rows; it would deactivate every learner, so "
                "nothing was applied. Check the HRIS export (a failed query?) and upload it again",
            )
        return Staged(layout=layout, rows=rows, source=source)

    def _header(
        self,
        records: Iterator[Record],
        name: str,
        tenant: TenantConfig,
        fmt: TenantFormat,
        source: RosterSource,
    ) -> Layout:
        first = next(records, None)
        if first is None:
            raise FileRejected("empty_file", "the file has no header line (it is empty or blank)")
        rules = HeaderRules(
            tenant.license_types,
            tenant.default_license,
            tenant.strict_headers,
            delimiter=source.delimiter or ",",
            key=table_key(name),
        )
        return analyse_header(first[1], rules, fmt.mapping)

    # -- summaries and result files ---------------------------------------------------------

    def _summary(self, run: _Run) -> Summary:
        job = run.job
        return Summary(
            job.id,
            job.tenant,
            job.file_name,
            job.sha256,
            run.mode,
            "",
            received_at=job.received_at,
            started_at=run.started,
        )

    def _fill(self, summary: Summary, plan: Plan, warnings: list[Issue]) -> None:
        summary.counts = empty_counts() | plan.counts
        summary.counts["warning"] = len(warnings)
        if plan.holds:
            summary.status = "held"
            summary.extra["message"] = " ".join(hold.message for hold in plan.holds)
            summary.extra["held"] = [hold.code for hold in plan.holds]
        else:
            summary.status = summary_status(summary.counts, file_error=False)
        if summary.mode == "full":
            summary.extra["deactivated_not_in_file"] = 0 if plan.holds else plan.absent
            summary.extra["missing_in_grace"] = plan.grace
        summary.finished_at = utcnow()

    def _write_results(
        self,
        run: _Run,
        summary: Summary,
        staged: Staged,
        result: Generator[ResultLine, None, None],
        default: str,
        holds: list[guards.Hold],
    ) -> None:
        layout = staged.layout
        csv_tmp, json_tmp = self.tmp_paths(run.dirs, run.job.id, run.token)
        issues = [Issue("error", hold.code, hold.message) for hold in holds] + list(layout.warnings)
        with atomic_text(csv_tmp) as out, contextlib.closing(result) as lines:
            writer = ResultsWriter(out, layout.names, _newline(run))
            writer.issues(issues)
            if layout.row >= 0 or writer.drop:  # a results file uploaded again
                records = staged.source.records()
                next(records)  # the header
                rows = run.tracker.counted(roster_rows(records, layout))
                written = writer.rows(lines, rows, default)
            else:
                echoes = staged.source.echo_records()
                next(echoes)  # the header
                counted = run.tracker.counted(faults.stream(echoes, "during_results"))
                written = writer.echo_rows(lines, counted, default)
        if written != staged.rows:  # the second read must see the rows the first one staged
            raise RuntimeError(
                f"results out of step with input: {written} rows written, {staged.rows} staged"
            )
        write_json(json_tmp, summary.as_dict())

    def _write_report(
        self,
        run: _Run,
        summary: Summary,
        seats: list[SeatUsage],
        issues: list[IssueGroup],
        plan: Plan | None = None,
    ) -> None:
        """The person-readable report, under its temporary name like the other result files."""
        held = None
        if summary.status == "held" and plan is not None:
            # Learners a full file leaves out are deactivated too, though no row of it says so.
            would = {**plan.counts, "deactivated": plan.counts.get("deactivated", 0) + plan.absent}
            plan_file = plan_path(run.dirs, run.job.file_name, run.job.id).name
            held = HeldPlan(reason=summary.extra.get("message", ""), would=would, plan_file=plan_file)
        names = [p.name for p in result_paths(run.dirs, run.job.file_name, run.job.id)]
        files = {"Results, one line per input row": names[0], "Summary (JSON)": names[1]}
        if held is not None:
            files["Plan, one line per learner it would change"] = held.plan_file or ""
        data = ReportData(summary=summary.as_dict(), seats=seats, issues=issues, held=held, files=files)
        with atomic_text(self._report_tmp(run.dirs, run.job.id, run.token)) as out:
            out.write(render(data))

    def _file_failed(self, run: _Run, exc: FileRejected) -> Summary:
        summary = self._summary(run)
        summary.status, summary.finished_at = "failed", utcnow()
        summary.extra["error"] = {"code": exc.code, "message": exc.message}
        log.warning("import_rejected", code=exc.code, reason=exc.message)
        self._write_simple(run, summary, [Issue("error", exc.code, exc.message)])
        self._record_terminal(run, summary, error_code=exc.code, error_message=exc.message)
        return summary

    def _duplicate(self, run: _Run, earlier: int) -> Summary:
        summary = self._summary(run)
        summary.status, summary.finished_at = "duplicate", utcnow()
        message = (
            f"this file is identical (sha256) to job {earlier}, which was already applied; "
            "nothing was applied again"
        )
        summary.extra["duplicate_of"] = earlier
        log.info("import_duplicate", duplicate_of=earlier)
        self._write_simple(run, summary, [Issue("warning", "duplicate_file", message)])
        self._record_terminal(
            run, summary, duplicate_of=earlier, error_code="duplicate_file", error_message=message
        )
        return summary

    def write_operator_outcome(self, job: JobRecord, status: str, message: str) -> None:
        """Result files for a job an operator closed (reject), then finalize it."""
        run = _Run(
            job=job,
            tenant=self.settings.tenant(job.tenant),
            dirs=tenant_dirs(self.settings.daemon.data_dir, job.tenant),
            mode=job.mode or "delta",
            started=job.started_at or utcnow(),
            source=self.input_path(job),
            tracker=JobProgress(
                job_id=job.id, tenant=job.tenant, file=job.file_name, size=job.size, path=None
            ),
        )
        summary = self._summary(run)
        summary.status, summary.finished_at = status, utcnow()
        summary.extra["message"] = message
        self._write_simple(run, summary, [Issue("error", status, message)])
        self.finalize(self.jobs.get(job.id))

    def _write_simple(self, run: _Run, summary: Summary, issues: list[Issue]) -> None:
        """Result files of a job that applied nothing (a file-level error, a duplicate, a reject)."""
        csv_tmp, json_tmp = self.tmp_paths(run.dirs, run.job.id, run.token)
        if summary.status != "duplicate":
            summary.counts["error"] = sum(1 for i in issues if i.outcome == "error")
        summary.counts["warning"] = sum(1 for i in issues if i.outcome == "warning")
        with atomic_text(csv_tmp) as out:
            ResultsWriter(out, None, _newline(run)).issues(issues)
        write_json(json_tmp, summary.as_dict())
        with self.engine.connect() as conn:
            seats = seats_in_use(conn, run.job.tenant_id)
        self._write_report(run, summary, _seat_rows(run.tenant, seats, seats), _file_issue_groups(issues))

    def _record_terminal(self, run: _Run, summary: Summary, **values: Any) -> None:
        """A job that ends without an import (unsupported, rejected file, duplicate)."""
        try:
            with write_transaction(self.engine) as conn:
                self._finish(conn, run, summary, **values)
        except StateConflict:
            return  # another process recorded an outcome first
        self.finalize(self.jobs.get(run.job.id))

    def _finish(self, conn: Connection, run: _Run, summary: Summary, **values: Any) -> None:
        """Record the job's outcome in the caller's transaction. Fencing: only while our claim is
        the job's current one (LeaseLost otherwise, and the caller's transaction rolls back, so a
        job another instance took over is never applied twice)."""
        assert run.claim is not None
        change_state(
            conn,
            run.job.id,
            summary.status,
            actor=self.actor,
            allowed=(RUNNING,),
            token=run.claim.token,
            code=values.get("error_code"),
            message=values.get("error_message"),
            mode=run.mode,
            counts=summary.counts,
            started_at=run.started,
            finished_at=summary.finished_at,
            attempts=run.job.attempts + 1,
            finalized=False,
            lease_expires_at=None,  # the claim ends with the outcome (instance and token stay)
            db_session=None,
            **values,
        )

    def tmp_paths(self, dirs: TenantDirs, job_id: int, token: str | None = None) -> tuple[Path, Path]:
        """The temporary names of a job's results and summary, for the attempt holding *token*."""
        tag = _tag(job_id, token)
        return dirs.spool / f"{tag}.results.csv.tmp", dirs.spool / f"{tag}.summary.json.tmp"

    def _report_tmp(self, dirs: TenantDirs, job_id: int, token: str | None) -> Path:
        return dirs.spool / f"{_tag(job_id, token)}.report.html.tmp"

    def discard_temporaries(self, job: JobRecord, token: str | None) -> None:
        """Drop the result files an aborted attempt (the one holding *token*) wrote."""
        dirs = tenant_dirs(self.settings.daemon.data_dir, job.tenant)
        for tmp, _ in self._moves(dirs, job, token):
            with contextlib.suppress(OSError):  # a read-only disk: the next attempt overwrites them
                tmp.unlink(missing_ok=True)

    def _moves(self, dirs: TenantDirs, job: JobRecord, token: str | None) -> list[tuple[Path, Path]]:
        """(temporary, final) for every result file of a job, in the order they are moved."""
        moves = list(
            zip(
                self.tmp_paths(dirs, job.id, token),
                result_paths(dirs, job.file_name, job.id),
                strict=True,
            )
        )
        moves.append((self._report_tmp(dirs, job.id, token), report_path(dirs, job.file_name, job.id)))
        moves.append((self._plan_tmp(dirs, job.id, token), plan_path(dirs, job.file_name, job.id)))
        return moves

    def _plan_tmp(self, dirs: TenantDirs, job_id: int, token: str | None) -> Path:
        return dirs.spool / f"{_tag(job_id, token)}.plan.csv.tmp"

    def _unsupported(self, job: JobRecord) -> FileRejected:
        return FileRejected(
            "unsupported_file_type",
            f"{job.file_name!r} is not a roster file; upload a .csv, .csv.gz or .xlsx file, or one of "
            "them PGP-encrypted as .csv.pgp, .csv.gpg, .csv.asc or .csv.gz.pgp",
        )

    def input_path(self, job: JobRecord) -> Path:
        """Where the job's input is now: the spool while queued, the archive once processed."""
        spool = Path(job.spool_path)
        if spool.exists():
            return spool
        return archive_path(tenant_dirs(self.settings.daemon.data_dir, job.tenant), job.file_name, job.id)


def _tag(job_id: int, token: str | None) -> str:
    """``<job>.<token prefix>``: an attempt's temporary files carry its claim."""
    return f"{job_id}.{token[:12]}" if token else str(job_id)


_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
_STORAGE_WORDS = (
    "database or disk is full",
    "disk I/O error",
    "readonly database",
    "unable to open database file",
    "No space left on device",
)


def storage_trouble(exc: BaseException) -> str | None:
    """What is wrong with the storage, when that is why ``exc`` happened: a full or read-only disk
    under the data directory (an OSError), or under SQLite's or PostgreSQL's files."""
    for err in exception_chain(exc):
        if isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS:
            return f"{err.strerror}: {err.filename}" if err.filename else str(err.strerror)
        if getattr(err, "sqlstate", None) == "53100" or any(w in str(err) for w in _STORAGE_WORDS):
            return str(err).splitlines()[0]
    return None


def _newline(run: _Run) -> str:
    """The input's line ending, for its results; a file that is not a roster is not opened, and
    neither a workbook (no lines) nor an encrypted file (not decrypted a third time) is looked at."""
    name = run.job.file_name
    if not is_roster_name(name) or is_workbook_name(name) or is_encrypted(Path(name)):
        return "\r\n"
    return line_ending(run.source)


def _move_if_there(tmp: Path, final: Path) -> None:
    """Finalizing is idempotent: whoever finishes a job first (a restart, another instance) moved it."""
    with contextlib.suppress(FileNotFoundError):
        atomic_replace(tmp, final)


def _unlink_inbox_copy(inbox_file: Path, spool: Path) -> None:
    """The upload leaves inbox/ once processed, unless a new file of that name replaced it."""
    try:
        if inbox_file.samefile(spool):
            inbox_file.unlink()
    except FileNotFoundError:
        pass


def _seat_rows(tenant: TenantConfig, before: dict[str, int], after: dict[str, int]) -> list[SeatUsage]:
    """Every configured licence type, and any other one learners still hold."""
    names = sorted(set(tenant.licenses) | set(before) | set(after))
    return [
        SeatUsage(
            license=name,
            seats=tenant.licenses.get(name, 0),
            before=before.get(name, 0),
            after=after.get(name, 0),
        )
        for name in names
    ]


def _file_issue_groups(issues: list[Issue]) -> list[IssueGroup]:
    """File-level issues (line 0) grouped by code, like the row issues."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for issue in issues:
        grouped.setdefault((issue.code, issue.outcome), []).append(issue.message)
    return [
        IssueGroup(code=code, outcome=outcome, count=len(messages), examples=[(0, m) for m in messages])
        for (code, outcome), messages in grouped.items()
    ]


def _fingerprint_seed(layout: Layout, tenant: TenantConfig, fmt: TenantFormat) -> int:
    """What else decides a row's effect besides its cells: the header and the tenant's rules
    (its column and value mapping too)."""
    context: tuple[object, ...] = (
        layout.names,
        tenant.blank_means,
        tenant.default_license,
        sorted(tenant.licenses),
        tenant.inactive_group,
    )
    if not fmt.mapping.is_empty:  # unmapped tenants keep the fingerprints they have
        context += fmt.mapping.fingerprint_context()
    return zlib.crc32(repr(context).encode("utf-8"))


def _note_delimiter(summary: Summary, tenant: TenantConfig, source: RosterSource) -> None:
    """With ``delimiter = "auto"`` the summary says which one the file was split with."""
    if tenant.delimiter == "auto" and source.delimiter is not None:
        summary.extra["delimiter"] = source.delimiter


class atomic_text:
    """A text file written and fsynced under its final temporary name."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = self.path.open("w", encoding="utf-8", newline="")
        return self.fh

    def __exit__(self, *exc: object) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
