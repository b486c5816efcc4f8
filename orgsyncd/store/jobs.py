"""The job queue, in the database: jobs are rows, and the database decides who runs what.

States and who moves a job between them (every move is one call of ``change_state`` or, for the
row that creates a job, ``record_change``; both write a ``job_event`` row in the caller's
transaction)::

    (new) --queued--> queued --claimed--> running --> succeeded | partially_succeeded | failed
                                                   --> held --approved--> queued
                                                   |        --rejected--> rejected
                                                   --> duplicate
                        failed --retried--> queued
    succeeded | partially_succeeded --reverted--> reverted       (by a job of kind "revert")

"""

from __future__ import annotations

import getpass
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from orgsyncd.errors import LeaseLost, NotFoundError, OrgsyncError, UsageError
from orgsyncd.store.db import write_transaction
from orgsyncd.store.outbox import record_job_event
from orgsyncd.store.tables import Job, JobEvent, Tenant

QUEUED = "queued"
RUNNING = "running"
HELD = "held"
REVERTED = "reverted"
TERMINAL = ("succeeded", "partially_succeeded", "failed", "rejected", "duplicate", REVERTED)
APPLIED = ("succeeded", "partially_succeeded")
STATUSES = (QUEUED, RUNNING, HELD, *TERMINAL)


