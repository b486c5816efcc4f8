"""`orgsyncd jobs revert ID`: undo an applied job, as a job of its own (kind ``revert``).

The revert job is created, run and finished in one transaction with the restore itself, so no
other process ever sees it half-done, and a crash leaves nothing of it. Its results file
(``results/revert-<ID>.<job>.results.csv``) has one line per learner restored, or, when the revert
is refused, one line per learner that stands in the way. The reverted job's status becomes
``reverted`` (a state change like any other: audited, notified), so its file can be sent again
and is not taken for a duplicate.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

import structlog
from sqlalchemy import Connection, Engine, insert, text
from sqlalchemy.exc import IntegrityError

from orgsyncd.config import Settings
from orgsyncd.core.changes import REVERT_HEADER, ChangeWriter, describe, identity
from orgsyncd.core.results import iso, write_json
from orgsyncd.errors import OrgsyncError, UsageError
from orgsyncd.jobrunner import JobRunner, atomic_text
from orgsyncd.paths import tenant_dirs
from orgsyncd.store.db import is_sqlite, write_transaction
from orgsyncd.store.jobs import (
    APPLIED,
    REVERTED,
    RUNNING,
    JobRecord,
    JobStore,
    StateChange,
    change_state,
    record_change,
    running_text,
    tenant_lock_key,
    utcnow,
)
from orgsyncd.store.revert import Reverter, RevertPlan, last_audit_id
from orgsyncd.store.tables import Job

log = structlog.get_logger("orgsyncd.revert")
REVERTIBLE_KINDS = ("import", "revert")


@dataclass(frozen=True, slots=True)
class RevertResult:
    job_id: int | None  # None for a dry run
    target: int
    tenant: str
    status: str  # succeeded | failed (dry run: what it would be)
    restored: int
    deactivated: int
    code: str | None
    message: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "kind": "revert",
            "reverts": self.target,
            "tenant": self.tenant,
            "status": self.status,
            "counts": {"restored": self.restored, "deactivated": self.deactivated},
            "code": self.code,
            "message": self.message,
        }


class Reverts:
    def __init__(self, engine: Engine, jobs: JobStore, runner: JobRunner) -> None:
        self.engine = engine
        self.jobs = jobs
        self.runner = runner

    @property
    def settings(self) -> Settings:
        return self.runner.settings  # kept current by reloads

    def revert(
        self,
        job_id: int,
        *,
        actor: str,
        force: bool = False,
        dry_run: bool = False,
        out: TextIO | None = None,
    ) -> RevertResult:
        """Revert job *job_id*; a dry run writes the would-be results lines to *out* and changes
        nothing."""
        target = self.jobs.get(job_id)
        self._check(target)
        with write_transaction(self.engine) as conn:
            self._lock_tenant(conn, target)
            now = utcnow()
            new_id = 0 if dry_run else self._create_job(conn, target, actor, now)
            reverter = Reverter(
                conn,
                tenant_id=target.tenant_id,
                tenant=self.settings.tenant(target.tenant),
                target=target.id,
                events=(target.audit_from, target.audit_to),
                job_id=new_id,
                now=now,
                force=force,
            )
            try:
                plan = reverter.prepare()
                if dry_run:
                    result = self._dry_run(reverter, plan, target, out)
                    conn.rollback()
                    return result
                result = self._finish(conn, reverter, plan, target, new_id, actor)
            finally:
                if conn.in_transaction():
                    reverter.drop()
        self.runner.finalize(self.jobs.get(new_id))
        log.info(
            "revert_finished", job_id=new_id, reverts=target.id, tenant=target.tenant, status=result.status
        )
        return result

    # -- checks --------------------------------------------------------------------------------

    def _check(self, target: JobRecord) -> None:
        self.settings.tenant(target.tenant)  # a job of a tenant no longer configured: ConfigError
        if target.status == REVERTED:
            raise UsageError(f"job {target.id} was already reverted ({self._reverted_by(target.id)})")
        if target.kind not in REVERTIBLE_KINDS or target.status not in APPLIED:
            raise UsageError(
                f"job {target.id} is {target.status}; only applied jobs (succeeded or "
                "partially_succeeded) can be reverted"
            )
        if target.kind == "import" and target.columns is None:
            raise UsageError(
                f"job {target.id} was applied by an orgsyncd older than its revert support: its audit "
                "trail has no before-image of group memberships, so it cannot be reverted exactly"
            )

    def _reverted_by(self, job_id: int) -> str:
        with self.engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT id FROM job WHERE target_job_id = :j AND kind = 'revert' AND status = 'succeeded'"
                ),
                {"j": job_id},
            ).scalar()
        return f"by job {found}" if found is not None else "see 'orgsyncd jobs show'"

    def _lock_tenant(self, conn: Connection, target: JobRecord) -> None:
        """PostgreSQL: not while an import of the tenant runs (SQLite: the write lock is enough)."""
        if is_sqlite(conn):
            return
        key = {"k": tenant_lock_key(target.tenant_id)}
        if not conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), key).scalar():
            raise OrgsyncError(
                f"a job of tenant {target.tenant!r} is running; revert when it is done ('orgsyncd jobs list')"
            )

    # -- the revert job ------------------------------------------------------------------------

    def _create_job(self, conn: Connection, target: JobRecord, actor: str, now: datetime) -> int:
        try:
            new_id: int = conn.execute(
                insert(Job)
                .values(
                    tenant_id=target.tenant_id,
                    kind="revert",
                    target_job_id=target.id,
                    file_name=f"revert-{target.id}",
                    spool_path=f"revert:{target.id}:{uuid.uuid4().hex}",  # no input file
                    sha256="",
                    size=0,
                    status=RUNNING,
                    deferred=False,
                    priority=0,
                    approved=False,
                    finalized=False,
                    attempts=1,
                    received_at=now,
                    started_at=now,
                )
                .returning(text("id"))
            ).scalar_one()
        except IntegrityError:  # one running job per tenant
            busy = self.jobs.running_of(target.tenant)
            what = f"job {busy.id} of tenant {target.tenant!r} is {running_text(busy)}" if busy else (
                f"a job of tenant {target.tenant!r} is running"
            )  # fmt: skip
            raise OrgsyncError(f"{what}; revert when it is done") from None
        change = StateChange(
            job_id=new_id,
            tenant_id=target.tenant_id,
            from_status=None,
            to_status=RUNNING,
            actor=actor,
            code=None,
            message=f"revert of job {target.id}",
            at=now,
        )
        record_change(conn, change)
        return new_id

    def _finish(
        self,
        conn: Connection,
        reverter: Reverter,
        plan: RevertPlan,
        target: JobRecord,
        new_id: int,
        actor: str,
    ) -> RevertResult:
        values: dict[str, Any] = {}
        if plan.refusal is None:
            values["audit_from"] = last_audit_id(conn) + 1
            reverter.apply()
            values["audit_to"] = last_audit_id(conn)
            change_state(
                conn,
                target.id,
                REVERTED,
                actor=actor,
                allowed=APPLIED,
                code="reverted",
                message=f"reverted by job {new_id}",
            )
        status = "failed" if plan.refusal else "succeeded"
        result = RevertResult(
            new_id,
            target.id,
            target.tenant,
            status,
            plan.restored,
            plan.deactivated,
            plan.refusal_code,
            plan.refusal,
        )
        self._write_results(reverter, plan, result)
        change_state(
            conn,
            new_id,
            status,
            actor=actor,
            allowed=(RUNNING,),
            code=plan.refusal_code,
            message=plan.refusal,
            counts={"restored": plan.restored, "deactivated": plan.deactivated},
            error_code=plan.refusal_code,
            error_message=plan.refusal,
            finished_at=utcnow(),
            **values,
        )
        return result

    # -- results -------------------------------------------------------------------------------

    def _write_results(self, reverter: Reverter, plan: RevertPlan, result: RevertResult) -> None:
        assert result.job_id is not None
        dirs = tenant_dirs(self.settings.daemon.data_dir, result.tenant)
        csv_tmp, json_tmp = self.runner.tmp_paths(dirs, result.job_id)
        with atomic_text(csv_tmp) as out:
            _write_lines(out, reverter, plan)
        data = result.as_dict() | {"finished_at": iso(utcnow())}
        write_json(json_tmp, data)

    def _dry_run(
        self, reverter: Reverter, plan: RevertPlan, target: JobRecord, out: TextIO | None
    ) -> RevertResult:
        if out is not None:
            _write_lines(out, reverter, plan)
        return RevertResult(
            None,
            target.id,
            target.tenant,
            "failed" if plan.refusal else "succeeded",
            plan.restored,
            plan.deactivated,
            plan.refusal_code,
            plan.refusal,
        )


def _write_lines(out: TextIO, reverter: Reverter, plan: RevertPlan) -> None:
    writer = ChangeWriter(out, REVERT_HEADER)
    if plan.refusal is not None:
        if not plan.conflicts:  # a refusal about the whole revert (seats)
            writer.row(["error", plan.refusal_code or "", plan.refusal, "", "", "", "", ""])
        for conflict in plan.conflicts:
            writer.row(["error", conflict.code, conflict.message, *identity(conflict.values), ""])
        return
    for outcome, change in reverter.lines():
        writer.row([outcome, "", "", *identity(change.after), describe(change)])