def cli_actor() -> str:
    """The actor of an operator's command: ``cli:<login name>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers) and no LOGNAME/USER
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


def instance_actor(instance: str) -> str:
    return f"instance:{instance}"


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChange:
    """One job state change, as recorded in ``job_event``."""

    job_id: int
    tenant_id: int
    from_status: str | None
    to_status: str
    actor: str
    code: str | None
    message: str | None
    at: datetime


class StateConflict(OrgsyncError):
    """The job is not in a state the change may start from (someone else changed it first)."""

    code = "job_state_conflict"

    def __init__(self, job_id: int, current: str, allowed: Sequence[str]) -> None:
        super().__init__(f"job {job_id} is {current}, not {' or '.join(allowed)}")
        self.job_id = job_id
        self.current = current
        self.allowed = tuple(allowed)


def change_state(
    conn: Connection,
    job_id: int,
    to_status: str,
    *,
    actor: str,
    allowed: Sequence[str] | None = None,
    token: str | None = None,
    code: str | None = None,
    message: str | None = None,
    **values: Any,
) -> StateChange:
    """Move job *job_id* to *to_status* inside the caller's transaction, and record it.

    The one way a job's status changes (creation aside, see ``JobStore.add``). It runs on the
    caller's connection, so the change, its ``job_event`` row and whatever the caller did in that
    transaction (an import's whole apply) commit or roll back together. The caller must hold a
    write transaction (``store.db.write_transaction``, or a connection begun with
    ``sqlite_immediate``): the row is locked (``FOR UPDATE``) before it is checked.

    *allowed*: the statuses the change may start from; otherwise ``StateConflict``.
    *token*: fencing. The change is made only by the holder of the job's current claim;
    otherwise ``LeaseLost`` (another instance took the job over), which rolls back the caller's
    transaction when it propagates.
    *code* / *message*: why (an error code, a reason); stored on the event, and on the job as
    ``error_code`` / ``error_message`` when the caller passes those in *values*.
    *values*: other job columns to set in the same statement (``counts`` as a dict).
    """
    row = conn.execute(
        select(col(Job.status), col(Job.tenant_id), col(Job.claim_token))
        .where(col(Job.id) == job_id)
        .with_for_update()
    ).first()
    if row is None:
        raise NotFoundError(f"there is no job {job_id}")
    current, tenant_id, current_token = row
    if token is not None and current_token != token:
        raise LeaseLost(f"job {job_id} was taken over by another instance; this attempt is void")
    if allowed is not None and current not in allowed:
        raise StateConflict(job_id, current, allowed)
    if "counts" in values and values["counts"] is not None:
        values["counts"] = json.dumps(values["counts"], sort_keys=True)
    conn.execute(update(Job).where(col(Job.id) == job_id).values(status=to_status, **values))
    change = StateChange(
        job_id=job_id,
        tenant_id=tenant_id,
        from_status=current,
        to_status=to_status,
        actor=actor,
        code=code,
        message=message,
        at=utcnow(),
    )
    record_change(conn, change)
    return change


def record_change(conn: Connection, change: StateChange) -> None:
    """Write *change* to ``job_event`` on the caller's connection (same transaction).

    Every job state change reaches this function, exactly once, inside the transaction that made
    it: ``change_state`` calls it, and so do the statements that create a job (``JobStore.add``)
    and claim one. Work that must happen if and only if a change commits belongs here, as
    one more statement on *conn*, e.g. the notification outbox row for the change.
    """
    conn.execute(
        insert(JobEvent).values(
            job_id=change.job_id,
            tenant_id=change.tenant_id,
            from_status=change.from_status,
            to_status=change.to_status,
            actor=change.actor,
            code=change.code,
            message=change.message,
            at=change.at,
        )
    )
    record_job_event(conn, change)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    id: int
    tenant: str
    tenant_id: int
    file_name: str
    spool_path: str
    sha256: str
    size: int
    mode: str | None
    status: str
    deferred: bool
    priority: int
    approved: bool
    finalized: bool
    attempts: int
    counts: dict[str, int] | None
    error_code: str | None
    error_message: str | None
    duplicate_of: int | None
    received_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    instance: str | None
    claimed_at: datetime | None
    lease_expires_at: datetime | None
    claim_token: str | None
    db_session: str | None
    kind: str = "import"
    target_job_id: int | None = None
    file_time: datetime | None = None
    columns: str | None = None
    audit_from: int | None = None
    audit_to: int | None = None


def running_text(job: JobRecord) -> str:
    """``running on instance web-1:4242 since 13:22:01Z, lease until 13:23:01Z``"""
    since = _clock(job.claimed_at)
    return f"running on instance {job.instance} since {since}, its lease until {_clock(job.lease_expires_at)}"


def _clock(at: datetime | None) -> str:
    if at is None:
        return "?"
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _record(job: Job, tenant: str) -> JobRecord:
    data = job.model_dump()
    data["counts"] = json.loads(job.counts) if job.counts else None
    return JobRecord(tenant=tenant, **data)


def tenant_lock_key(tenant_id: int) -> int:
    """A PostgreSQL advisory-lock key per tenant, for reverts (imports are kept apart by their
    claims: one running job per tenant, see ``store/claims.py``)."""
    return zlib.crc32(f"orgsyncd-tenant-{tenant_id}".encode())


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._tenant_ids: dict[str, int] = {}

    def tenant_id(self, name: str) -> int:
        if name not in self._tenant_ids:
            self._tenant_ids[name] = self._ensure_tenant(name)
        return self._tenant_ids[name]

    def _ensure_tenant(self, name: str) -> int:
        lookup = text("SELECT id FROM tenant WHERE name = :n")
        with self.engine.connect() as conn:
            found = conn.execute(lookup, {"n": name}).scalar()
        if found is not None:
            return int(found)
        try:
            with self.engine.begin() as conn:
                conn.execute(text("INSERT INTO tenant (name) VALUES (:n)"), {"n": name})
        except IntegrityError:
            pass  # another instance created it first
        with self.engine.connect() as conn:
            return int(conn.execute(lookup, {"n": name}).scalar_one())

    def add(
        self,
        *,
        tenant: str,
        file_name: str,
        spool_path: str,
        sha256: str,
        size: int,
        deferred: bool,
        actor: str,
        received_at: datetime | None = None,
    ) -> int | None:
        """Insert a queued job; None when that spool file is already a job (queuing is idempotent).
        ``received_at`` (when the upload was complete; default now) orders the tenant's queue."""
        tenant_id = self.tenant_id(tenant)
        now = utcnow()
        try:
            with write_transaction(self.engine) as conn:
                job_id: int = conn.execute(
                    insert(Job)
                    .values(
                        tenant_id=tenant_id,
                        file_name=file_name,
                        spool_path=spool_path,
                        sha256=sha256,
                        size=size,
                        status=QUEUED,
                        deferred=deferred,
                        priority=0,
                        approved=False,
                        finalized=False,
                        attempts=0,
                        received_at=received_at or now,
                    )
                    .returning(text("id"))
                ).scalar_one()
                change = StateChange(
                    job_id=job_id,
                    tenant_id=tenant_id,
                    from_status=None,
                    to_status=QUEUED,
                    actor=actor,
                    code=None,
                    message=None,
                    at=now,
                )
                record_change(conn, change)
        except IntegrityError:
            return None
        return job_id

    def has_spool_path(self, spool_path: str) -> bool:
        with Session(self.engine) as session:
            found = session.exec(select(Job.id).where(Job.spool_path == spool_path)).first()
            return found is not None

    def get(self, job_id: int) -> JobRecord:
        with Session(self.engine) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"there is no job {job_id}")
            tenant = session.get(Tenant, job.tenant_id)
            assert tenant is not None
            return _record(job, tenant.name)

    def recent(
        self, tenant: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        query = select(Job, Tenant.name).join(Tenant, col(Tenant.id) == col(Job.tenant_id))
        if tenant:
            query = query.where(Tenant.name == tenant)
        if status:
            query = query.where(Job.status == status)
        with Session(self.engine) as session:
            rows = session.exec(query.order_by(col(Job.id).desc()).limit(limit)).all()
            return [_record(job, name) for job, name in rows]

    def next_for_tenant(self, tenant: str, include_deferred: bool) -> JobRecord | None:
        """The head of a tenant's queue, or None when it is empty or blocked.

        A held job blocks everything after it, and so does a job deferred to the daily run when
        the hourly run looks: files of one tenant never apply out of order. The order is the order
        the uploads arrived in, not the order they were queued in: several watchers, rescans and
        instances queue files concurrently, and the one that finishes hashing first inserts first.
        """
        tenant_id = self.tenant_id(tenant)
        with Session(self.engine) as session:
            blocking = session.exec(
                select(func.count()).where(Job.tenant_id == tenant_id, col(Job.status).in_((HELD, RUNNING)))
            ).one()
            if blocking:  # held, or running (here or on another instance): later files wait
                return None
            head = session.exec(
                select(Job)
                .where(Job.tenant_id == tenant_id, Job.status == QUEUED)
                .order_by(col(Job.priority).desc(), col(Job.received_at), col(Job.id))
                .limit(1)
            ).first()
            if head is None or (head.deferred and not include_deferred):
                return None
            return _record(head, tenant)

    def claim_of(self, conn: Connection, job_id: int) -> tuple[str, str | None, str | None]:
        """(status, claim_token, instance) of a job, read on the caller's connection."""
        row = conn.execute(
            select(col(Job.status), col(Job.claim_token), col(Job.instance)).where(col(Job.id) == job_id)
        ).first()
        if row is None:
            raise NotFoundError(f"there is no job {job_id}")
        return row[0], row[1], row[2]

    def running_of(self, tenant: str) -> JobRecord | None:
        """The tenant's running job, if any (at most one: uq_job_running_tenant)."""
        found = self.recent(tenant=tenant, status=RUNNING, limit=1)
        return found[0] if found else None

    def earlier_applied(self, tenant_id: int, sha256: str, job_id: int) -> int | None:
        with Session(self.engine) as session:
            return session.exec(
                select(Job.id)
                .where(
                    Job.tenant_id == tenant_id,
                    Job.sha256 == sha256,
                    col(Job.status).in_(APPLIED),
                    Job.id != job_id,
                )
                .order_by(col(Job.id))
                .limit(1)
            ).first()

    def mark_finalized(self, job_id: int) -> None:
        """Result files and archive are in place (a flag, not a state change)."""
        with write_transaction(self.engine) as conn:
            conn.execute(update(Job).where(col(Job.id) == job_id).values(finalized=True))

    def change(self, job_id: int, to_status: str, **kwargs: Any) -> StateChange:
        """``change_state`` in a transaction of its own."""
        with write_transaction(self.engine) as conn:
            return change_state(conn, job_id, to_status, **kwargs)

    def events(self, job_id: int) -> list[JobEvent]:
        """The job's state changes, oldest first."""
        with Session(self.engine) as session:
            query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id))
            return list(session.exec(query).all())

    def unfinalized(self) -> list[JobRecord]:
        query = (
            select(Job, Tenant.name)
            .join(Tenant, col(Tenant.id) == col(Job.tenant_id))
            # (never a queued or running job: its temporary results are not committed yet)
            .where(col(Job.finalized).is_(False), col(Job.status).in_((*TERMINAL, HELD)))
            .order_by(col(Job.id))
        )
        with Session(self.engine) as session:
            return [_record(job, name) for job, name in session.exec(query).all()]

    def queue_depth(self, tenants: Sequence[str] | None = None) -> int:
        """Queued jobs (of these tenants, when given)."""
        query = select(func.count()).select_from(Job).where(Job.status == QUEUED)
        if tenants is not None:
            query = query.join(Tenant, col(Tenant.id) == col(Job.tenant_id)).where(
                col(Tenant.name).in_(list(tenants))
            )
        with Session(self.engine) as session:
            return int(session.exec(query).one())

    def transition(
        self, job_id: int, allowed: Sequence[str], verb: str, to_status: str, *, actor: str, **values: Any
    ) -> JobRecord:
        """An operator's change (approve, reject, retry): refused unless the job is in *allowed*."""
        try:
            self.change(job_id, to_status, actor=actor, allowed=allowed, **values)
        except StateConflict as exc:
            raise UsageError(
                f"job {job_id} is {exc.current}; only {' or '.join(allowed)} jobs can be {verb}"
            ) from None
        return self.get(job_id)
